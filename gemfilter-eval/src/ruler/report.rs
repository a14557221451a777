//! The suite's tables: per task × length × method accuracy, the average over tuning tasks,
//! HotpotQA (held out) in its own column, GemFilter ÷ full and ÷ SnapKV at equal budgets; as
//! JSON, markdown (the layout of the paper's LongBench table: one row per method, one column
//! per task) and an SVG chart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use super::run::{MethodKind, Record, Variant};
use super::tasks::Task;
use crate::error::{EvalError, Result, io};

/// One row: a method at one length.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Target length.
    pub length: usize,
    /// The column's label (`gemfilter@256`, …).
    pub label: String,
    /// The method.
    pub variant: Variant,
    /// Mean score ×100 per task (tasks in suite order), with its sample count.
    pub tasks: BTreeMap<String, TaskScore>,
    /// Mean over the tuning tasks (every task but qa_2) that have results, ×100.
    pub average: Option<f64>,
    /// qa_2 (HotpotQA, held out) ×100.
    pub held_out: Option<f64>,
    /// `average` ÷ full attention's at this length.
    pub vs_full: Option<f64>,
    /// `average` ÷ SnapKV's at the same budget and length.
    pub vs_snapkv: Option<f64>,
    /// Mean time to first token, ms.
    pub mean_ttft_ms: f64,
    /// Mean key/value storage the answers decoded with, MiB (where recorded).
    pub mean_kv_cache_mib: Option<f64>,
    /// Mean evidence recall where measured.
    pub mean_recall: Option<f64>,
}

/// A task's score in a row.
#[derive(Debug, Clone, Serialize)]
pub struct TaskScore {
    /// Mean score ×100.
    pub score: f64,
    /// Samples.
    pub samples: usize,
}

/// The variants found in `records`, in report order: full attention, GemFilter by filter
/// layer, selector (in order of first appearance) and budget, then SnapKV and H2O by budget.
pub fn variants_in(records: &[Record]) -> Vec<Variant> {
    let mut found: Vec<Variant> = Vec::new();
    let mut selectors: Vec<Option<String>> = Vec::new();
    for record in records {
        if !found.contains(&record.variant) {
            found.push(record.variant.clone());
        }
        if !selectors.contains(&record.variant.selector) {
            selectors.push(record.variant.selector.clone());
        }
    }
    let method_rank = |m: MethodKind| match m {
        MethodKind::Full => 0,
        MethodKind::Gemfilter => 1,
        MethodKind::Propagate => 2,
        MethodKind::PropagateKept => 3,
        MethodKind::Snapkv => 4,
        MethodKind::H2o => 5,
    };
    found.sort_by_key(|v| {
        let selector_rank = selectors.iter().position(|s| *s == v.selector);
        (method_rank(v.method), v.layer, selector_rank, v.budget)
    });
    found
}

/// Builds the rows from `records`, methods in the order of `variants`.
pub fn summarise(
    records: &[Record],
    variants: &[Variant],
    tasks: &[Task],
    lengths: &[usize],
) -> Vec<Row> {
    let mut rows = Vec::new();
    for &length in lengths {
        for variant in variants {
            let mine: Vec<&Record> = records
                .iter()
                .filter(|r| r.length == length && &r.variant == variant)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut scores = BTreeMap::new();
            for task in tasks {
                let of_task: Vec<&&Record> = mine.iter().filter(|r| r.task == task.name).collect();
                if of_task.is_empty() {
                    continue;
                }
                scores.insert(
                    task.name.to_string(),
                    TaskScore {
                        score: 100.0 * of_task.iter().map(|r| r.score).sum::<f64>()
                            / of_task.len() as f64,
                        samples: of_task.len(),
                    },
                );
            }
            let tuning: Vec<f64> = tasks
                .iter()
                .filter(|t| !t.held_out())
                .filter_map(|t| scores.get(t.name).map(|s| s.score))
                .collect();
            let held_out = tasks
                .iter()
                .filter(|t| t.held_out())
                .find_map(|t| scores.get(t.name).map(|s| s.score));
            let recalls: Vec<f64> = mine.iter().filter_map(|r| r.recall).collect();
            rows.push(Row {
                length,
                label: variant.label(),
                variant: variant.clone(),
                tasks: scores,
                average: (!tuning.is_empty())
                    .then(|| tuning.iter().sum::<f64>() / tuning.len() as f64),
                held_out,
                vs_full: None,
                vs_snapkv: None,
                mean_ttft_ms: mine.iter().map(|r| r.ttft_ms).sum::<f64>() / mine.len() as f64,
                mean_kv_cache_mib: {
                    let sizes: Vec<f64> = mine.iter().filter_map(|r| r.kv_cache_mib).collect();
                    (!sizes.is_empty()).then(|| sizes.iter().sum::<f64>() / sizes.len() as f64)
                },
                mean_recall: (!recalls.is_empty())
                    .then(|| recalls.iter().sum::<f64>() / recalls.len() as f64),
            });
        }
    }
    let lookup = |rows: &[Row], length: usize, method: MethodKind, budget: Option<usize>| {
        rows.iter()
            .find(|r| {
                r.length == length
                    && r.variant.method == method
                    && (method == MethodKind::Full || r.variant.budget == budget)
            })
            .and_then(|r| r.average)
    };
    let ratios: Vec<(Option<f64>, Option<f64>)> = rows
        .iter()
        .map(|row| {
            let ratio = |base: Option<f64>| match (row.average, base) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            (
                ratio(lookup(&rows, row.length, MethodKind::Full, None)),
                ratio(lookup(
                    &rows,
                    row.length,
                    MethodKind::Snapkv,
                    row.variant.budget,
                )),
            )
        })
        .collect();
    for (row, (full, snap)) in rows.iter_mut().zip(ratios) {
        if row.variant.method != MethodKind::Full {
            row.vs_full = full;
        }
        if row.variant.method.selects() {
            row.vs_snapkv = snap;
        }
    }
    rows
}

fn cell(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.1}"))
}

/// The markdown table: per length, one row per method, one column per task, then the average
/// of the tuning tasks, qa_2 (held out), the ratios and the mean time to first token.
pub fn markdown(rows: &[Row], tasks: &[Task], title: &str) -> String {
    let mut out = format!(
        "# {title}\n\nScores ×100 (RULER's metrics). Avg: mean over the tasks other than qa_2; qa_2 (HotpotQA) is held out and never used for tuning.\n"
    );
    let tuning: Vec<&Task> = tasks.iter().filter(|t| !t.held_out()).collect();
    let held: Vec<&Task> = tasks.iter().filter(|t| t.held_out()).collect();
    let mut lengths: Vec<usize> = rows.iter().map(|r| r.length).collect();
    lengths.dedup();
    for length in lengths {
        out.push_str(&format!("\n## {length} tokens\n\n| method |"));
        for t in &tuning {
            out.push_str(&format!(" {} |", t.name));
        }
        out.push_str(" **Avg** |");
        for t in &held {
            out.push_str(&format!(" {} (held out) |", t.name));
        }
        out.push_str(" ÷ full | ÷ SnapKV | TTFT ms | KV MiB | n |\n|---|");
        for _ in 0..tuning.len() + held.len() + 6 {
            out.push_str("---:|");
        }
        out.push('\n');
        for row in rows.iter().filter(|r| r.length == length) {
            out.push_str(&format!("| {} |", row.label));
            for t in &tuning {
                out.push_str(&format!(
                    " {} |",
                    cell(row.tasks.get(t.name).map(|s| s.score))
                ));
            }
            out.push_str(&format!(" **{}** |", cell(row.average)));
            for t in &held {
                out.push_str(&format!(
                    " {} |",
                    cell(row.tasks.get(t.name).map(|s| s.score))
                ));
            }
            let ratio = |r: Option<f64>| r.map_or("–".into(), |v| format!("{v:.2}×"));
            let n = row.tasks.values().map(|s| s.samples).min().unwrap_or(0);
            out.push_str(&format!(
                " {} | {} | {:.0} | {} | {n} |\n",
                ratio(row.vs_full),
                ratio(row.vs_snapkv),
                row.mean_ttft_ms,
                row.mean_kv_cache_mib
                    .map_or("–".into(), |m| format!("{m:.1}"))
            ));
        }
    }
    out
}

/// A bar chart of the average per method, one group per length.
pub fn svg(rows: &[Row], path: &Path, title: &str) -> Result<()> {
    let mut lengths: Vec<usize> = rows.iter().map(|r| r.length).collect();
    lengths.dedup();
    let mut labels: Vec<String> = Vec::new();
    for row in rows {
        if !labels.contains(&row.label) {
            labels.push(row.label.clone());
        }
    }
    if labels.is_empty() {
        return Ok(());
    }
    let per_group = labels.len() + 1;
    let width = (160 + lengths.len() * per_group * 26).max(640) as u32;
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let bars = lengths.len() * per_group;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..bars as f64, 0f64..100f64)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("RULER average (×100)")
            .x_labels(lengths.len())
            .x_label_formatter(&|x| {
                let group = (*x / per_group as f64).floor() as usize;
                lengths
                    .get(group)
                    .map(|l| format!("{l} tokens"))
                    .unwrap_or_default()
            })
            .draw()?;
        for (li, label) in labels.iter().enumerate() {
            let color = Palette99::pick(li).to_rgba();
            let bars: Vec<Rectangle<(f64, f64)>> = lengths
                .iter()
                .enumerate()
                .filter_map(|(gi, length)| {
                    let row = rows
                        .iter()
                        .find(|r| r.length == *length && &r.label == label)?;
                    let x = (gi * per_group + li) as f64;
                    Some(Rectangle::new(
                        [(x + 0.1, 0.0), (x + 0.9, row.average.unwrap_or(0.0))],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| EvalError::Data(format!("cannot draw {}: {e}", path.display())))
}

/// Writes `ruler.json`, `ruler.md` and `ruler.svg` into `folder`; returns their paths.
pub fn write_reports(
    folder: &Path,
    rows: &[Row],
    tasks: &[Task],
    title: &str,
    settings: serde_json::Value,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(folder).map_err(io(folder))?;
    let json = folder.join("ruler.json");
    let body = serde_json::json!({ "settings": settings, "rows": rows });
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&body).expect("serialisable"),
    )
    .map_err(io(&json))?;
    let md = folder.join("ruler.md");
    std::fs::write(&md, markdown(rows, tasks, title)).map_err(io(&md))?;
    let chart = folder.join("ruler.svg");
    svg(rows, &chart, title)?;
    Ok(vec![json, md, chart])
}
