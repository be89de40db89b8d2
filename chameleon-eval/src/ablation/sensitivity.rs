//! Learning-rate sensitivity (Wortsman et al. 2023): how much worse than its best a variant does
//! over a learning-rate sweep.
//!
//! For one seed of a variant, `E_lr[min(CE(lr), CE₀) − CE*]`, where `CE₀` is the untrained
//! model's CE, `CE*` the lowest `min(CE(lr), CE₀)` of the same sweep, and a diverged run counts
//! as `CE₀` ([`RunResult::ce`](super::results::RunResult::ce)). 0 means every learning rate
//! reached the best loss. Computed per seed, so that it has a spread and its comparisons follow
//! the one verdict rule.

use std::collections::BTreeMap;

use chameleon_train::ablation::Switches;

use super::results::Results;
use super::verdict::Spread;

/// Learning rates a sweep needs before its sensitivity means anything.
pub const MIN_LRS: usize = 3;

/// A variant's sensitivity over its sweep.
#[derive(Debug, Clone)]
pub struct Sensitivity {
    /// The learning rates every counted seed ran.
    pub lrs: Vec<f64>,
    /// The sensitivity per seed.
    pub by_seed: BTreeMap<u64, f64>,
    /// The best CE per seed.
    pub best: BTreeMap<u64, f64>,
}

impl Sensitivity {
    /// Mean and spread over seeds.
    pub fn spread(&self) -> Option<Spread> {
        Spread::of(self.by_seed.values().copied())
    }
}

/// The sensitivity of `variant` over `lrs` (every seed that ran all of them), or `None` when
/// fewer than [`MIN_LRS`] learning rates are given.
pub fn sensitivity(results: &Results, variant: &Switches, lrs: &[f64]) -> Option<Sensitivity> {
    if lrs.len() < MIN_LRS {
        return None;
    }
    let cells: Vec<_> = lrs.iter().map(|&lr| results.cell(variant, lr)).collect();
    let seeds: Vec<u64> = cells[0].keys().filter(|s| cells.iter().all(|c| c.contains_key(s))).copied().collect();
    let mut by_seed = BTreeMap::new();
    let mut best = BTreeMap::new();
    for s in seeds {
        let ce: Vec<f64> = cells.iter().map(|c| c[&s].ce()).collect();
        let b = ce.iter().copied().fold(f64::INFINITY, f64::min);
        by_seed.insert(s, ce.iter().map(|x| x - b).sum::<f64>() / ce.len() as f64);
        best.insert(s, b);
    }
    Some(Sensitivity { lrs: lrs.to_vec(), by_seed, best })
}
