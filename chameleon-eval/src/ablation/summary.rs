//! The grid in numbers: one row per cell (a variant at a learning rate) with the mean and the
//! spread over its seeds, the findings with their verdicts, and the learning-rate sensitivity.
//! Written as plain text (`RUNS/summary.txt`, printed by `cargo xtask ablate`) and as markdown
//! tables (the report).

use std::fmt::Write as _;
use std::path::Path;

use super::findings::{Finding, Scope, findings, number, spread};
use super::results::{Results, RunResult, label};
use super::sensitivity::{Sensitivity, sensitivity};
use super::verdict::{RULE, Spread, Verdict};

/// A grid, read and analysed.
pub struct Analysis {
    /// The ended runs.
    pub results: Results,
    /// Where the findings are claimed.
    pub scope: Scope,
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Analysis {
    /// Reads the runs under `dir` and judges the findings (`grid.json` gives the scope).
    pub fn read(dir: &Path) -> Result<Self, String> {
        let results = Results::read(dir)?;
        let high_lr = std::fs::read_to_string(dir.join(chameleon_train::ablation::GRID_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["high_learning_rate"].as_f64());
        Ok(Self::of(results, Scope { high_lr }))
    }

    /// The analysis of `results`.
    pub fn of(results: Results, scope: Scope) -> Self {
        let findings = findings(&results, scope);
        Self { results, scope, findings }
    }

    /// Each cell's row, variants in grid order and learning rates ascending.
    pub fn cells(&self) -> Vec<CellRow> {
        let mut rows = Vec::new();
        for v in self.results.variants() {
            for lr in self.results.lrs(&v) {
                let runs: Vec<&RunResult> = self.results.cell(&v, lr).into_values().collect();
                let over = |f: &dyn Fn(&RunResult) -> Option<f64>| Spread::of(runs.iter().filter_map(|r| f(r)));
                rows.push(CellRow {
                    variant: label(&v),
                    lr,
                    seeds: runs.len(),
                    diverged: runs.iter().filter(|r| r.diverged_at.is_some()).count(),
                    ce: over(&|r| Some(r.ce())),
                    ce_text: over(&|r| r.final_ce_text),
                    ce_image: over(&|r| r.final_ce_image),
                    held_out: over(&|r| r.held_out),
                    peak_attn_logit: over(&|r| r.peak_attn_logit),
                    min_attn_entropy: over(&|r| r.min_attn_entropy),
                    peak_output_rms: over(&|r| r.peak_output_rms),
                    log_z: over(&|r| r.log_z.1),
                    tokens_per_s: over(&|r| r.tokens_per_s),
                });
            }
        }
        rows
    }

    /// The learning-rate sensitivity of every variant that swept at least 3 learning rates.
    pub fn sensitivities(&self) -> Vec<(String, Sensitivity)> {
        self.results
            .variants()
            .iter()
            .filter_map(|v| sensitivity(&self.results, v, &self.results.lrs(v)).map(|s| (label(v), s)))
            .collect()
    }

    /// Where the findings are claimed, in words.
    pub fn scope_words(&self) -> String {
        match self.scope.high_lr {
            Some(h) => format!("at learning rates from {h:e} up (`[ablation] high_learning_rate`)"),
            None => "at every learning rate".to_string(),
        }
    }

    /// The plain-text summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let lrs = self.results.all_lrs();
        let seeds = self.results.seeds();
        let _ = writeln!(
            out,
            "{} ended runs: {} variants, learning rates {}, seeds {}{}",
            self.results.runs.len(),
            self.results.variants().len(),
            lrs.iter().map(|l| format!("{l:e}")).collect::<Vec<_>>().join(" "),
            seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
            if self.results.unfinished.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} not ended, left out: {}",
                    self.results.unfinished.len(),
                    self.results.unfinished.join(", ")
                )
            }
        );
        let _ = writeln!(out, "\nEach cell: mean (min–max) over its seeds.\n");
        let _ = writeln!(
            out,
            "{:<44} {:>6} {:>5} {:>4} {:>22} {:>22} {:>26} {:>22} {:>26}",
            "variant",
            "lr",
            "seeds",
            "div",
            "CE at the end",
            "held-out CE",
            "peak max attn logit",
            "min attn entropy",
            "peak block-output RMS"
        );
        for c in self.cells() {
            let _ = writeln!(
                out,
                "{:<44} {:>6} {:>5} {:>4} {:>22} {:>22} {:>26} {:>22} {:>26}",
                c.variant,
                format!("{:e}", c.lr),
                c.seeds,
                c.diverged,
                cell(&c.ce),
                cell(&c.held_out),
                cell(&c.peak_attn_logit),
                cell(&c.min_attn_entropy),
                cell(&c.peak_output_rms)
            );
        }
        let _ = writeln!(out, "\n{}", LEGEND);
        let _ = writeln!(out, "\nThe verdict rule: {}", RULE.replace("**", ""));
        let _ = writeln!(out, "\nThe findings, claimed {} (lower rates listed for context):", self.scope_words());
        for f in &self.findings {
            let _ = writeln!(out, "\n{}: {}", capitalise(&f.claim), verdict_word(f.verdict));
            let _ = writeln!(out, "  ({}: {})", f.measure, f.effect.describe());
            for c in &f.comparisons {
                let mark = if c.claimed { "*" } else { " " };
                let _ = writeln!(out, "  {mark} {}", c.render(f.measure, f.effect));
            }
        }
        let _ = writeln!(out, "\n  (* a learning rate where the finding is claimed)");
        let _ = writeln!(
            out,
            "\nLearning-rate sensitivity (Wortsman et al. 2023; lower is better), mean (min–max) over seeds:"
        );
        for (v, s) in self.sensitivities() {
            let best = Spread::of(s.best.values().copied());
            let _ = writeln!(
                out,
                "  {v}: {} over {} learning rates; best CE {}",
                s.spread().as_ref().map_or_else(|| "-".into(), spread),
                s.lrs.len(),
                best.as_ref().map_or_else(|| "-".into(), spread)
            );
        }
        let _ = writeln!(out, "\nRuns:");
        let _ = writeln!(
            out,
            "{:<48} {:>14} {:>6} {:>8} {:>12} {:>14} {:>14}",
            "run", "status", "steps", "CE@end", "held-out CE", "max attn logit", "max out RMS"
        );
        let ended: std::collections::HashMap<&str, &RunResult> =
            self.results.runs.iter().map(|r| (r.name.as_str(), r)).collect();
        for (name, state, step) in &self.results.states {
            let r = ended.get(name.as_str());
            let _ = writeln!(
                out,
                "{:<48} {:>14} {:>6} {:>8} {:>12} {:>14} {:>14}",
                name,
                state,
                step,
                num(r.and_then(|r| r.final_ce)),
                r.and_then(|r| r.held_out.map(|h| match r.held_out_step {
                    Some(step) => format!("{}@{step}", number(h)),
                    None => number(h),
                }))
                .unwrap_or_else(|| "-".into()),
                num(r.and_then(|r| r.peak_attn_logit)),
                num(r.and_then(|r| r.peak_output_rms)),
            );
        }
        out
    }
}

/// Two analyses of the same grid (other seeds, another machine) side by side: each finding's
/// verdict in both, and how far the cells' means moved between them.
pub fn compare(a: &Analysis, a_name: &str, b: &Analysis, b_name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Verdicts: {a_name} | {b_name}");
    let mut agree = 0;
    let mut both = 0;
    for fa in &a.findings {
        let vb = b.findings.iter().find(|f| f.claim == fa.claim).map(|f| f.verdict);
        let same = vb == Some(fa.verdict);
        if vb.is_some() {
            both += 1;
            agree += same as usize;
        }
        let _ = writeln!(
            out,
            "  {} {}: {} | {}",
            if same { " " } else { "≠" },
            capitalise(&fa.claim),
            fa.verdict,
            vb.map_or_else(|| "-".to_string(), |v| v.to_string())
        );
    }
    let _ = writeln!(out, "  {agree} of {both} verdicts agree.");
    let (ca, cb) = (a.cells(), b.cells());
    let pairs: Vec<(&CellRow, &CellRow)> =
        ca.iter().filter_map(|x| cb.iter().find(|y| y.variant == x.variant && y.lr == x.lr).map(|y| (x, y))).collect();
    let _ = writeln!(out, "\nHow far the {} cells in both moved (means over seeds):", pairs.len());
    type Of = fn(&CellRow) -> Option<Spread>;
    let measures: [(&str, Of, bool); 5] = [
        ("CE at the end", |c| c.ce, false),
        ("held-out CE", |c| c.held_out, false),
        ("peak max attention logit", |c| c.peak_attn_logit, true),
        ("min attention entropy", |c| c.min_attn_entropy, false),
        ("peak block-output RMS", |c| c.peak_output_rms, true),
    ];
    for (name, get, ratio) in measures {
        let mut moved: Vec<(f64, String)> = pairs
            .iter()
            .filter_map(|(x, y)| {
                let (u, v) = (get(x)?.mean, get(y)?.mean);
                let d = if ratio { (u.max(v) / u.min(v)).abs() } else { (u - v).abs() };
                d.is_finite().then(|| (d, format!("{}, lr {:e}: {} vs {}", x.variant, x.lr, number(u), number(v))))
            })
            .collect();
        moved.sort_by(|p, q| p.0.total_cmp(&q.0));
        let Some(largest) = moved.last() else { continue };
        let median = moved[moved.len() / 2].0;
        let unit = if ratio { "×" } else { "" };
        let _ = writeln!(
            out,
            "  {name}: median {}{unit}, largest {}{unit} ({})",
            number(median),
            number(largest.0),
            largest.1
        );
    }
    let _ =
        writeln!(out, "  (CE and entropy: absolute differences; logits and RMS: ratios of the larger to the smaller)");
    out
}

/// One cell of the grid: a variant at a learning rate, over its seeds.
#[derive(Debug, Clone)]
pub struct CellRow {
    /// The variant in words.
    pub variant: String,
    /// The learning rate.
    pub lr: f64,
    /// Seeds that ended.
    pub seeds: usize,
    /// Of which diverged (non-finite).
    pub diverged: usize,
    /// [`RunResult::ce`].
    pub ce: Option<Spread>,
    /// CE at the end on text targets.
    pub ce_text: Option<Spread>,
    /// CE at the end on image targets.
    pub ce_image: Option<Spread>,
    /// The last held-out CE.
    pub held_out: Option<Spread>,
    /// Peak max attention logit.
    pub peak_attn_logit: Option<Spread>,
    /// Lowest attention entropy.
    pub min_attn_entropy: Option<Spread>,
    /// Peak block-output RMS.
    pub peak_output_rms: Option<Spread>,
    /// log Z at the end.
    pub log_z: Option<Spread>,
    /// Tokens per second at the end.
    pub tokens_per_s: Option<Spread>,
}

/// What the columns mean.
pub const LEGEND: &str = "CE at the end: the mean training cross-entropy of the last 10 steps, without the z-loss term, \
and min(that, the untrained model's CE); a run that diverged (div) counts as the untrained model's CE. Held-out CE: the \
last evaluation on the fixed held-out set (the same tokens for every run). Peaks and the entropy minimum are over the \
run, taken over layers (and heads). A run without loss on image codes scores text and special targets only.";

/// `SHOWN`, `MIXED`, `NOT SHOWN`, `untested`.
pub fn verdict_word(v: Verdict) -> String {
    match v {
        Verdict::Untested => {
            "untested (no such pair in the grid, or one with fewer than 3 seeds or a value missing: see below)"
                .to_string()
        }
        v => v.to_string().to_uppercase(),
    }
}

/// First letter upper case.
pub fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// `mean (min–max)` or `-`.
pub fn cell(v: &Option<Spread>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), spread)
}

/// A number or `-`.
pub fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), number)
}
