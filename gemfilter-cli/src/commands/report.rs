//! `gemfilter report`: turn a `needle.json` into a markdown table and the heatmap again (e.g.
//! after changing the plot, or to compare runs).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

use super::needle::{Cell, Method, Summary, Variant};
use crate::heatmap;

/// Arguments of `gemfilter report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A `needle.json` written by `gemfilter needle`.
    pub needle_json: PathBuf,
    /// Folder for `needle.md` and `needle.svg` (default: beside the JSON).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Deserialize)]
struct NeedleReport {
    model: String,
    top_k: usize,
    filter_layer: usize,
    lengths: Vec<usize>,
    depths: Vec<f64>,
    cells: Vec<Cell>,
    summary: Vec<Summary>,
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
    std::fs::create_dir_all(&folder)
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

    let mut md = format!(
        "Needle in a haystack on `{}` (top-k {}, filter layer {}).\n\n\
         | method | tokens | needle recall | accuracy | selection (s) | time to first token (s) | TTFT / full | peak RSS (MiB) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        report.model, report.top_k, report.filter_layer
    );
    for s in &report.summary {
        let full = report
            .summary
            .iter()
            .find(|f| f.method == Method::Full && f.target_tokens == s.target_tokens);
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} | {} | {} |\n",
            s.variant().label(),
            s.target_tokens,
            s.mean_recall.map_or("–".into(), |r| format!("{r:.2}")),
            s.accuracy,
            s.mean_select_ms / 1e3,
            s.mean_ttft_ms / 1e3,
            full.map_or("–".into(), |f| format!(
                "{:.2}",
                s.mean_ttft_ms / f.mean_ttft_ms
            )),
            s.max_peak_rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
        ));
    }
    let md_path = folder.join("needle.md");
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    print!("{md}");
    println!("\nwritten: {} and {}", md_path.display(), svg.display());
    Ok(())
}
