//! `gemfilter report`: turn a `needle.json` into a markdown table, the accuracy heatmaps and the
//! time / memory curves again (e.g. after changing the plots, or to compare runs). `gemfilter
//! needle` writes the same files at the end of a run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

use super::needle::{Cell, Method, Summary, Variant};
use crate::heatmap;
use crate::lines::{LinePanel, line_panels, series_by_label};

/// Arguments of `gemfilter report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A `needle.json` written by `gemfilter needle`.
    pub needle_json: PathBuf,
    /// Folder for `needle.md`, `needle.svg` and `needle-scaling.svg` (default: beside the JSON).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// What a needle report holds (the fields the report needs).
#[derive(Deserialize)]
pub struct NeedleReport {
    /// Model path.
    pub model: String,
    /// GemFilter's k and the baselines' budget.
    pub top_k: usize,
    /// GemFilter's filter layer.
    pub filter_layer: usize,
    /// Context lengths of the grid.
    pub lengths: Vec<usize>,
    /// Needle depths of the grid.
    pub depths: Vec<f64>,
    /// Every cell.
    pub cells: Vec<Cell>,
    /// Means per method and length.
    pub summary: Vec<Summary>,
}

/// Runs the subcommand.
pub fn run(args: ReportArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.needle_json)
        .with_context(|| format!("cannot read {}", args.needle_json.display()))?;
    let report: NeedleReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a needle report", args.needle_json.display()))?;
    let folder = args.output.unwrap_or_else(|| {
        args.needle_json
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default()
    });
    let written = write_files(&folder, &report)?;
    print!("{}", markdown(&report));
    println!("\nwritten: {}", written.join(", "));
    Ok(())
}

/// Writes `needle.md`, `needle.svg` (accuracy and recall heatmaps, one panel per method side by
/// side) and `needle-scaling.svg` (time to first token and peak memory against context length,
/// one line per method) into `folder`; returns the paths written.
pub fn write_files(folder: &Path, report: &NeedleReport) -> Result<Vec<String>> {
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let variants = Variant::of_cells(&report.cells);
    let svg = folder.join("needle.svg");
    heatmap::needle_heatmaps(
        &svg,
        &report.cells,
        &variants,
        &report.lengths,
        &report.depths,
    )?;
    let scaling = folder.join("needle-scaling.svg");
    line_panels(&scaling, &scaling_panels(&report.summary))?;
    let md_path = folder.join("needle.md");
    std::fs::write(&md_path, markdown(report))
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    Ok([md_path, svg, scaling]
        .iter()
        .map(|p| p.display().to_string())
        .collect())
}

/// Time to first token and peak memory per method against context length.
fn scaling_panels(summary: &[Summary]) -> Vec<LinePanel> {
    let series = |value: &dyn Fn(&Summary) -> Option<f64>| {
        series_by_label(summary, |s| s.variant().label(), |s| s.target_tokens, value)
    };
    vec![
        LinePanel {
            title: "time to first token".into(),
            y_desc: "seconds".into(),
            series: series(&|s| Some(s.mean_ttft_ms / 1e3)),
        },
        LinePanel {
            title: "peak resident memory".into(),
            y_desc: "MiB".into(),
            series: series(&|s| s.max_peak_rss_mib),
        },
    ]
}

/// The summary table, then GemFilter against each KV-compression baseline.
pub fn markdown(report: &NeedleReport) -> String {
    let find = |method: Method, tokens: usize| {
        report
            .summary
            .iter()
            .find(|s| s.method == method && s.selector.is_none() && s.target_tokens == tokens)
    };
    let mut md = format!(
        "Needle in a haystack on `{}` (budget k = {} tokens or cache entries per layer and head, \
         filter layer {}).\n\n\
         | method | tokens | needle recall | accuracy | selection (s) | time to first token (s) | TTFT / full | peak RSS (MiB) | peak / full |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        report.model, report.top_k, report.filter_layer
    );
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    for s in &report.summary {
        let full = find(Method::Full, s.target_tokens);
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} | {} | {} | {} |\n",
            s.variant().label(),
            s.target_tokens,
            s.mean_recall.map_or("–".into(), |r| format!("{r:.2}")),
            s.accuracy,
            s.mean_select_ms / 1e3,
            s.mean_ttft_ms / 1e3,
            ratio(Some(s.mean_ttft_ms), full.map(|f| f.mean_ttft_ms)),
            s.max_peak_rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
            ratio(s.max_peak_rss_mib, full.and_then(|f| f.max_peak_rss_mib)),
        ));
    }
    for baseline in [Method::Snapkv, Method::H2o] {
        let rows: Vec<String> = report
            .lengths
            .iter()
            .filter_map(|&tokens| {
                let gem = find(Method::Gemfilter, tokens)?;
                let other = find(baseline, tokens)?;
                Some(format!(
                    "| {tokens} | {:.2} ({:.1} s vs {:.1} s) | {} | {:.2} vs {:.2} |\n",
                    other.mean_ttft_ms / gem.mean_ttft_ms,
                    gem.mean_ttft_ms / 1e3,
                    other.mean_ttft_ms / 1e3,
                    ratio(gem.max_peak_rss_mib, other.max_peak_rss_mib),
                    gem.accuracy,
                    other.accuracy
                ))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        md.push_str(&format!(
            "\nGemFilter against {name}: speed-up of the time to first token ({name} ÷ GemFilter), \
             peak memory (GemFilter ÷ {name}), accuracy.\n\n\
             | tokens | TTFT speed-up | peak memory ratio | accuracy GemFilter vs {name} |\n\
             |---:|---:|---:|---:|\n",
            name = baseline.name()
        ));
        md.extend(rows);
    }
    md
}
