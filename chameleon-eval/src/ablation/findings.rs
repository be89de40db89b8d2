//! The paper's findings, each judged on a grid's runs by the one rule of [`super::verdict`].
//!
//! A finding names a switch (or a set of switches), the measure it moves and the margin: QK-norm
//! makes the peak attention logit at least 2× smaller, z-loss brings log Z at least 10% closer to
//! 0, all three fixes lower the cross-entropy at all, and so on. Every pair of variants that
//! differ in that switch alone is compared at every learning rate both ran, seed by seed. The
//! verdict counts the *high* learning rates ([`Scope`]), where the paper's instabilities live;
//! the comparisons at lower learning rates are listed beside it, for context.

use chameleon_model::NormPlacement;
use chameleon_train::ablation::Switches;

use super::results::{Results, RunResult, label};
use super::sensitivity::sensitivity;
use super::verdict::{Spread, Verdict, combine, judge};

/// How a measure must move for a finding to hold, per seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// `without / with > factor` (the effect is the log₁₀ ratio against log₁₀ factor).
    Smaller(f64),
    /// `without − with > margin`.
    Lower(f64),
    /// `with − without > margin`.
    Higher(f64),
    /// `|with| < (1 − fraction)·|without|`.
    CloserToZero(f64),
    /// `without − with` larger than the seed spread of the variant with the fix (its max − min
    /// over seeds): the noise of a stable run. The variant without it may scatter more; that
    /// scatter is the instability itself, so it does not widen the margin.
    BeyondSpread,
}

impl Effect {
    /// The per-seed effect (positive: the claim holds) and the margin it must exceed.
    fn of(self, without: f64, with: f64) -> (f64, f64) {
        match self {
            Effect::Smaller(f) => ((without / with).log10(), f.log10()),
            Effect::Lower(m) => (without - with, m),
            Effect::Higher(m) => (with - without, m),
            Effect::CloserToZero(f) => (without.abs() - with.abs() - f * without.abs(), 0.0),
            // The margin comes from all seeds together: see `margin`.
            Effect::BeyondSpread => (without - with, 0.0),
        }
    }

    /// The margin for a set of per-seed values (without, with).
    fn margin(self, values: &[(f64, f64)]) -> f64 {
        match self {
            Effect::BeyondSpread => Spread::of(values.iter().map(|v| v.1)).map_or(0.0, |s| s.max - s.min),
            other => other.of(1.0, 1.0).1,
        }
    }

    /// The margin in words.
    pub fn describe(self) -> String {
        match self {
            Effect::Smaller(f) => format!("at least {f}× smaller with it"),
            Effect::Lower(0.0) => "lower with it".to_string(),
            Effect::Lower(m) => format!("lower by more than {m} with it"),
            Effect::Higher(m) => format!("higher by more than {m} with it"),
            Effect::CloserToZero(f) => format!("at least {:.0}% closer to 0 with it", f * 100.0),
            Effect::BeyondSpread => {
                "lower with it by more than the seed spread (max − min) of the runs with it".to_string()
            }
        }
    }
}

/// A measure of one run.
#[derive(Clone, Copy)]
pub struct Measure {
    /// Its name, e.g. "peak max attention logit".
    pub name: &'static str,
    /// Its value for a run (`None`: not measured).
    pub value: fn(&RunResult) -> Option<f64>,
}

/// The learning rates at which the findings are claimed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scope {
    /// Comparisons at learning rates from this one up decide the verdicts (`None`: all).
    pub high_lr: Option<f64>,
}

impl Scope {
    fn claims(&self, lr: f64) -> bool {
        self.high_lr.is_none_or(|h| lr >= h * (1.0 - 1e-9))
    }
}

/// One pair of variants at one learning rate (or over a sweep), over the seeds both ran.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The learning rate (NaN for a comparison over a sweep).
    pub lr: f64,
    /// The sweep's learning rates, for a comparison over a sweep (else empty).
    pub sweep: Vec<f64>,
    /// The variant without the fix, in words.
    pub without: String,
    /// The variant with it.
    pub with: String,
    /// The seeds both ran.
    pub seeds: Vec<u64>,
    /// The measure per seed, without and with.
    pub values: Vec<(f64, f64)>,
    /// The margin each seed's effect must exceed (in the effect's units).
    pub margin: f64,
    /// The seeds whose effect exceeds the margin.
    pub holding: usize,
    /// The rule's verdict.
    pub verdict: Verdict,
    /// Whether this learning rate is one where the finding is claimed.
    pub claimed: bool,
}

/// One finding, measured.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What the paper (or the literature) claims.
    pub claim: String,
    /// The measure.
    pub measure: &'static str,
    /// How it must move.
    pub effect: Effect,
    /// The verdict over the claimed comparisons.
    pub verdict: Verdict,
    /// Every comparison, claimed or not, by pair and then learning rate.
    pub comparisons: Vec<Comparison>,
}

/// Pairs `(without, with)` of variants that differ only where `clear` looks: `fix` says which
/// side of the switch a variant is on (`None`: neither, e.g. another coefficient).
pub(super) fn pairs(
    results: &Results,
    fix: &dyn Fn(&Switches) -> Option<bool>,
    clear: &dyn Fn(&Switches) -> Switches,
) -> Vec<(Switches, Switches)> {
    let variants = results.variants();
    let mut out = Vec::new();
    for a in &variants {
        for b in &variants {
            if fix(a) == Some(false) && fix(b) == Some(true) && clear(a) == clear(b) {
                out.push((a.clone(), b.clone()));
            }
        }
    }
    out
}

/// The margin of per-seed `(without, with)` values, how many seeds clear it, and the verdict.
fn judged(effect: Effect, values: &[(f64, f64)]) -> (f64, usize, Verdict) {
    let margin = effect.margin(values);
    let effects: Vec<f64> = values.iter().map(|&(x, y)| effect.of(x, y).0).collect();
    (margin, effects.iter().filter(|&&e| e > margin).count(), judge(&effects, margin))
}

/// Compares every pair at every learning rate both ran.
fn finding(
    results: &Results,
    scope: Scope,
    claim: String,
    measure: Measure,
    effect: Effect,
    pairs: Vec<(Switches, Switches)>,
) -> Finding {
    let mut comparisons = Vec::new();
    for (without, with) in &pairs {
        for lr in results.lrs(without).into_iter().filter(|lr| results.lrs(with).contains(lr)) {
            let (a, b) = (results.cell(without, lr), results.cell(with, lr));
            let seeds: Vec<u64> = a.keys().filter(|s| b.contains_key(s)).copied().collect();
            let values: Vec<(f64, f64)> = seeds
                .iter()
                .map(|s| ((measure.value)(a[s]).unwrap_or(f64::NAN), (measure.value)(b[s]).unwrap_or(f64::NAN)))
                .collect();
            let (margin, holding, verdict) = judged(effect, &values);
            comparisons.push(Comparison {
                lr,
                sweep: Vec::new(),
                without: label(without),
                with: label(with),
                margin,
                holding,
                verdict,
                seeds,
                values,
                claimed: scope.claims(lr),
            });
        }
    }
    let verdict = combine(comparisons.iter().filter(|c| c.claimed).map(|c| c.verdict));
    Finding { claim, measure: measure.name, effect, verdict, comparisons }
}

/// A finding about the learning-rate sensitivity over the sweep both variants ran.
fn sensitivity_finding(results: &Results, claim: &str, pairs: Vec<(Switches, Switches)>) -> Finding {
    let effect = Effect::Lower(0.0);
    let mut comparisons = Vec::new();
    for (without, with) in &pairs {
        let lrs: Vec<f64> = results.lrs(without).into_iter().filter(|lr| results.lrs(with).contains(lr)).collect();
        let (Some(a), Some(b)) = (sensitivity(results, without, &lrs), sensitivity(results, with, &lrs)) else {
            continue;
        };
        let seeds: Vec<u64> = a.by_seed.keys().filter(|s| b.by_seed.contains_key(s)).copied().collect();
        let values: Vec<(f64, f64)> = seeds.iter().map(|s| (a.by_seed[s], b.by_seed[s])).collect();
        let (margin, holding, verdict) = judged(effect, &values);
        comparisons.push(Comparison {
            lr: f64::NAN,
            sweep: lrs,
            without: label(without),
            with: label(with),
            margin,
            holding,
            verdict,
            seeds,
            values,
            claimed: true,
        });
    }
    let verdict = combine(comparisons.iter().map(|c| c.verdict));
    Finding { claim: claim.to_string(), measure: "learning-rate sensitivity", effect, verdict, comparisons }
}

/// Pairs `(with image loss, without)` of variants that differ in `image_loss` alone.
pub(super) fn image_loss_pairs(results: &Results) -> Vec<(Switches, Switches)> {
    pairs(results, &|s| s.image_loss.map(|i| !i), &|s| Switches { image_loss: None, ..s.clone() })
}

fn is(placement: NormPlacement) -> impl Fn(&Switches) -> Option<bool> {
    move |s| s.norm_placement.map(|p| p == placement)
}

/// The measures the findings use.
pub mod measures {
    use super::Measure;

    /// Peak over the run of the max attention logit.
    pub const PEAK_ATTN_LOGIT: Measure = Measure { name: "peak max attention logit", value: |r| r.peak_attn_logit };
    /// Lowest attention entropy of the run.
    pub const MIN_ATTN_ENTROPY: Measure =
        Measure { name: "lowest attention entropy (nats)", value: |r| r.min_attn_entropy };
    /// Peak block-output RMS.
    pub const PEAK_OUTPUT_RMS: Measure = Measure { name: "peak block-output RMS", value: |r| r.peak_output_rms };
    /// `min(CE at the end, initial CE)`; a diverged run counts as its initial CE.
    pub const CE: Measure = Measure { name: "CE at the end", value: |r| Some(r.ce()) };
    /// The last held-out CE.
    pub const HELD_OUT_CE: Measure = Measure { name: "held-out CE", value: |r| r.held_out };
    /// Mean log Z at the last step.
    pub const LOG_Z: Measure = Measure { name: "log Z at the end", value: |r| r.log_z.1 };
}

/// The findings of the paper, as far as the grid tests them (a finding whose pairs the grid
/// lacks is listed as untested).
pub fn findings(results: &Results, scope: Scope) -> Vec<Finding> {
    use measures::*;
    let qk = pairs(results, &|s| s.qk_norm, &|s| Switches { qk_norm: None, ..s.clone() });
    let swin = pairs(results, &is(NormPlacement::Reordered), &|s| Switches { norm_placement: None, ..s.clone() });
    let all_three = |s: &Switches| match (s.qk_norm, s.norm_placement, s.z_loss) {
        (Some(true), Some(NormPlacement::Reordered), Some(z)) if z > 0.0 => Some(true),
        (Some(false), Some(NormPlacement::PreNorm), Some(0.0)) => Some(false),
        _ => None,
    };
    let together =
        pairs(results, &all_three, &|s| Switches { qk_norm: None, norm_placement: None, z_loss: None, ..s.clone() });
    let no_image_loss = image_loss_pairs(results);
    let dropout = pairs(results, &|s| s.dropout.map(|d| d > 0.0), &|s| Switches { dropout: None, ..s.clone() });
    let f = |claim: &str, m: Measure, e: Effect, p: &Vec<(Switches, Switches)>| {
        finding(results, scope, claim.to_string(), m, e, p.clone())
    };
    let mut out = vec![
        f("QK-norm bounds the attention logits", PEAK_ATTN_LOGIT, Effect::Smaller(2.0), &qk),
        // Entropy in nats, absolute: a collapsed head's 0.000 against 0.001 is no 2x effect.
        f("QK-norm keeps the attention entropy from collapsing", MIN_ATTN_ENTROPY, Effect::Higher(0.1), &qk),
        f("QK-norm trains better (lower CE at the end)", CE, Effect::Lower(0.0), &qk),
        f("the reordered norm bounds the block-output norm", PEAK_OUTPUT_RMS, Effect::Smaller(2.0), &swin),
    ];
    // z-loss: one finding per coefficient, each against no z-loss.
    let mut coefs: Vec<f64> = results.variants().iter().filter_map(|v| v.z_loss).filter(|&z| z > 0.0).collect();
    coefs.sort_by(f64::total_cmp);
    coefs.dedup();
    for c in coefs {
        let z = pairs(
            results,
            &|s| s.z_loss.and_then(|z| if z == 0.0 { Some(false) } else { (z == c).then_some(true) }),
            &|s| Switches { z_loss: None, ..s.clone() },
        );
        out.push(f(&format!("z-loss {c:e} pulls log Z towards 0"), LOG_Z, Effect::CloserToZero(0.1), &z));
    }
    out.extend([
        f("all three fixes together train better than none (lower CE at the end)", CE, Effect::Lower(0.0), &together),
        f(
            "without the fixes the loss goes bad where all three fixes train: worse by more than the seed spread",
            CE,
            Effect::BeyondSpread,
            &together,
        ),
        f(
            "without image generation (no loss on image codes) the attention logits stay smaller",
            PEAK_ATTN_LOGIT,
            Effect::Smaller(2.0),
            &no_image_loss,
        ),
        f(
            "without image generation the block-output norm stays smaller",
            PEAK_OUTPUT_RMS,
            Effect::Smaller(2.0),
            &no_image_loss,
        ),
        f(
            "without image generation the attention entropy stays higher",
            MIN_ATTN_ENTROPY,
            Effect::Higher(0.1),
            &no_image_loss,
        ),
        f("dropout lowers the held-out CE", HELD_OUT_CE, Effect::Lower(0.0), &dropout),
        sensitivity_finding(results, "QK-norm lowers the learning-rate sensitivity", qk.clone()),
        sensitivity_finding(results, "all three fixes lower the learning-rate sensitivity", together.clone()),
    ]);
    out
}

impl Comparison {
    /// `lr 1e0: peak max attention logit 8.9e4 (6.1e4–1.2e5) without (no fix) vs 18.2 (16.0–20.1)
    /// with (QK-norm); 3/3 seeds beyond the margin: shown`.
    pub fn render(&self, measure: &str, effect: Effect) -> String {
        let side = |pick: fn(&(f64, f64)) -> f64| -> String {
            Spread::of(self.values.iter().map(pick)).map_or_else(|| "-".into(), |s| spread(&s))
        };
        let at = if self.sweep.is_empty() {
            format!("lr {:e}", self.lr)
        } else {
            format!("over lr {:e}…{:e} ({} rates)", self.sweep[0], self.sweep[self.sweep.len() - 1], self.sweep.len())
        };
        let margin = match effect {
            Effect::BeyondSpread => format!(" (margin {})", number(self.margin)),
            _ => String::new(),
        };
        format!(
            "{at}: {measure} {} without ({}) vs {} with ({}); {}/{} seeds beyond the margin{margin}: {}",
            side(|v| v.0),
            self.without,
            side(|v| v.1),
            self.with,
            self.holding,
            self.seeds.len(),
            self.verdict
        )
    }
}

/// `mean (min–max)`, with numbers written to their size.
pub fn spread(s: &Spread) -> String {
    if s.n == 1 { number(s.mean) } else { format!("{} ({}–{})", number(s.mean), number(s.min), number(s.max)) }
}

/// A number written to its size: `1.23e5`, `431`, `5.07`.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        format!("{v}")
    } else if v.abs() >= 1e4 {
        format!("{v:.2e}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
