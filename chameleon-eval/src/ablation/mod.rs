//! The analysis of an ablation grid, in one place: its runs reduced to numbers and grouped by
//! variant, learning rate and seed ([`results`]), the one verdict rule ([`verdict`]), the paper's
//! findings judged by it ([`findings`]), the learning-rate sensitivity ([`sensitivity`]), the
//! plain-text summary ([`summary`]) and the plotted report ([`report`]).

pub mod findings;
mod plot;
pub mod report;
pub mod results;
pub mod sensitivity;
pub mod summary;
pub mod verdict;

pub use report::{ReportError, write_report};
pub use summary::{Analysis, compare};

/// The summary table and findings of the grid under `dir`, as `cargo xtask ablate` prints them.
pub fn summary(dir: &std::path::Path) -> Result<String, String> {
    Ok(Analysis::read(dir)?.text())
}
