//! The ablation grid: an experiment file's `[ablation]` section turns its base experiment into a
//! list of runs that differ only in the paper's stability switches.
//!
//! ```toml
//! [ablation]
//! # Either lists, whose cartesian product is the grid …
//! qk_norm = [false, true]
//! learning_rate = [1e-2, 1e-1]
//! # … or explicit runs (each crossed with the lists above, which must not set the same switch).
//! [[ablation.runs]]
//! qk_norm = false
//! norm_placement = "PreNorm"
//! z_loss = 0.0
//! ```
//!
//! Run names come from the switches that vary across the grid, e.g. `noqk-pre-z0-lr1e-1`.
//! [`run_grid`] trains the runs one after another into `DIR/<name>`; a run that diverges or fails
//! is recorded and the next one starts. Running it again skips finished runs and resumes stopped
//! ones from their checkpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use chameleon_data::Prepared;
use chameleon_model::NormPlacement;
use serde::{Deserialize, Serialize};

use crate::config_file::{ConfigError, read_table};
use crate::experiment::Experiment;
use crate::trainer::{CONFIG_FILE, METRICS_FILE, RunOptions, STATUS_FILE, Status, TrainError, resolve, train};

/// The grid's index, written into the grid directory (the monitor reads it to list queued runs).
pub const GRID_FILE: &str = "grid.json";

/// The stability switches one run sets. `None`: the base experiment's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switches {
    /// QK-norm on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qk_norm: Option<bool>,
    /// `PreNorm` or `Reordered` (the paper's "swin" norm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_placement: Option<NormPlacement>,
    /// z-loss coefficient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_loss: Option<f64>,
    /// Residual and attention dropout (both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Peak learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Seed of initialisation, dropout and data order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Switches {
    /// The switches as an experiment has them (every field set).
    pub fn of(exp: &Experiment) -> Self {
        Self {
            qk_norm: Some(exp.model.qk_norm),
            norm_placement: Some(exp.model.norm_placement),
            z_loss: Some(exp.train.z_loss),
            dropout: Some(exp.model.residual_dropout),
            learning_rate: Some(exp.optim.learning_rate),
            seed: Some(exp.train.seed),
        }
    }

    /// `base` with these switches applied.
    pub fn apply(&self, base: &Experiment) -> Experiment {
        let mut exp = base.clone();
        if let Some(v) = self.qk_norm {
            exp.model.qk_norm = v;
        }
        if let Some(v) = self.norm_placement {
            exp.model.norm_placement = v;
        }
        if let Some(v) = self.z_loss {
            exp.train.z_loss = v;
        }
        if let Some(v) = self.dropout {
            exp.model.residual_dropout = v;
            exp.model.attention_dropout = v;
        }
        if let Some(v) = self.learning_rate {
            exp.optim.learning_rate = v;
        }
        if let Some(v) = self.seed {
            exp.train.seed = v;
        }
        exp
    }

    /// Name fragments, one per switch, in a fixed order: `qk`/`noqk`, `pre`/`swin`, `z1e-5`,
    /// `drop1e-1`, `lr3e-1`, `seed1`.
    fn fragments(&self) -> [Option<String>; 6] {
        [
            self.qk_norm.map(|q| if q { "qk" } else { "noqk" }.to_string()),
            self.norm_placement.map(|p| match p {
                NormPlacement::PreNorm => "pre".to_string(),
                NormPlacement::Reordered => "swin".to_string(),
            }),
            self.z_loss.map(|z| format!("z{}", short(z))),
            self.dropout.map(|d| format!("drop{}", short(d))),
            self.learning_rate.map(|l| format!("lr{}", short(l))),
            self.seed.map(|s| format!("seed{s}")),
        ]
    }

    /// All switches, e.g. `noqk pre z0 drop0 lr1e-1 seed0` (for tables).
    pub fn describe(&self) -> String {
        self.fragments().into_iter().flatten().collect::<Vec<_>>().join(" ")
    }
}

/// `0.3` → `3e-1`, `0` → `0`, `1e-5` → `1e-5`.
fn short(x: f64) -> String {
    if x == 0.0 { "0".into() } else { format!("{x:e}") }
}

/// `[ablation]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AblationSection {
    #[serde(default)]
    qk_norm: Vec<bool>,
    #[serde(default)]
    norm_placement: Vec<NormPlacement>,
    #[serde(default)]
    z_loss: Vec<f64>,
    #[serde(default)]
    dropout: Vec<f64>,
    #[serde(default)]
    learning_rate: Vec<f64>,
    #[serde(default)]
    seed: Vec<u64>,
    #[serde(default)]
    runs: Vec<Switches>,
}

/// One run of a grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridRun {
    /// Directory name, from the switches that vary.
    pub name: String,
    /// Every switch of this run.
    pub switches: Switches,
    /// The experiment this run trains.
    #[serde(skip)]
    pub experiment: Option<Experiment>,
}

impl GridRun {
    /// The experiment this run trains.
    pub fn experiment(&self) -> &Experiment {
        self.experiment.as_ref().expect("a loaded grid run carries its experiment")
    }
}

/// The grid of an experiment file.
#[derive(Debug, Clone)]
pub struct Grid {
    /// The file it came from.
    pub file: PathBuf,
    /// The runs, in the order they train.
    pub runs: Vec<GridRun>,
}

impl Grid {
    /// Reads an experiment file and expands its `[ablation]` section (none: a grid of one run).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let base = Experiment::load(path)?;
        let table = read_table(path)?;
        let section: AblationSection = match table.get("ablation") {
            None => AblationSection::default(),
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::new(path, format!("[ablation]: {}", e.message())))?,
        };
        let runs = expand(&section).map_err(|m| ConfigError::new(path, format!("[ablation]: {m}")))?;
        let mut grid = Vec::with_capacity(runs.len());
        let all: Vec<Switches> = runs.iter().map(|s| full(s, &base)).collect();
        for (i, switches) in all.iter().enumerate() {
            let exp = switches.apply(&base);
            exp.validate().map_err(|m| ConfigError::new(path, format!("[ablation] run {}: {m}", i + 1)))?;
            grid.push(GridRun { name: name_of(switches, &all), switches: switches.clone(), experiment: Some(exp) });
        }
        for (i, run) in grid.iter().enumerate() {
            if let Some(twin) = grid[..i].iter().find(|r| r.name == run.name) {
                return Err(ConfigError::new(
                    path,
                    format!(
                        "[ablation]: two runs have the same switches ({}): `{}`",
                        twin.switches.describe(),
                        run.name
                    ),
                ));
            }
        }
        Ok(Self { file: path.to_path_buf(), runs: grid })
    }
}

/// Every switch set: the run's own, else the base experiment's.
fn full(s: &Switches, base: &Experiment) -> Switches {
    let b = Switches::of(base);
    Switches {
        qk_norm: s.qk_norm.or(b.qk_norm),
        norm_placement: s.norm_placement.or(b.norm_placement),
        z_loss: s.z_loss.or(b.z_loss),
        dropout: s.dropout.or(b.dropout),
        learning_rate: s.learning_rate.or(b.learning_rate),
        seed: s.seed.or(b.seed),
    }
}

/// The name of `run`: the fragments of the switches that differ somewhere in `all`.
fn name_of(run: &Switches, all: &[Switches]) -> String {
    let frags = run.fragments();
    let varies = |i: usize| all.iter().any(|o| o.fragments()[i] != frags[i]);
    let parts: Vec<String> = (0..frags.len()).filter(|&i| varies(i)).filter_map(|i| frags[i].clone()).collect();
    if parts.is_empty() { "base".into() } else { parts.join("-") }
}

/// The explicit runs (or one empty run) crossed with every list.
fn expand(section: &AblationSection) -> Result<Vec<Switches>, String> {
    let mut runs = if section.runs.is_empty() { vec![Switches::default()] } else { section.runs.clone() };
    macro_rules! cross {
        ($field:ident) => {
            if !section.$field.is_empty() {
                if let Some(i) = runs.iter().position(|r| r.$field.is_some()) {
                    return Err(format!(
                        "`{}` is both a list and set in [[ablation.runs]] entry {}; use one or the other",
                        stringify!($field),
                        i + 1
                    ));
                }
                runs = runs
                    .iter()
                    .flat_map(|r| section.$field.iter().map(move |v| Switches { $field: Some(v.clone()), ..r.clone() }))
                    .collect();
            }
        };
    }
    cross!(qk_norm);
    cross!(norm_placement);
    cross!(z_loss);
    cross!(dropout);
    cross!(learning_rate);
    cross!(seed);
    for (i, r) in runs.iter().enumerate() {
        let bad =
            |what: &str, v: f64, ok: bool| (!ok).then(|| format!("run {}: `{what}` = {v} is out of range", i + 1));
        let checks = [
            r.z_loss.and_then(|z| bad("z_loss", z, z.is_finite() && z >= 0.0)),
            r.dropout.and_then(|d| bad("dropout", d, (0.0..1.0).contains(&d))),
            r.learning_rate.and_then(|l| bad("learning_rate", l, l.is_finite() && l > 0.0)),
        ];
        if let Some(m) = checks.into_iter().flatten().next() {
            return Err(m);
        }
    }
    Ok(runs)
}

/// What became of one run of the grid.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Run name.
    pub name: String,
    /// Final status (`failed` with the error when training could not go on).
    pub status: Status,
}

/// Trains every run of `grid` into `dir/<name>`, one after another. A run that diverges or fails
/// does not stop the others. Runs already `done` or `diverged` are skipped; `stopped` runs (and
/// runs whose process died) resume from their newest checkpoint. When `stop` is raised the
/// current run checkpoints and stops, and no further run starts. `options` gives every run its
/// progress bar and MFU peak (its `resume` and `stop` are set here).
pub fn run_grid(
    grid: &Grid,
    prepared: &Prepared,
    dir: &Path,
    device: &Device,
    stop: &Arc<AtomicBool>,
    options: &RunOptions,
) -> Result<Vec<Outcome>, TrainError> {
    let io = |p: &Path, e: std::io::Error| TrainError { path: p.to_path_buf(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let index = serde_json::json!({ "experiment": grid.file, "runs": grid.runs });
    let index_path = dir.join(GRID_FILE);
    std::fs::write(&index_path, serde_json::to_string_pretty(&index).unwrap_or_default())
        .map_err(|e| io(&index_path, e))?;
    let mut outcomes = Vec::new();
    for (i, run) in grid.runs.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let run_dir = dir.join(&run.name);
        let exp = run.experiment();
        let resume = match prior(&run_dir, exp, prepared)? {
            Prior::Finished(status) => {
                tracing::info!(
                    "[{}/{}] {}: already {} at step {}",
                    i + 1,
                    grid.runs.len(),
                    run.name,
                    status.state,
                    status.step
                );
                outcomes.push(Outcome { name: run.name.clone(), status });
                continue;
            }
            Prior::Resume => true,
            Prior::Fresh => false,
        };
        tracing::info!(
            "[{}/{}] {} ({}){}",
            i + 1,
            grid.runs.len(),
            run.name,
            run.switches.describe(),
            if resume { ": resuming" } else { "" }
        );
        let options = RunOptions { resume, stop: Some(stop.clone()), ..options.clone() };
        let status = match train(exp, prepared, &run_dir, device, &options) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{}: {e}", run.name);
                let status = Status { state: "failed".into(), step: 0, reason: Some(e.to_string()) };
                let _ = std::fs::write(
                    run_dir.join(STATUS_FILE),
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                );
                status
            }
        };
        tracing::info!(
            "[{}/{}] {}: {} at step {}{}",
            i + 1,
            grid.runs.len(),
            run.name,
            status.state,
            status.step,
            status.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
        outcomes.push(Outcome { name: run.name.clone(), status });
    }
    Ok(outcomes)
}

/// The end-of-grid summary, read back from the run directories under `dir`: a table with one
/// row per run (its final loss and the peak of each instability probe), then the paper's three
/// findings as measured on this grid ([`crate::findings`]).
pub fn summary(dir: &Path) -> Result<String, String> {
    use crate::monitor::{Metric, RunState, Watch};
    let watch = Watch::open(dir)?;
    let mut out = format!(
        "{:<28} {:<34} {:>13} {:>6} {:>8} {:>8} {:>12} {:>14} {:>14} {:>7}\n",
        "run", "switches", "status", "steps", "loss", "CE@end", "held-out CE", "max attn logit", "max out RMS", "log Z"
    );
    let num = |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"));
    let big = |v: Option<f64>| {
        v.map_or_else(|| "-".to_string(), |v| if v.abs() >= 1e4 { format!("{v:.2e}") } else { format!("{v:.1}") })
    };
    for r in &watch.runs {
        let status = match &r.state {
            RunState::Diverged(_) => format!("diverged@{}", r.status_step),
            s => s.word().to_string(),
        };
        let held_out = match r.last_eval() {
            Some((ce, None)) => format!("{ce:.4}"),
            Some((ce, Some(step))) => format!("{ce:.4}@{step}"),
            None => "-".to_string(),
        };
        out += &format!(
            "{:<28} {:<34} {:>13} {:>6} {:>8} {:>8} {:>12} {:>14} {:>14} {:>7}\n",
            r.name,
            r.switches,
            status,
            r.step(),
            num(r.last(Metric::Loss), 4),
            num(r.final_ce(), 4),
            held_out,
            big(r.max(Metric::MaxAttnLogit)),
            big(r.max(Metric::OutputRms)),
            num(r.last(Metric::LogZ), 2),
        );
    }
    out += "(loss: the last step's; CE@end: mean cross-entropy of the last 10 steps, without the z-loss term;\n \
            held-out CE: the last evaluation on the fixed held-out set, @step when not at the run's last step;\n \
            max attn logit and max out RMS: peaks over the run, max over layers; log Z: last step's mean)\n";
    out += "\nThe paper's findings, from pairs of runs that differ in one switch:\n";
    for f in crate::findings::findings(&watch.runs) {
        out += &f.render();
    }
    Ok(out)
}

enum Prior {
    Fresh,
    Resume,
    Finished(Status),
}

/// What a run directory already holds. A run trained from another config is refused rather than
/// silently mixed with this one.
fn prior(run_dir: &Path, exp: &Experiment, prepared: &Prepared) -> Result<Prior, TrainError> {
    let config = run_dir.join(CONFIG_FILE);
    if !run_dir.join(METRICS_FILE).exists() {
        return Ok(Prior::Fresh);
    }
    let want =
        resolve(exp, prepared, run_dir)?.to_toml().map_err(|m| TrainError { path: config.clone(), message: m })?;
    let Ok(have) = std::fs::read_to_string(&config) else {
        return Err(TrainError {
            path: run_dir.to_path_buf(),
            message: format!("holds metrics but no readable {CONFIG_FILE}; remove it or give another --runs-dir"),
        });
    };
    if have != want {
        return Err(TrainError {
            path: run_dir.to_path_buf(),
            message: "was trained from a different config than this grid's run of the same name; \
                      remove it or give another --runs-dir"
                .into(),
        });
    }
    let status: Option<Status> =
        std::fs::read_to_string(run_dir.join(STATUS_FILE)).ok().and_then(|t| serde_json::from_str(&t).ok());
    if let Some(s) = status.filter(|s| s.state == "done" || s.state == "diverged") {
        return Ok(Prior::Finished(s));
    }
    if crate::trainer::has_checkpoint(run_dir) {
        return Ok(Prior::Resume);
    }
    // Died (or failed) before its first checkpoint: start over.
    for f in [METRICS_FILE, STATUS_FILE] {
        let _ = std::fs::remove_file(run_dir.join(f));
    }
    Ok(Prior::Fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, ablation: &str) -> PathBuf {
        let smoke = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../experiments/smoke.toml")).unwrap();
        let path = dir.join("grid.toml");
        std::fs::write(&path, format!("{smoke}\n{ablation}")).unwrap();
        path
    }

    #[test]
    fn lists_make_the_cartesian_product_named_by_what_varies() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[ablation]\nqk_norm = [false, true]\nlearning_rate = [1e-2, 3e-1]\n");
        let grid = Grid::load(&path).unwrap();
        let names: Vec<&str> = grid.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["noqk-lr1e-2", "noqk-lr3e-1", "qk-lr1e-2", "qk-lr3e-1"]);
        let exp = grid.runs[1].experiment();
        assert!(!exp.model.qk_norm);
        assert_eq!(exp.optim.learning_rate, 0.3);
        // What the grid leaves alone comes from the base experiment.
        assert_eq!(exp.model.norm_placement, NormPlacement::Reordered);
        assert_eq!(grid.runs[1].switches.describe(), "noqk swin z1e-5 drop0 lr3e-1 seed0");
    }

    #[test]
    fn explicit_runs_are_crossed_with_the_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "[ablation]\nseed = [0, 1]\n\n[[ablation.runs]]\nqk_norm = false\nnorm_placement = \"PreNorm\"\nz_loss = 0.0\n\n\
             [[ablation.runs]]\ndropout = 0.1\n",
        );
        let grid = Grid::load(&path).unwrap();
        let names: Vec<&str> = grid.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "noqk-pre-z0-drop0-seed0",
                "noqk-pre-z0-drop0-seed1",
                "qk-swin-z1e-5-drop1e-1-seed0",
                "qk-swin-z1e-5-drop1e-1-seed1"
            ]
        );
        let e = grid.runs[3].experiment();
        assert_eq!((e.model.residual_dropout, e.model.attention_dropout, e.train.seed), (0.1, 0.1, 1));
    }

    #[test]
    fn bad_grids_are_refused_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[ablation]\nqk_norms = [true]\n", "qk_norms"),
            ("[ablation]\nlearning_rate = [0.0]\n", "learning_rate"),
            ("[ablation]\nseed = [1, 1]\n", "same switches"),
            ("[ablation]\nqk_norm = [true]\n[[ablation.runs]]\nqk_norm = false\n", "both a list"),
            ("[ablation]\nnorm_placement = [\"Sandwich\"]\n", "Sandwich"),
        ];
        for (text, needle) in cases {
            let path = write(dir.path(), text);
            let e = Grid::load(&path).unwrap_err().to_string();
            assert!(e.contains("grid.toml") && e.contains(needle), "{text:?} gave {e}");
        }
    }

    #[test]
    fn a_file_without_a_grid_is_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let grid = Grid::load(&write(dir.path(), "")).unwrap();
        assert_eq!(grid.runs.len(), 1);
        assert_eq!(grid.runs[0].name, "base");
    }
}
