//! A grid's runs reduced to the numbers its analysis compares, and grouped into cells: one
//! variant (every switch but the learning rate and the seed) at one learning rate, one run per
//! seed.

use std::collections::BTreeMap;
use std::path::Path;

use chameleon_model::NormPlacement;
use chameleon_train::ablation::Switches;
use chameleon_train::monitor::{Metric, Point, RunState, RunView, Watch};

/// What one ended run (done or diverged) measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Directory name.
    pub name: String,
    /// Every switch of the run.
    pub switches: Switches,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// Step at which the loss or gradient became non-finite.
    pub diverged_at: Option<usize>,
    /// Cross-entropy of the first step: the untrained model's.
    pub initial_ce: f64,
    /// Mean training cross-entropy of the last 10 steps (without the z-loss term; see
    /// [`RunView::final_ce`]).
    pub final_ce: Option<f64>,
    /// The same on text targets and on image targets alone.
    pub final_ce_text: Option<f64>,
    /// See `final_ce_text`.
    pub final_ce_image: Option<f64>,
    /// The last held-out evaluation (NaN where it was not finite; `None` for a diverged run,
    /// whose last evaluation came before it went bad).
    pub held_out: Option<f64>,
    /// The step of that evaluation when it was not the run's last.
    pub held_out_step: Option<usize>,
    /// The same on text targets and on image targets.
    pub held_out_text: Option<f64>,
    /// See `held_out_text`.
    pub held_out_image: Option<f64>,
    /// Peak over the run of the max attention logit (max over layers). `None` for a diverged
    /// run, as are the other probes: they stop where it blew up, and would understate it.
    pub peak_attn_logit: Option<f64>,
    /// Lowest attention entropy over the run (min over heads and layers).
    pub min_attn_entropy: Option<f64>,
    /// Peak over the run of the block-output RMS (max over layers).
    pub peak_output_rms: Option<f64>,
    /// Mean log Z at the first and the last step.
    pub log_z: (Option<f64>, Option<f64>),
    /// Throughput, tokens per second, over the last steps.
    pub tokens_per_s: Option<f64>,
    /// Every step's metrics, for the curves.
    pub points: Vec<Point>,
}

impl RunResult {
    fn of(view: &RunView) -> Option<Self> {
        let switches = view.switch_values.clone()?;
        let diverged_at = match view.state {
            RunState::Done => None,
            RunState::Diverged(_) => Some(view.status_step),
            _ => return None,
        };
        let initial_ce = view.points.first().map(|p| p.ce).filter(|c| c.is_finite())?;
        let ended = diverged_at.is_none();
        let probe = |v: Option<f64>| v.filter(|_| ended);
        let held_out = view.last_eval().filter(|_| ended);
        let evaluated =
            |f: fn(&Point) -> f64| held_out.map(|(p, _)| f(p)).map(|v| if v.is_finite() { v } else { f64::NAN });
        Some(Self {
            name: view.name.clone(),
            lr: switches.learning_rate.unwrap_or(f64::NAN),
            seed: switches.seed.unwrap_or(0),
            switches,
            diverged_at,
            initial_ce,
            final_ce: view.final_ce(),
            final_ce_text: view.tail_mean(|p| p.ce_text),
            final_ce_image: view.tail_mean(|p| p.ce_image),
            held_out: evaluated(|p| p.value(Metric::EvalCe)),
            held_out_step: held_out.and_then(|(_, step)| step),
            held_out_text: evaluated(|p| p.eval_ce_text),
            held_out_image: evaluated(|p| p.eval_ce_image),
            peak_attn_logit: probe(view.max(Metric::MaxAttnLogit)),
            min_attn_entropy: probe(view.min(Metric::AttnEntropy)),
            peak_output_rms: probe(view.max(Metric::OutputRms)),
            log_z: (view.first(Metric::LogZ), view.last(Metric::LogZ)),
            tokens_per_s: view.tokens_per_s(),
            points: view.points.clone(),
        })
    }

    /// The cross-entropy the analysis compares (Wortsman et al. 2023): `min(CE at the end,
    /// initial CE)`, and the initial CE for a run that diverged, so that a diverged run counts
    /// as no better than an untrained model rather than as a missing value.
    pub fn ce(&self) -> f64 {
        match (self.diverged_at, self.final_ce) {
            (None, Some(end)) => end.min(self.initial_ce),
            _ => self.initial_ce,
        }
    }
}

/// A variant: the switches without the learning rate and the seed.
pub fn variant_of(s: &Switches) -> Switches {
    Switches { learning_rate: None, seed: None, ..s.clone() }
}

/// A variant in words, named by its fixes: "no fix", "QK-norm", "QK-norm + reordered norm +
/// z-loss 1e-5", "QK-norm + dropout 0.1", "no fix, no image loss".
pub fn label(v: &Switches) -> String {
    let mut fixes = Vec::new();
    if v.qk_norm == Some(true) {
        fixes.push("QK-norm".to_string());
    }
    if v.norm_placement == Some(NormPlacement::Reordered) {
        fixes.push("reordered norm".to_string());
    }
    if let Some(z) = v.z_loss.filter(|&z| z > 0.0) {
        fixes.push(format!("z-loss {z:e}"));
    }
    if let Some(d) = v.dropout.filter(|&d| d > 0.0) {
        fixes.push(format!("dropout {d}"));
    }
    let mut out = if fixes.is_empty() { "no fix".to_string() } else { fixes.join(" + ") };
    if v.image_loss == Some(false) {
        out += ", no image loss";
    }
    out
}

/// The ended runs of a grid directory, and how many have not ended.
#[derive(Debug, Clone)]
pub struct Results {
    /// Done or diverged runs, in grid order.
    pub runs: Vec<RunResult>,
    /// Runs that are queued, running, stopped or failed: left out of every comparison.
    pub unfinished: Vec<String>,
    /// Every run in grid order: its name, its state (`done`, `diverged@STEP`, `running`, …) and
    /// the steps it has done.
    pub states: Vec<(String, String, usize)>,
}

impl Results {
    /// Reads every run under `dir` (a grid directory, or a folder of runs).
    pub fn read(dir: &Path) -> Result<Self, String> {
        Ok(Self::from_views(&Watch::open(dir)?.runs))
    }

    /// The ended runs among `views`.
    pub fn from_views(views: &[RunView]) -> Self {
        let mut runs = Vec::new();
        let mut unfinished = Vec::new();
        let mut states = Vec::new();
        for v in views {
            let state = match &v.state {
                RunState::Diverged(_) => format!("diverged@{}", v.status_step),
                s => s.word().to_string(),
            };
            states.push((v.name.clone(), state, v.step()));
            match RunResult::of(v) {
                Some(r) => runs.push(r),
                None => unfinished.push(v.name.clone()),
            }
        }
        Self { runs, unfinished, states }
    }

    /// The variants, in the order their first run appears.
    pub fn variants(&self) -> Vec<Switches> {
        let mut out: Vec<Switches> = Vec::new();
        for r in &self.runs {
            let v = variant_of(&r.switches);
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }

    /// The learning rates at which `variant` ran, ascending.
    pub fn lrs(&self, variant: &Switches) -> Vec<f64> {
        ascending(self.runs.iter().filter(|r| variant_of(&r.switches) == *variant).map(|r| r.lr))
    }

    /// Every learning rate of the grid, ascending.
    pub fn all_lrs(&self) -> Vec<f64> {
        ascending(self.runs.iter().map(|r| r.lr))
    }

    /// Every seed of the grid, ascending.
    pub fn seeds(&self) -> Vec<u64> {
        ascending(self.runs.iter().map(|r| r.seed))
    }

    /// The runs of `variant` at `lr`, by seed.
    pub fn cell(&self, variant: &Switches, lr: f64) -> BTreeMap<u64, &RunResult> {
        self.runs
            .iter()
            .filter(|r| r.lr.total_cmp(&lr).is_eq() && variant_of(&r.switches) == *variant)
            .map(|r| (r.seed, r))
            .collect()
    }
}

/// The distinct values, ascending.
fn ascending<T: PartialOrd>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = values.collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.dedup();
    v
}
