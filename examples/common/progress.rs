//! Progress output of the training examples: a bar on stderr and the periodic metric lines.

use std::collections::BTreeMap;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr (hidden when `quiet` or not a terminal).
pub fn bar(total: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("[{bar:24}] {pos:>4}/{len} {msg}")
            .expect("valid template")
            .progress_chars("#>."),
    );
    bar
}

/// A progress line of a preference-optimization step: a text bar, the loss and the TRL reward
/// metrics found in `metrics` (`-` for those absent).
pub fn line(step: usize, total: usize, metrics: &BTreeMap<String, f64>, loss: f64) -> String {
    let width = 24;
    let filled = (step * width) / total.max(1);
    let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
    let get = |k: &str| {
        metrics
            .get(k)
            .map(|v| format!("{v:+.3}"))
            .unwrap_or_else(|| "   -  ".into())
    };
    format!(
        "[{bar}] {step:>4}/{total} loss {loss:.4} rewards/accuracies {} rewards/margins {} rewards/chosen {} rewards/rejected {}",
        get("rewards/accuracies"),
        get("rewards/margins"),
        get("rewards/chosen"),
        get("rewards/rejected")
    )
}
