//! Needle heatmaps (depth × context length, colour = score), as in the GemFilter paper's figure.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::commands::needle::{Cell, Method, Variant};

/// What a panel colours by.
#[derive(Debug, Clone, Copy)]
enum Score {
    /// 1 when the answer holds the key phrase.
    Correct,
    /// Fraction of needle tokens kept.
    Recall,
}

impl Score {
    fn name(self) -> &'static str {
        match self {
            Score::Correct => "answer correct",
            Score::Recall => "needle recall",
        }
    }

    fn of(self, cell: &Cell) -> Option<f64> {
        match self {
            Score::Correct => Some(if cell.correct { 1.0 } else { 0.0 }),
            Score::Recall => cell.needle_recall,
        }
    }
}

/// Red (0) to green (1).
fn score_colour(score: f64) -> RGBColor {
    let s = score.clamp(0.0, 1.0);
    RGBColor((230.0 * (1.0 - s)) as u8 + 20, (190.0 * s) as u8 + 40, 60)
}

/// Writes one panel per method and selector (answer correctness) plus one per method that drops
/// tokens or cache entries (needle recall) into an SVG.
pub fn needle_heatmaps(
    path: &Path,
    cells: &[Cell],
    variants: &[Variant],
    lengths: &[usize],
    depths: &[f64],
) -> Result<()> {
    let mut panels: Vec<(&Variant, Score)> = Vec::new();
    for variant in variants {
        panels.push((variant, Score::Correct));
        if variant.method != Method::Full {
            panels.push((variant, Score::Recall));
        }
    }
    let width = 360 * panels.len() as u32;
    let root = SVGBackend::new(path, (width.max(360), 360)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (&(variant, score), area) in panels.iter().zip(areas) {
        let title = format!("{}: {}", variant.label(), score.name());
        // Rows top to bottom: depth 0% (start of the context) first, as in the paper's figure.
        let (columns, rows) = (lengths.len(), depths.len());
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0..columns, 0..rows)
            .map_err(|e| err(&e))?;
        // Tick labels sit on cell edges; shift them to the cell centres.
        let (width, height) = chart.plotting_area().dim_in_pixel();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("context length (tokens)")
            .y_desc("needle depth")
            .x_labels(columns + 1)
            .y_labels(rows + 1)
            .x_label_offset(width as i32 / (2 * columns as i32))
            .y_label_offset(-(height as i32) / (2 * rows as i32))
            .x_label_formatter(&|&i| lengths.get(i).map(|l| l.to_string()).unwrap_or_default())
            .y_label_formatter(&|&i| {
                rows.checked_sub(i + 1)
                    .and_then(|d| depths.get(d))
                    .map(|d| format!("{:.0}%", d * 100.0))
                    .unwrap_or_default()
            })
            .draw()
            .map_err(|e| err(&e))?;
        let centre = TextStyle::from(("sans-serif", 12).into_font())
            .pos(Pos::new(HPos::Center, VPos::Center));
        for (xi, &length) in lengths.iter().enumerate() {
            for (di, &depth) in depths.iter().enumerate() {
                let yi = rows - 1 - di;
                let value = cells
                    .iter()
                    .find(|c| {
                        c.variant() == *variant && c.target_tokens == length && c.depth == depth
                    })
                    .and_then(|c| score.of(c));
                let colour = value.map_or(RGBColor(200, 200, 200), score_colour);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(xi, yi), (xi + 1, yi + 1)],
                        colour.filled(),
                    )))
                    .map_err(|e| err(&e))?;
                if let Some(v) = value {
                    // Pixel centre of the cell.
                    let (left, top) = chart.backend_coord(&(xi, yi + 1));
                    let (right, bottom) = chart.backend_coord(&(xi + 1, yi));
                    let at = ((left + right) / 2, (top + bottom) / 2);
                    root.draw(&Text::new(format!("{v:.2}"), at, centre.clone()))
                        .map_err(|e| err(&e))?;
                }
            }
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
