//! The one rule by which every finding of an ablation is judged.
//!
//! A finding compares a variant *without* a fix against the same variant *with* it, at one
//! learning rate, seed by seed: seed `s` of both runs shares its initialisation and data order,
//! so each seed gives one paired effect `e_s`, signed so that a positive value is what the
//! finding claims, and a margin `m` it must exceed (a probe 2× smaller, log Z 10% closer to 0, a
//! loss lower at all).
//!
//! - **shown**: every seed's effect exceeds the margin, or the mean effect exceeds the margin by
//!   more than twice its standard error (`sd / √n`);
//! - **mixed**: the mean effect exceeds the margin, but not in every seed (nor by two standard
//!   errors);
//! - **not shown**: the mean effect does not exceed the margin (a single seed that does is
//!   noise until the others agree);
//! - **untested**: fewer than [`MIN_SEEDS`] seeds ran both runs.
//!
//! A finding claimed at several learning rates (or over several pairs of variants) is shown when
//! it is shown at each, not shown when it is not shown at any, and mixed otherwise.

use std::fmt;

/// Seeds a comparison needs before it gives a verdict.
pub const MIN_SEEDS: usize = 3;

/// The rule, in one sentence, for reports and summaries.
pub const RULE: &str = "A comparison is **shown** when the effect exceeds its margin in every seed (or its mean \
exceeds the margin by more than twice its standard error), **mixed** when its mean exceeds the margin but not every \
seed does, **not shown** when its mean does not, and untested with fewer than 3 seeds (or a value missing); seeds are paired (seed s of \
both runs shares its initialisation and data order). A finding over several learning rates or pairs is shown when \
every comparison is, not shown when none is, untested when any is, and mixed otherwise. With 3 seeds, \
\"every seed\" happens by chance 1 time in 8 for an effect of zero: read a shown verdict with a small effect with \
that in mind.";

/// What a comparison, or a finding, came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Beyond the margin in every seed (or on average by more than two standard errors).
    Shown,
    /// Beyond the margin on average, not in every seed.
    Mixed,
    /// Not beyond the margin on average (single seeds may be).
    NotShown,
    /// Too few seeds, or no runs to compare.
    Untested,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Shown => "shown",
            Verdict::Mixed => "mixed",
            Verdict::NotShown => "not shown",
            Verdict::Untested => "untested",
        })
    }
}

/// Mean, sample standard deviation, min and max of some values (NaN-free).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// How many.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for one value.
    pub sd: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of the finite values among `values`; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self { n, mean, sd, min, max })
    }

    /// Standard error of the mean.
    pub fn standard_error(&self) -> f64 {
        self.sd / (self.n as f64).sqrt()
    }
}

/// The verdict on paired per-seed `effects` (positive: the claim holds) against `margin`.
pub fn judge(effects: &[f64], margin: f64) -> Verdict {
    let Some(s) = Spread::of(effects.iter().copied()) else { return Verdict::Untested };
    if s.n < MIN_SEEDS || s.n < effects.len() {
        // A seed whose effect is not a number (a probe that was never measured) leaves the
        // comparison short of seeds rather than quietly dropped.
        return Verdict::Untested;
    }
    let holding = effects.iter().filter(|&&e| e > margin).count();
    if holding == s.n || s.mean - margin > 2.0 * s.standard_error() {
        Verdict::Shown
    } else if s.mean > margin {
        Verdict::Mixed
    } else {
        Verdict::NotShown
    }
}

/// The verdict of a finding made of several comparisons (learning rates, pairs of variants). One
/// untested comparison leaves the whole finding untested: "shown at each" cannot hold then.
pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let tested: Vec<Verdict> = verdicts.into_iter().collect();
    if tested.is_empty() || tested.contains(&Verdict::Untested) {
        Verdict::Untested
    } else if tested.iter().all(|v| *v == Verdict::Shown) {
        Verdict::Shown
    } else if tested.iter().all(|v| *v == Verdict::NotShown) {
        Verdict::NotShown
    } else {
        Verdict::Mixed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_or_two_standard_errors() {
        // Every seed beyond the margin.
        assert_eq!(judge(&[0.3, 0.1, 0.2], 0.0), Verdict::Shown);
        // One seed disagrees, and the mean is within two standard errors: mixed.
        assert_eq!(judge(&[0.5, 0.4, -0.6], 0.0), Verdict::Mixed);
        // One seed short of the margin, but the mean is far beyond it: mean 0.4, sd 0.0577,
        // standard error 0.0333; 0.4 − 0.35 = 0.05 < 0.067, so this one is mixed …
        assert_eq!(judge(&[0.45, 0.4, 0.34], 0.35), Verdict::Mixed);
        // … and with five seeds the standard error shrinks below the distance: shown.
        assert_eq!(judge(&[0.46, 0.44, 0.42, 0.41, 0.34], 0.35), Verdict::Shown);
        // No seed beyond the margin.
        assert_eq!(judge(&[-0.1, -0.2, 0.0], 0.0), Verdict::NotShown);
        assert_eq!(judge(&[0.1, 0.2, 0.15], 0.3), Verdict::NotShown);
        // One seed beyond it, but not the mean: a fluke until the others agree.
        assert_eq!(judge(&[0.9, 0.1, 0.1], 0.5), Verdict::NotShown);
    }

    #[test]
    fn too_few_seeds_or_a_missing_value_is_untested() {
        assert_eq!(judge(&[1.0, 2.0], 0.0), Verdict::Untested);
        assert_eq!(judge(&[], 0.0), Verdict::Untested);
        assert_eq!(judge(&[1.0, f64::NAN, 2.0], 0.0), Verdict::Untested);
    }

    #[test]
    fn findings_over_several_comparisons() {
        use Verdict::*;
        assert_eq!(combine([Shown, Shown, Untested]), Untested);
        assert_eq!(combine([Shown, Shown]), Shown);
        assert_eq!(combine([NotShown, NotShown]), NotShown);
        assert_eq!(combine([Shown, NotShown]), Mixed);
        assert_eq!(combine([Shown, Mixed]), Mixed);
        assert_eq!(combine([Untested]), Untested);
    }

    #[test]
    fn spread_is_the_sample_statistics() {
        let s = Spread::of([1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((s.n, s.mean, s.sd, s.min, s.max), (3, 2.0, 1.0, 1.0, 3.0));
        assert!((s.standard_error() - 1.0 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(Spread::of([f64::INFINITY]), None);
    }
}
