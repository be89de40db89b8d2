//! The ablation grid: an experiment file's `[ablation]` section turns its base experiment into a
//! list of runs that differ only in the paper's stability switches (and the learning rate, the
//! seed and whether image codes carry loss).
//!
//! ```toml
//! [ablation]
//! # Lists, whose cartesian product is the grid …
//! learning_rate = [1e-2, 1e-1]
//! seed = [0, 1, 2]
//! # … crossed with explicit runs. A run that sets a switch itself (one value or a list) is not
//! # crossed with the section's list of that switch: here the second run trains at 1e-1 only.
//! [[ablation.runs]]
//! qk_norm = [false, true]
//! norm_placement = "PreNorm"
//! z_loss = 0.0
//! [[ablation.runs]]
//! qk_norm = true
//! dropout = 0.1
//! learning_rate = 1e-1
//! ```
//!
//! Run names come from the switches that vary across the grid, e.g. `noqk-pre-z0-lr1e-1-seed0`.
//! [`run_grid`] trains the runs into `DIR/<name>`, one or several at a time; a run that diverges or
//! fails is recorded and the next one starts. Running it again skips finished runs and resumes stopped
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
use crate::run_dir::{CONFIG_FILE, METRICS_FILE, STATUS_FILE, State, Status, read_status};
use crate::trainer::{RunOptions, TrainError, resolve, train};

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
    /// Whether image-code targets carry loss (`false`: images are read, never generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_loss: Option<bool>,
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
            image_loss: Some(exp.train.image_loss),
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
        if let Some(v) = self.image_loss {
            exp.train.image_loss = v;
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
    /// `drop1e-1`, `imgloss`/`noimgloss`, `lr3e-1`, `seed1`.
    fn fragments(&self) -> [Option<String>; 7] {
        [
            self.qk_norm.map(|q| if q { "qk" } else { "noqk" }.to_string()),
            self.norm_placement.map(|p| match p {
                NormPlacement::PreNorm => "pre".to_string(),
                NormPlacement::Reordered => "swin".to_string(),
            }),
            self.z_loss.map(|z| format!("z{}", short(z))),
            self.dropout.map(|d| format!("drop{}", short(d))),
            self.image_loss.map(|i| if i { "imgloss" } else { "noimgloss" }.to_string()),
            self.learning_rate.map(|l| format!("lr{}", short(l))),
            self.seed.map(|s| format!("seed{s}")),
        ]
    }

    /// All switches, e.g. `noqk pre z0 drop0 imgloss lr1e-1 seed0` (for tables).
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
    image_loss: Vec<bool>,
    #[serde(default)]
    learning_rate: Vec<f64>,
    #[serde(default)]
    seed: Vec<u64>,
    /// Learning rates from this one up are where the findings are claimed.
    #[serde(default)]
    high_learning_rate: Option<f64>,
    #[serde(default)]
    runs: Vec<toml::Table>,
}

/// One `[[ablation.runs]]` entry: each switch it sets, as one value or a list (crossed).
#[derive(Debug, Clone, Default)]
struct RunEntry {
    qk_norm: Option<Vec<bool>>,
    norm_placement: Option<Vec<NormPlacement>>,
    z_loss: Option<Vec<f64>>,
    dropout: Option<Vec<f64>>,
    image_loss: Option<Vec<bool>>,
    learning_rate: Option<Vec<f64>>,
    seed: Option<Vec<u64>>,
}

impl RunEntry {
    /// Entry `i` (0-based) as written; a bad value is named by entry and key.
    fn parse(i: usize, table: &toml::Table) -> Result<Self, String> {
        fn list<T: serde::de::DeserializeOwned>(v: &toml::Value) -> Result<Vec<T>, String> {
            let items = match v {
                toml::Value::Array(a) => a.clone(),
                one => vec![one.clone()],
            };
            items.into_iter().map(|x| x.try_into().map_err(|e: toml::de::Error| e.message().to_string())).collect()
        }
        let mut e = Self::default();
        for (key, value) in table {
            let at = |m: String| format!("[[ablation.runs]] entry {}: `{key}`: {m}", i + 1);
            match key.as_str() {
                "qk_norm" => e.qk_norm = Some(list(value).map_err(at)?),
                "norm_placement" => e.norm_placement = Some(list(value).map_err(at)?),
                "z_loss" => e.z_loss = Some(list(value).map_err(at)?),
                "dropout" => e.dropout = Some(list(value).map_err(at)?),
                "image_loss" => e.image_loss = Some(list(value).map_err(at)?),
                "learning_rate" => e.learning_rate = Some(list(value).map_err(at)?),
                "seed" => e.seed = Some(list(value).map_err(at)?),
                other => {
                    return Err(format!(
                        "[[ablation.runs]] entry {}: unknown switch `{other}`; known: qk_norm, norm_placement, z_loss, \
                         dropout, image_loss, learning_rate, seed",
                        i + 1
                    ));
                }
            }
        }
        Ok(e)
    }
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
    /// `[ablation] high_learning_rate`: the findings are claimed at learning rates from this
    /// one up (where the paper's instabilities live); `None`: at every learning rate.
    pub high_learning_rate: Option<f64>,
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
        if let Some(h) = section.high_learning_rate.filter(|h| !(h.is_finite() && *h > 0.0)) {
            return Err(ConfigError::new(path, format!("[ablation]: `high_learning_rate` = {h} must be positive")));
        }
        Ok(Self { file: path.to_path_buf(), runs: grid, high_learning_rate: section.high_learning_rate })
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
        image_loss: s.image_loss.or(b.image_loss),
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

/// Each explicit run (or one empty run) as the product of its own values, with the section's
/// list standing in for every switch the run does not set.
fn expand(section: &AblationSection) -> Result<Vec<Switches>, String> {
    let entries = if section.runs.is_empty() {
        vec![RunEntry::default()]
    } else {
        section.runs.iter().enumerate().map(|(i, t)| RunEntry::parse(i, t)).collect::<Result<_, _>>()?
    };
    let mut runs = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let mut these = vec![Switches::default()];
        macro_rules! cross {
            ($field:ident) => {
                let values = entry.$field.clone().unwrap_or_else(|| section.$field.clone());
                if entry.$field.is_some() && values.is_empty() {
                    return Err(format!(
                        "[[ablation.runs]] entry {}: `{}` is an empty list",
                        i + 1,
                        stringify!($field)
                    ));
                }
                if !values.is_empty() {
                    these = these
                        .iter()
                        .flat_map(|r| values.iter().map(move |v| Switches { $field: Some(v.clone()), ..r.clone() }))
                        .collect();
                }
            };
        }
        cross!(qk_norm);
        cross!(norm_placement);
        cross!(z_loss);
        cross!(dropout);
        cross!(image_loss);
        cross!(learning_rate);
        cross!(seed);
        runs.extend(these);
    }
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

/// Trains one run of a grid: in this process ([`InProcess`]), or in a worker process (the CLI
/// starts one per job, so that runs on the same CPU train side by side, each with its own
/// process-wide RNG).
pub trait Launcher: Sync {
    /// Trains `run` into `run_dir` (continuing from its newest checkpoint with `resume`) until it
    /// ends, or until `stop` is raised, when it checkpoints and stops.
    fn launch(&self, run: &GridRun, run_dir: &Path, resume: bool, stop: &Arc<AtomicBool>)
    -> Result<Status, TrainError>;
}

/// Trains runs in this process, on one device (or its replicas). Use it with one job: runs in
/// one process share burn's process-wide RNG, and would draw from it in no fixed order.
pub struct InProcess<'a> {
    /// The grid's prepared data.
    pub prepared: &'a Prepared,
    /// The device.
    pub device: &'a Device,
    /// Progress bar, MFU peak, replicas (`resume` and `stop` are set per run).
    pub options: &'a RunOptions,
}

impl Launcher for InProcess<'_> {
    fn launch(
        &self,
        run: &GridRun,
        run_dir: &Path,
        resume: bool,
        stop: &Arc<AtomicBool>,
    ) -> Result<Status, TrainError> {
        let options = RunOptions { resume, stop: Some(stop.clone()), ..self.options.clone() };
        train(run.experiment(), self.prepared, run_dir, self.device, &options)
    }
}

/// Trains every run of `grid` into `dir/<name>`, `jobs` at a time, in grid order. A run that
/// diverges or fails does not stop the others. Runs already `done` or `diverged` are skipped;
/// `stopped` runs (and runs whose process died) resume from their newest checkpoint. When `stop`
/// is raised the current runs checkpoint and stop, and no further run starts. Returns the
/// outcomes in grid order (runs that never started are left out).
pub fn run_grid(
    grid: &Grid,
    prepared: &Prepared,
    dir: &Path,
    stop: &Arc<AtomicBool>,
    jobs: usize,
    launcher: &dyn Launcher,
) -> Result<Vec<Outcome>, TrainError> {
    let io = |p: &Path, e: std::io::Error| TrainError { path: p.to_path_buf(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let _lock = crate::run_lock::RunLock::acquire(dir, "ablate")
        .map_err(|message| TrainError { path: dir.to_path_buf(), message })?;
    let index = serde_json::json!({
        "experiment": grid.file,
        "high_learning_rate": grid.high_learning_rate,
        "runs": grid.runs,
    });
    let index_path = dir.join(GRID_FILE);
    std::fs::write(&index_path, serde_json::to_string_pretty(&index).unwrap_or_default())
        .map_err(|e| io(&index_path, e))?;
    let n = grid.runs.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let outcomes = std::sync::Mutex::new(vec![None; n]);
    let refused = std::sync::Mutex::new(None);
    let worker = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n || stop.load(Ordering::Relaxed) || refused.lock().is_ok_and(|r| r.is_some()) {
                return;
            }
            match one(grid, i, prepared, dir, stop, launcher) {
                Ok(outcome) => {
                    if let Ok(mut o) = outcomes.lock() {
                        o[i] = Some(outcome);
                    }
                }
                Err(e) => {
                    if let Ok(mut r) = refused.lock() {
                        r.get_or_insert(e);
                    }
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, n.max(1)) {
            scope.spawn(worker);
        }
    });
    if let Some(e) = refused.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(outcomes.into_inner().unwrap_or_default().into_iter().flatten().collect())
}

/// Trains run `i` of the grid (or finds it finished).
fn one(
    grid: &Grid,
    i: usize,
    prepared: &Prepared,
    dir: &Path,
    stop: &Arc<AtomicBool>,
    launcher: &dyn Launcher,
) -> Result<Outcome, TrainError> {
    let run = &grid.runs[i];
    let n = grid.runs.len();
    let run_dir = dir.join(&run.name);
    let resume = match prior(&run_dir, run.experiment(), prepared)? {
        Prior::Finished(status) => {
            tracing::info!("[{}/{n}] {}: already {} at step {}", i + 1, run.name, status.state, status.step);
            return Ok(Outcome { name: run.name.clone(), status });
        }
        Prior::Resume => true,
        Prior::Fresh => false,
    };
    tracing::info!(
        "[{}/{n}] {} ({}){}",
        i + 1,
        run.name,
        run.switches.describe(),
        if resume { ": resuming" } else { "" }
    );
    let status = match launcher.launch(run, &run_dir, resume, stop) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{}: {e}", run.name);
            let status = Status { state: State::Failed, step: 0, reason: Some(e.to_string()) };
            let _ = std::fs::create_dir_all(&run_dir);
            let _ =
                std::fs::write(run_dir.join(STATUS_FILE), serde_json::to_string_pretty(&status).unwrap_or_default());
            status
        }
    };
    tracing::info!(
        "[{}/{n}] {}: {} at step {}{}",
        i + 1,
        run.name,
        status.state,
        status.step,
        status.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
    );
    Ok(Outcome { name: run.name.clone(), status })
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
    if let Some(s) = read_status(run_dir).filter(|s| s.state.ended()) {
        return Ok(Prior::Finished(s));
    }
    if crate::trainer::has_checkpoint(run_dir) {
        return Ok(Prior::Resume);
    }
    // Died (or failed) before its first checkpoint: `train` starts it over.
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
        assert_eq!(grid.runs[1].switches.describe(), "noqk swin z1e-5 drop0 imgloss lr3e-1 seed0");
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
            ("[ablation]\n[[ablation.runs]]\nseed = []\n", "empty list"),
            ("[ablation]\n[[ablation.runs]]\nimage_loss = 1\n", "entry 1: `image_loss`"),
            ("[ablation]\n[[ablation.runs]]\nlearning_rate = [0.1, \"x\"]\n", "`learning_rate`"),
            ("[ablation]\n[[ablation.runs]]\nqk_nrom = true\n", "unknown switch `qk_nrom`"),
            ("[ablation]\nnorm_placement = [\"Sandwich\"]\n", "Sandwich"),
        ];
        for (text, needle) in cases {
            let path = write(dir.path(), text);
            let e = Grid::load(&path).unwrap_err().to_string();
            assert!(e.contains("grid.toml") && e.contains(needle), "{text:?} gave {e}");
        }
    }

    #[test]
    fn a_run_that_sets_a_switch_itself_is_not_crossed_with_its_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "[ablation]\nlearning_rate = [1e-2, 1e-1]\nseed = [0, 1]\n\n\
             [[ablation.runs]]\nqk_norm = [false, true]\n\n\
             [[ablation.runs]]\nqk_norm = false\nimage_loss = false\nlearning_rate = 1e-1\n",
        );
        let grid = Grid::load(&path).unwrap();
        let names: Vec<&str> = grid.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "noqk-imgloss-lr1e-2-seed0",
                "noqk-imgloss-lr1e-2-seed1",
                "noqk-imgloss-lr1e-1-seed0",
                "noqk-imgloss-lr1e-1-seed1",
                "qk-imgloss-lr1e-2-seed0",
                "qk-imgloss-lr1e-2-seed1",
                "qk-imgloss-lr1e-1-seed0",
                "qk-imgloss-lr1e-1-seed1",
                "noqk-noimgloss-lr1e-1-seed0",
                "noqk-noimgloss-lr1e-1-seed1",
            ]
        );
        let e = grid.runs[9].experiment();
        assert!(!e.train.image_loss && !e.model.qk_norm);
        assert_eq!((e.optim.learning_rate, e.train.seed), (0.1, 1));
    }

    #[test]
    fn a_file_without_a_grid_is_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let grid = Grid::load(&write(dir.path(), "")).unwrap();
        assert_eq!(grid.runs.len(), 1);
        assert_eq!(grid.runs[0].name, "base");
    }
}
