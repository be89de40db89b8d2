//! The shipped ablation grids load, and they have what their verdicts need: every cell (a
//! variant at a learning rate) with at least 3 seeds, and the no-fix, QK-norm and all-fixes
//! variants swept over at least 6 learning rates spanning at least 2.5 decades.

use std::collections::BTreeMap;
use std::path::Path;

use chameleon_model::NormPlacement;
use chameleon_train::ablation::{Grid, Switches};

#[test]
fn the_shipped_grids_have_seeds_and_a_learning_rate_sweep() {
    for file in ["stability.toml", "stability-gpu.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments").join(file);
        let grid = Grid::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut cells: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut sweeps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for run in &grid.runs {
            let s = &run.switches;
            let variant = Switches { learning_rate: None, seed: None, ..s.clone() }.describe();
            let lr = s.learning_rate.unwrap();
            cells.entry(format!("{variant} lr{lr:e}")).or_default().push(s.seed.unwrap());
            let v = sweeps.entry(variant).or_default();
            if !v.contains(&lr) {
                v.push(lr);
            }
        }
        for (cell, seeds) in &cells {
            assert!(seeds.len() >= 3, "{file}: {cell} has {} seed(s)", seeds.len());
        }
        let describe = |qk: bool, placement: NormPlacement, z: f64| {
            let run = grid.runs.iter().find(|r| {
                r.switches.qk_norm == Some(qk)
                    && r.switches.norm_placement == Some(placement)
                    && r.switches.z_loss.is_some_and(|x| (x > 0.0) == (z > 0.0))
                    && r.switches.dropout == Some(0.0)
                    && r.switches.image_loss == Some(true)
            });
            let s = &run.unwrap_or_else(|| panic!("{file}: no such variant")).switches;
            Switches { learning_rate: None, seed: None, ..s.clone() }.describe()
        };
        for variant in [
            describe(false, NormPlacement::PreNorm, 0.0),
            describe(true, NormPlacement::PreNorm, 0.0),
            describe(true, NormPlacement::Reordered, 1e-5),
        ] {
            let lrs = &sweeps[&variant];
            let (lo, hi) = lrs.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &l| (a.min(l), b.max(l)));
            assert!(lrs.len() >= 6, "{file}: {variant} sweeps {} learning rates", lrs.len());
            assert!((hi / lo).log10() >= 2.5, "{file}: {variant} spans {lo:e}..{hi:e}");
        }
        assert!(grid.high_learning_rate.is_some(), "{file}: where the findings are claimed");
    }
}
