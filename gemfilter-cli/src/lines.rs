//! Line charts of a measure against context length, one line per method (time to first token,
//! peak memory, KV cache size), side by side in one SVG.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One chart: a measure per method against prompt tokens.
pub struct LinePanel {
    /// Chart title, e.g. `time to first token`.
    pub title: String,
    /// Y-axis description with its unit.
    pub y_desc: String,
    /// `(method label, [(tokens, value)])`, points in any order.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// One line per label, in order of first appearance: the `(tokens, value)` points of the items
/// carrying that label (items without a value are skipped).
pub fn series_by_label<T>(
    items: &[T],
    label: impl Fn(&T) -> String,
    tokens: impl Fn(&T) -> usize,
    value: impl Fn(&T) -> Option<f64>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for item in items {
        let name = label(item);
        let index = match series.iter().position(|(l, _)| *l == name) {
            Some(index) => index,
            None => {
                series.push((name, Vec::new()));
                series.len() - 1
            }
        };
        if let Some(v) = value(item) {
            series[index].1.push((tokens(item) as f64, v));
        }
    }
    series
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws `panels` side by side into the SVG at `path`.
pub fn line_panels(path: &Path, panels: &[LinePanel]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let width = 480 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(areas) {
        let points = panel.series.iter().flat_map(|(_, p)| p.iter());
        let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
        let y_max = points.map(|p| p.1).fold(1e-9, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("prompt tokens")
            .y_desc(panel.y_desc.as_str())
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if y_max >= 10.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                }
            })
            .draw()
            .map_err(|e| err(&e))?;
        for (index, (label, points)) in panel.series.iter().enumerate() {
            let colour = PALETTE[index % PALETTE.len()];
            let mut sorted = points.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(sorted.clone(), colour.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(sorted.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
