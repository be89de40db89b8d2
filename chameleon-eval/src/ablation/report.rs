//! The ablation report: `report.md` plus PNG plots, read from a grid's run directories.
//!
//! - The verdict rule, stated once, and each of the paper's findings with its verdict and the
//!   numbers behind it ([`super::findings`]).
//! - The learning-rate sweep (Wortsman et al. 2023, their Figure 1): CE at the end, peak
//!   attention logit and lowest attention entropy against the learning rate, one line per
//!   variant with its seeds as a band, and the learning-rate sensitivity of each variant.
//! - The image-generation control (the paper's Figure 6b): the same unfixed model with and
//!   without loss on image codes.
//! - Curves over steps, one panel per learning rate, one band per variant: cross-entropy
//!   (without the z-loss term, so that z-loss runs compare), max attention logit, attention
//!   entropy, block-output RMS, log Z, gradient norm.
//! - A table of every cell (variant × learning rate) with mean and spread over seeds, and one of
//!   every run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chameleon_train::ablation::Switches;
use chameleon_train::monitor::{Metric, Point};

use super::findings::{Finding, image_loss_pairs};
use super::plot::{Band, Panel, draw, stats};
use super::results::{Results, RunResult, label};
use super::summary::{Analysis, LEGEND, capitalise, cell, num, verdict_word};
use super::verdict::{RULE, Spread};

/// A report that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ReportError {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

pub(crate) fn err(path: &Path, message: impl ToString) -> ReportError {
    ReportError { path: path.to_path_buf(), message: message.to_string() }
}

/// A measure of a whole run.
type RunMeasure = fn(&RunResult) -> Option<f64>;

/// A value of one step.
type StepValue = fn(&Point) -> f64;

/// A curve over steps: file name, title, the value of a step, and whether the y axis is log.
struct Curve {
    file: &'static str,
    title: &'static str,
    value: fn(&Point) -> f64,
    log: bool,
    /// Where the y axis stops (see [`Panel::y_max`]).
    y_max: Option<f64>,
}

/// Cross-entropy above this is drawn at it: at high learning rates every variant spikes far above
/// the untrained model's 7.9 in its first steps, which would flatten the rest of the curve.
const CE_CAP: f64 = 10.0;

const CURVES: [Curve; 6] = [
    Curve {
        file: "ce",
        title: "cross-entropy (without the z-loss term)",
        value: |p| p.ce,
        log: false,
        y_max: Some(CE_CAP),
    },
    Curve {
        file: "max-attn-logit",
        title: "max attention logit",
        value: |p| p.value(Metric::MaxAttnLogit),
        log: true,
        y_max: None,
    },
    Curve {
        file: "attn-entropy",
        title: "attention entropy (nats, min)",
        value: |p| p.value(Metric::AttnEntropy),
        log: false,
        y_max: None,
    },
    Curve {
        file: "output-rms",
        title: "block-output RMS (max over layers)",
        value: |p| p.value(Metric::OutputRms),
        log: true,
        y_max: None,
    },
    Curve { file: "log-z", title: "log Z (mean)", value: |p| p.value(Metric::LogZ), log: false, y_max: None },
    Curve {
        file: "grad-norm",
        title: "gradient norm (before the clip)",
        value: |p| p.value(Metric::GradNorm),
        log: true,
        y_max: None,
    },
];

/// Writes `report.md` and its PNGs into `out` for the runs under `runs_dir`. Returns the path
/// of `report.md`.
pub fn write_report(runs_dir: &Path, out: &Path) -> Result<PathBuf, ReportError> {
    let analysis = Analysis::read(runs_dir).map_err(|m| err(runs_dir, m))?;
    let results = &analysis.results;
    if results.runs.is_empty() {
        return Err(err(runs_dir, "no run has ended yet"));
    }
    std::fs::create_dir_all(out).map_err(|e| err(out, e))?;
    let variants = results.variants();
    let lrs = results.all_lrs();
    let seeds = results.seeds();

    let mut md = String::new();
    let _ = writeln!(md, "# Stability ablation report\n");
    let _ = writeln!(
        md,
        "Runs in `{}`: {} ended runs, {} variants, learning rates {}, seeds {}. Written by `cargo xtask report`.\n",
        runs_dir.display(),
        results.runs.len(),
        variants.len(),
        lrs.iter().map(|l| format!("{l:e}")).collect::<Vec<_>>().join(", "),
        seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    );
    if !results.unfinished.is_empty() {
        let _ = writeln!(
            md,
            "{} run(s) have not ended and are left out: {}.\n",
            results.unfinished.len(),
            results.unfinished.join(", ")
        );
    }

    let _ = writeln!(md, "## The paper's findings, measured\n");
    let _ = writeln!(md, "**The verdict rule.** {RULE}\n");
    let _ = writeln!(
        md,
        "Every finding is claimed {}; the comparisons at lower learning rates are listed for context and do not \
         count.\n",
        analysis.scope_words()
    );
    for f in &analysis.findings {
        finding_md(&mut md, f);
    }

    let _ = writeln!(md, "\n## The learning-rate sweep\n");
    let swept: Vec<&Switches> = variants.iter().filter(|v| results.lrs(v).len() >= 3).collect();
    if swept.is_empty() {
        let _ = writeln!(md, "No variant ran at 3 or more learning rates.\n");
    } else {
        draw(&out.join("lr-sweep.png"), &sweep_panels(results, &variants, &swept), 3)?;
        let _ = writeln!(
            md,
            "As in Wortsman et al. (2023), Figure 1: each variant's CE at the end (a diverged run counts as the \
             untrained model's), peak attention logit and lowest attention entropy against the peak learning rate. \
             Lines: mean over seeds (geometric on log axes); bands and bars: min–max over seeds.\n\n![learning-rate \
             sweep](lr-sweep.png)\n"
        );
        let _ = writeln!(
            md,
            "Learning-rate sensitivity: `E_lr[min(CE(lr), CE₀) − CE*]` over the variant's sweep, per seed, with CE₀ \
             the untrained model's CE and CE* the best of the sweep (lower is better; 0: every learning rate reached \
             the best).\n"
        );
        let _ = writeln!(md, "| variant | learning rates | sensitivity | best CE |");
        let _ = writeln!(md, "|---|---|---:|---:|");
        for (v, s) in analysis.sensitivities() {
            let lrs: Vec<String> = s.lrs.iter().map(|l| format!("{l:e}")).collect();
            let _ = writeln!(
                md,
                "| {v} | {} | {} | {} |",
                lrs.join(", "),
                cell(&s.spread()),
                cell(&Spread::of(s.best.values().copied()))
            );
        }
    }

    let _ = writeln!(md, "\n## Image generation as the cause\n");
    let pairs = image_loss_pairs(results);
    if pairs.is_empty() {
        let _ = writeln!(md, "No pair of variants differs in `image_loss` alone.\n");
    } else {
        let panels = image_panels(results, &variants, &pairs);
        // One row per measure, one column per learning rate.
        draw(&out.join("image-generation.png"), &panels, panels.len() / 3)?;
        let _ = writeln!(
            md,
            "The paper's Figure 6b: the same model, data and learning rates, with no loss on image-code targets \
             (images are still read, never generated). Top: max attention logit; middle: block-output RMS; bottom: \
             cross-entropy on text targets.\n\n![image generation](image-generation.png)\n"
        );
        for f in analysis.findings.iter().filter(|f| f.claim.contains("image generation")) {
            finding_md(&mut md, f);
        }
    }

    let _ = writeln!(md, "\n## Curves\n");
    let _ = writeln!(
        md,
        "One panel per learning rate; one line per variant (the mean over seeds, geometric on log axes) with the \
         seeds' min–max as a band.\n"
    );
    for c in &CURVES {
        let panels: Vec<Panel> = lrs
            .iter()
            .map(|&lr| Panel {
                title: format!("{} — lr {lr:e}", c.title),
                x_desc: "step".into(),
                x_log: false,
                y_log: c.log,
                y_max: c.y_max,
                bands: variants
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| over_steps(results, v, lr, c.value, c.log).map(|pts| band(i, v, pts, false)))
                    .collect(),
            })
            .collect();
        draw(&out.join(format!("{}.png", c.file)), &panels, 3)?;
        let scale = if c.log { " (log scale)" } else { "" };
        let _ = writeln!(md, "### {}{scale}\n\n![{}]({}.png)\n", capitalise(c.title), c.title, c.file);
    }

    let _ = writeln!(md, "## Cells\n");
    let _ = writeln!(md, "Mean (min–max) over each cell's seeds. {LEGEND}\n");
    let _ = writeln!(
        md,
        "| variant | lr | seeds | diverged | CE at the end | held-out CE | text CE | image CE | peak max attention logit | \
         min attention entropy | peak block-output RMS | log Z at the end | tokens/s |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in analysis.cells() {
        let _ = writeln!(
            md,
            "| {} | {:e} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.variant,
            c.lr,
            c.seeds,
            c.diverged,
            cell(&c.ce),
            cell(&c.held_out),
            cell(&c.ce_text),
            cell(&c.ce_image),
            cell(&c.peak_attn_logit),
            cell(&c.min_attn_entropy),
            cell(&c.peak_output_rms),
            cell(&c.log_z),
            c.tokens_per_s.map_or_else(|| "-".into(), |s| format!("{:.0}", s.mean)),
        );
    }

    let _ = writeln!(md, "\n## Runs\n");
    let _ = writeln!(
        md,
        "| run | status | CE at the end | held-out CE | peak max attention logit | min attention entropy | peak block-output RMS |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for r in &results.runs {
        let status = r.diverged_at.map_or_else(|| "done".to_string(), |s| format!("diverged at step {s}"));
        let _ = writeln!(
            md,
            "| `{}` | {status} | {} | {} | {} | {} | {} |",
            r.name,
            num(r.final_ce),
            num(r.held_out),
            num(r.peak_attn_logit),
            num(r.min_attn_entropy),
            num(r.peak_output_rms)
        );
    }
    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(|e| err(&path, e))?;
    Ok(path)
}

/// `- Claim: **VERDICT** (measure: margin)` and one indented line per comparison.
fn finding_md(md: &mut String, f: &Finding) {
    let _ = writeln!(
        md,
        "- {}: **{}** ({}: {}).",
        capitalise(&f.claim),
        verdict_word(f.verdict),
        f.measure,
        f.effect.describe()
    );
    for c in &f.comparisons {
        let context = if c.claimed { "" } else { " *(context)*" };
        let _ = writeln!(md, "  - {}{context}", c.render(f.measure, f.effect));
    }
}

/// A band from `(x, mean, min, max)` points.
fn band(color: usize, v: &Switches, points: Vec<(f64, f64, f64, f64)>, markers: bool) -> Band {
    Band { color, label: label(v), points, markers }
}

/// `(step, mean, min, max)` of a variant at a learning rate over its seeds; `None` without runs.
fn over_steps(
    results: &Results,
    v: &Switches,
    lr: f64,
    value: fn(&Point) -> f64,
    log: bool,
) -> Option<Vec<(f64, f64, f64, f64)>> {
    let cell = results.cell(v, lr);
    if cell.is_empty() {
        return None;
    }
    let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for r in cell.values() {
        for p in &r.points {
            by_step.entry(p.step).or_default().push(value(p));
        }
    }
    let pts: Vec<_> = by_step
        .into_iter()
        .filter_map(|(step, v)| stats(&v, log).map(|(m, lo, hi)| (step as f64, m, lo, hi)))
        .collect();
    (!pts.is_empty()).then_some(pts)
}

/// CE at the end, peak attention logit and lowest attention entropy against the learning rate.
fn sweep_panels(results: &Results, variants: &[Switches], swept: &[&Switches]) -> Vec<Panel> {
    // A run without image loss scores other targets: its CE is not on the same scale.
    let measures: [(&str, RunMeasure, bool, bool); 3] = [
        ("CE at the end", |r| Some(r.ce()), false, false),
        ("peak max attention logit", |r| r.peak_attn_logit, true, true),
        ("lowest attention entropy (nats)", |r| r.min_attn_entropy, false, true),
    ];
    measures
        .iter()
        .map(|&(title, value, log, any_targets)| Panel {
            title: format!("{title} vs learning rate"),
            x_desc: "peak learning rate".into(),
            x_log: true,
            y_log: log,
            y_max: None,
            bands: swept
                .iter()
                .filter(|v| any_targets || v.image_loss != Some(false))
                .map(|v| {
                    let i = variants.iter().position(|x| x == *v).unwrap_or(0);
                    let pts = results
                        .lrs(v)
                        .into_iter()
                        .filter_map(|lr| {
                            let here: Vec<f64> = results.cell(v, lr).values().filter_map(|r| value(r)).collect();
                            stats(&here, log).map(|(m, lo, hi)| (lr.log10(), m, lo, hi))
                        })
                        .collect();
                    band(i, v, pts, true)
                })
                .collect(),
        })
        .collect()
}

/// For each learning rate both sides of a pair ran: max attention logit, block-output RMS and
/// text CE over steps, rows of panels.
fn image_panels(results: &Results, variants: &[Switches], pairs: &[(Switches, Switches)]) -> Vec<Panel> {
    let mut lrs: Vec<f64> =
        pairs.iter().flat_map(|(a, b)| results.lrs(a).into_iter().filter(|lr| results.lrs(b).contains(lr))).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    let rows: [(&str, StepValue, bool, Option<f64>); 3] = [
        ("max attention logit", |p| p.value(Metric::MaxAttnLogit), true, None),
        ("block-output RMS", |p| p.value(Metric::OutputRms), true, None),
        ("text cross-entropy", |p| p.ce_text, false, Some(CE_CAP)),
    ];
    let mut panels = Vec::new();
    for (title, value, log, y_max) in rows {
        for &lr in &lrs {
            let mut bands = Vec::new();
            for (a, b) in pairs {
                for v in [a, b] {
                    let i = variants.iter().position(|x| x == v).unwrap_or(0);
                    if let Some(pts) = over_steps(results, v, lr, value, log) {
                        bands.push(band(i, v, pts, false));
                    }
                }
            }
            panels.push(Panel {
                title: format!("{title} — lr {lr:e}"),
                x_desc: "step".into(),
                x_log: false,
                y_log: log,
                y_max,
                bands,
            });
        }
    }
    panels
}
