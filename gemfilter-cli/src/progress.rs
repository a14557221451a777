//! Progress bars on stderr, shown only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gemfilter_core::{ForwardProgress, ProgressHook, RunOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress should be drawn (stderr is a terminal).
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
}

/// A spinner with a message, hidden when not on a terminal.
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
    );
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A counting bar over `total` steps, hidden when not on a terminal (its `println` still prints).
pub fn counter(total: u64, what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} ({{elapsed}}, eta {{eta}}) {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Default run options with the forward-pass progress bar of [`forward_hook`].
pub fn run_options() -> RunOptions {
    RunOptions::default().with_progress(forward_hook())
}

/// A hook drawing one bar per multi-token forward pass: tokens, layers done / layers of the
/// pass, the pass's rate in tokens per second, elapsed time and ETA. Single-token decode steps
/// are not drawn.
pub fn forward_hook() -> Option<ProgressHook> {
    if !enabled() {
        return None;
    }
    let current: Arc<Mutex<Option<ProgressBar>>> = Arc::new(Mutex::new(None));
    Some(ProgressHook(Arc::new(move |p: ForwardProgress| {
        if p.positions <= 1 {
            return;
        }
        let mut slot = current.lock().expect("progress lock");
        let bar = slot.get_or_insert_with(|| {
            let bar = ProgressBar::new(p.layers_total as u64);
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] layer {pos}/{len} ({elapsed}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("forward over {} tokens", p.positions));
            bar
        });
        bar.set_position(p.layers_done as u64);
        // Whole-pass tokens per second: the share of the pass done, over the time it took.
        let seconds = bar.elapsed().as_secs_f64();
        if seconds > 0.0 {
            let rate = p.positions as f64 * p.layers_done as f64 / p.layers_total as f64 / seconds;
            bar.set_message(format!(
                "forward over {} tokens, {rate:.0} tokens/s",
                p.positions
            ));
        }
        if p.layers_done >= p.layers_total {
            bar.finish_and_clear();
            *slot = None;
        }
    })))
}
