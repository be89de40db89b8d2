//! Reading run directories while other threads or processes write them: `status.json`,
//! `config.toml`, and `metrics.jsonl` followed from where the last read stopped. A half-written
//! last line waits for its newline; a file that shrinks or repeats steps (a resumed run rewrites
//! the steps after its checkpoint) replaces what was read before.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::ablation::{GRID_FILE, GridRun, Switches};
use crate::experiment::Experiment;
use crate::run_dir::{CONFIG_FILE, METRICS_FILE, STATUS_FILE, State, read_status};
use crate::run_lock::{LOCK_FILE, RunLock};

/// The metrics the chart can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Training loss (CE + z-loss).
    Loss,
    /// Max attention logit over layers.
    MaxAttnLogit,
    /// Block-output RMS, the max over layers.
    OutputRms,
    /// Mean log Z of the output softmax.
    LogZ,
    /// Global gradient norm before clipping.
    GradNorm,
    /// Learning rate.
    Lr,
    /// Cross-entropy per source of the highlighted run (per SFT category in fine-tuning).
    LossBySource,
    /// Cross-entropy on the fixed held-out set (every `eval_every` steps).
    EvalCe,
    /// Attention entropy of the least spread-out head, the min over layers.
    AttnEntropy,
}

impl Metric {
    /// Every metric, in the order the keys 1–9 pick them.
    pub const ALL: [Metric; 9] = [
        Metric::Loss,
        Metric::MaxAttnLogit,
        Metric::OutputRms,
        Metric::LogZ,
        Metric::GradNorm,
        Metric::Lr,
        Metric::LossBySource,
        Metric::EvalCe,
        Metric::AttnEntropy,
    ];

    /// Title in the chart.
    pub fn title(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::MaxAttnLogit => "max attention logit",
            Metric::OutputRms => "block-output RMS (max over layers)",
            Metric::LogZ => "log Z (mean)",
            Metric::GradNorm => "grad norm",
            Metric::Lr => "learning rate",
            Metric::LossBySource => "cross-entropy per source (highlighted run)",
            Metric::EvalCe => "held-out cross-entropy",
            Metric::AttnEntropy => "attention entropy (min over heads and layers)",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&m| m == self).unwrap_or(0)
    }

    fn read(self, row: &serde_json::Value) -> f64 {
        let get = |k: &str| row[k].as_f64();
        let v = match self {
            Metric::Loss => get("loss"),
            Metric::MaxAttnLogit => get("max_attn_logit"),
            Metric::OutputRms => {
                row["output_rms"].as_array().and_then(|a| a.iter().filter_map(|x| x.as_f64()).reduce(f64::max))
            }
            Metric::LogZ => get("log_z_mean"),
            Metric::GradNorm => get("grad_norm"),
            Metric::Lr => get("lr"),
            // One series per source: see `Point::by_source`.
            Metric::LossBySource => None,
            Metric::EvalCe => get("eval_ce"),
            Metric::AttnEntropy => get("min_attn_entropy"),
        };
        v.unwrap_or(f64::NAN)
    }
}

/// One metrics row, reduced to what the monitor shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Optimizer step.
    pub step: usize,
    /// Tokens seen.
    pub tokens: f64,
    /// Throughput of this step.
    pub tokens_per_s: f64,
    /// Cross-entropy alone (the loss less the z-loss term; NaN when absent).
    pub ce: f64,
    /// Cross-entropy on text targets and on image targets (NaN when absent).
    pub ce_text: f64,
    /// See `ce_text`.
    pub ce_image: f64,
    /// Held-out cross-entropy on text and on image targets, where this step evaluated (NaN
    /// otherwise).
    pub eval_ce_text: f64,
    /// See `eval_ce_text`.
    pub eval_ce_image: f64,
    /// Cross-entropy per source (`ce_by_source`; empty for single-source runs).
    pub by_source: Vec<(String, f64)>,
    /// Whether this step evaluated on the held-out set (`eval_ce` present, even as null: a
    /// non-finite result).
    pub evaluated: bool,
    values: [f64; 9],
}

impl Point {
    fn parse(line: &str) -> Option<Self> {
        let row: serde_json::Value = serde_json::from_str(line).ok()?;
        let step = row["step"].as_u64()? as usize;
        Some(Self {
            step,
            tokens: row["tokens"].as_f64().unwrap_or(0.0),
            tokens_per_s: row["tokens_per_s"].as_f64().unwrap_or(0.0),
            ce: row["ce"].as_f64().unwrap_or(f64::NAN),
            ce_text: row["ce_text"].as_f64().unwrap_or(f64::NAN),
            ce_image: row["ce_image"].as_f64().unwrap_or(f64::NAN),
            eval_ce_text: row["eval_ce_text"].as_f64().unwrap_or(f64::NAN),
            eval_ce_image: row["eval_ce_image"].as_f64().unwrap_or(f64::NAN),
            by_source: row["ce_by_source"]
                .as_object()
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
                .unwrap_or_default(),
            evaluated: row.get("eval_ce").is_some(),
            values: Metric::ALL.map(|m| m.read(&row)),
        })
    }

    /// The value of `metric` (NaN when the row lacks it).
    pub fn value(&self, metric: Metric) -> f64 {
        self.values[metric.index()]
    }
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Not started.
    Queued,
    /// Training (or its process died without a word).
    Running,
    /// All steps done.
    Done,
    /// Stopped on request or by `--max-steps`; resumable.
    Stopped,
    /// Non-finite loss or gradient.
    Diverged(String),
    /// An error ended it.
    Failed(String),
}

impl RunState {
    /// One word for tables.
    pub fn word(&self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Stopped => "stopped",
            RunState::Diverged(_) => "diverged",
            RunState::Failed(_) => "failed",
        }
    }
}

/// A run directory as last read.
#[derive(Debug, Clone)]
pub struct RunView {
    /// Run name (the directory name).
    pub name: String,
    /// The directory.
    pub dir: PathBuf,
    /// Its switches, e.g. `noqk pre z0 drop0 lr1e-1 seed0`.
    pub switches: String,
    /// The same, as values (from the grid index or the run's config).
    pub switch_values: Option<Switches>,
    /// Steps the run is configured for.
    pub total_steps: Option<usize>,
    /// Status.
    pub state: RunState,
    /// Step of the status file (the divergence step for a diverged run).
    pub status_step: usize,
    /// Metrics so far.
    pub points: Vec<Point>,
    offset: u64,
    pending: Vec<u8>,
}

impl RunView {
    /// A view of `dir` (nothing is read until [`RunView::refresh`]).
    pub fn new(name: impl Into<String>, dir: PathBuf, switches: Option<&Switches>) -> Self {
        Self {
            name: name.into(),
            dir,
            switches: switches.map(Switches::describe).unwrap_or_default(),
            switch_values: switches.cloned(),
            total_steps: None,
            state: RunState::Queued,
            status_step: 0,
            points: Vec::new(),
            offset: 0,
            pending: Vec::new(),
        }
    }

    /// Reads what is new: config (once), status, and metrics lines completed since last time.
    pub fn refresh(&mut self) {
        if self.total_steps.is_none()
            && self.dir.join(CONFIG_FILE).is_file()
            && let Ok(exp) = Experiment::load(&self.dir.join(CONFIG_FILE))
        {
            self.total_steps = Some(exp.train.steps);
            if self.switch_values.is_none() {
                self.switches = Switches::of(&exp).describe();
                self.switch_values = Some(Switches::of(&exp));
            }
        }
        self.read_metrics();
        self.state = match read_status(&self.dir) {
            None if self.points.is_empty() => RunState::Queued,
            None => RunState::Running,
            Some(s) => {
                self.status_step = s.step;
                let reason = s.reason.unwrap_or_default();
                match s.state {
                    State::Done => RunState::Done,
                    State::Stopped => RunState::Stopped,
                    State::Diverged => RunState::Diverged(reason),
                    State::Failed => RunState::Failed(reason),
                    // A run lock that names no living process: killed, or out of memory.
                    _ if self.dir.join(LOCK_FILE).exists() && !RunLock::holder_alive(&self.dir) => {
                        RunState::Failed("its process ended without a word (killed?); resume it".into())
                    }
                    _ => RunState::Running,
                }
            }
        };
    }

    fn read_metrics(&mut self) {
        let path = self.dir.join(METRICS_FILE);
        let Ok(mut file) = std::fs::File::open(&path) else { return };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Rewritten (a resume keeps only the steps up to its checkpoint): read it again.
            self.offset = 0;
            self.pending.clear();
            self.points.clear();
        }
        if len == self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut fresh = Vec::new();
        if file.take(len - self.offset).read_to_end(&mut fresh).is_err() {
            return;
        }
        self.offset += fresh.len() as u64;
        self.pending.extend_from_slice(&fresh);
        // Only whole lines; a half-written last line stays pending until its newline arrives.
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else { return };
        let complete: Vec<u8> = self.pending.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            if let Some(p) = Point::parse(line) {
                if self.points.last().is_some_and(|last| last.step >= p.step) {
                    self.points.retain(|q| q.step < p.step);
                }
                self.points.push(p);
            }
        }
    }

    /// Running, with its metrics or status written in the last ten minutes.
    pub fn live(&self) -> bool {
        let recent = |f: &str| {
            std::fs::metadata(self.dir.join(f))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() < 600)
        };
        self.state == RunState::Running && (recent(METRICS_FILE) || recent(STATUS_FILE))
    }

    /// Steps done.
    pub fn step(&self) -> usize {
        self.points.last().map_or(0, |p| p.step)
    }

    /// Latest value of `metric`.
    pub fn last(&self, metric: Metric) -> Option<f64> {
        self.points.last().map(|p| p.value(metric)).filter(|v| v.is_finite())
    }

    /// The step of the last held-out evaluation (its `eval_ce` is NaN when it was not finite),
    /// and that step again when the run went on after it (or stopped without evaluating at its
    /// last step).
    pub fn last_eval(&self) -> Option<(&Point, Option<usize>)> {
        let p = self.points.iter().rev().find(|p| p.evaluated)?;
        Some((p, (p.step != self.step()).then_some(p.step)))
    }

    /// Cross-entropy at the end: the mean over the last 10 steps (one batch is noisy), without
    /// the z-loss term so that runs with and without z-loss compare.
    pub fn final_ce(&self) -> Option<f64> {
        self.tail_mean(|p| p.ce)
    }

    /// The mean of the finite values of the last 10 steps.
    pub fn tail_mean(&self, value: impl Fn(&Point) -> f64) -> Option<f64> {
        let tail: Vec<f64> =
            self.points[self.points.len().saturating_sub(10)..].iter().map(value).filter(|v| v.is_finite()).collect();
        (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64)
    }

    /// First value of `metric`.
    pub fn first(&self, metric: Metric) -> Option<f64> {
        self.points.first().map(|p| p.value(metric)).filter(|v| v.is_finite())
    }

    /// Smallest value of `metric` so far.
    pub fn min(&self, metric: Metric) -> Option<f64> {
        self.points.iter().map(|p| p.value(metric)).filter(|v| v.is_finite()).reduce(f64::min)
    }

    /// Largest value of `metric` so far.
    pub fn max(&self, metric: Metric) -> Option<f64> {
        self.points.iter().map(|p| p.value(metric)).filter(|v| v.is_finite()).reduce(f64::max)
    }

    /// Mean throughput over the last 10 steps.
    pub fn tokens_per_s(&self) -> Option<f64> {
        let tail = &self.points[self.points.len().saturating_sub(10)..];
        (!tail.is_empty()).then(|| tail.iter().map(|p| p.tokens_per_s).sum::<f64>() / tail.len() as f64)
    }

    /// Seconds left at the current throughput, while running.
    pub fn eta_s(&self) -> Option<f64> {
        if self.state != RunState::Running {
            return None;
        }
        let last = self.points.last()?;
        let per_step = last.tokens / last.step.max(1) as f64;
        let left = self.total_steps?.saturating_sub(last.step) as f64;
        self.tokens_per_s().filter(|&t| t > 0.0).map(|t| left * per_step / t)
    }
}

/// The runs under a directory, in a stable order.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The directory watched.
    pub dir: PathBuf,
    /// Its runs.
    pub runs: Vec<RunView>,
}

impl Watch {
    /// Watches `dir`: a grid directory (with `grid.json`, runs in grid order, queued ones
    /// included), a single run directory, or a folder of run directories (new ones are picked up
    /// as they appear).
    pub fn open(dir: &Path) -> Result<Self, String> {
        if !dir.is_dir() {
            return Err(format!("{}: no such directory", dir.display()));
        }
        let mut watch = Self { dir: dir.to_path_buf(), runs: Vec::new() };
        watch.discover();
        if watch.runs.is_empty() {
            return Err(format!(
                "{}: no runs here (expected {GRID_FILE}, a {METRICS_FILE}, or run directories holding one)",
                dir.display()
            ));
        }
        watch.refresh();
        Ok(watch)
    }

    fn discover(&mut self) {
        let grid: Option<Vec<GridRun>> = std::fs::read_to_string(self.dir.join(GRID_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| serde_json::from_value(v["runs"].clone()).ok());
        let mut found: Vec<(String, PathBuf, Option<Switches>)> = Vec::new();
        if let Some(runs) = grid {
            found = runs.into_iter().map(|r| (r.name.clone(), self.dir.join(&r.name), Some(r.switches))).collect();
        } else if is_run(&self.dir) {
            let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            found.push((name, self.dir.clone(), None));
        } else if let Ok(entries) = std::fs::read_dir(&self.dir) {
            let mut dirs: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_run(p)).collect();
            dirs.sort();
            found = dirs
                .into_iter()
                .map(|p| (p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), p, None))
                .collect();
        }
        for (name, dir, switches) in found {
            if !self.runs.iter().any(|r| r.dir == dir) {
                self.runs.push(RunView::new(name, dir, switches.as_ref()));
            }
        }
    }

    /// Reads what changed, and picks up runs that appeared.
    pub fn refresh(&mut self) {
        self.discover();
        for run in &mut self.runs {
            run.refresh();
        }
    }

    /// Whether training is going on: some run is `running` and wrote to its directory in the last
    /// ten minutes (a run whose process was killed stays `running` on disk, but goes quiet).
    /// Queued runs wait on a live one, so they do not count by themselves.
    pub fn active(&self) -> bool {
        self.runs.iter().any(RunView::live)
    }
}

fn is_run(dir: &Path) -> bool {
    dir.join(METRICS_FILE).is_file() || dir.join(STATUS_FILE).is_file()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn row(step: usize, loss: f64) -> String {
        format!(
            "{{\"step\":{step},\"tokens\":{},\"loss\":{loss},\"tokens_per_s\":100.0,\"output_rms\":[1.0,{loss}]}}\n",
            step * 10
        )
    }

    #[test]
    fn a_half_written_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let mut view = RunView::new("r", dir.path().to_path_buf(), None);
        let full = row(1, 5.0) + &row(2, 4.0);
        let cut = full.len() - 7;
        std::fs::write(&path, &full[..cut]).unwrap();
        view.refresh();
        assert_eq!(view.points.len(), 1);
        assert_eq!(view.state, RunState::Running);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&full.as_bytes()[cut..]).unwrap();
        view.refresh();
        assert_eq!(view.points.iter().map(|p| p.step).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(view.last(Metric::Loss), Some(4.0));
        assert_eq!(view.max(Metric::OutputRms), Some(5.0));
    }

    #[test]
    fn a_rewritten_file_replaces_the_steps_it_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        std::fs::write(&path, row(1, 5.0) + &row(2, 4.0) + &row(3, 3.0)).unwrap();
        let mut view = RunView::new("r", dir.path().to_path_buf(), None);
        view.refresh();
        // A resume from the step-1 checkpoint keeps step 1 and writes steps 2.. again.
        std::fs::write(&path, row(1, 5.0)).unwrap();
        view.refresh();
        assert_eq!(view.step(), 1);
        std::fs::write(&path, row(1, 5.0) + &row(2, 4.5) + &row(3, 3.5) + &row(4, 3.0)).unwrap();
        view.refresh();
        let losses: Vec<f64> = view.points.iter().map(|p| p.value(Metric::Loss)).collect();
        assert_eq!(losses, [5.0, 4.5, 3.5, 3.0]);
        // Appended lines that go back in steps (a second writer) also replace.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(row(3, 9.0).as_bytes()).unwrap();
        view.refresh();
        assert_eq!(view.points.iter().map(|p| p.step).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(view.last(Metric::Loss), Some(9.0));
    }

    #[test]
    fn status_files_set_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut view = RunView::new("r", dir.path().to_path_buf(), None);
        view.refresh();
        assert_eq!(view.state, RunState::Queued);
        std::fs::write(dir.path().join(METRICS_FILE), row(1, 5.0)).unwrap();
        std::fs::write(
            dir.path().join(STATUS_FILE),
            r#"{"state":"diverged","step":7,"reason":"non-finite loss at step 7"}"#,
        )
        .unwrap();
        view.refresh();
        assert_eq!(view.state, RunState::Diverged("non-finite loss at step 7".into()));
        assert_eq!(view.status_step, 7);
    }

    #[test]
    fn a_folder_of_runs_is_watched_and_new_runs_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Watch::open(dir.path()).unwrap_err().contains("no runs here"));
        for name in ["b", "a"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join(METRICS_FILE), row(1, 5.0)).unwrap();
        }
        let mut watch = Watch::open(dir.path()).unwrap();
        assert_eq!(watch.runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        std::fs::create_dir(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c").join(STATUS_FILE), r#"{"state":"running","step":0}"#).unwrap();
        watch.refresh();
        assert_eq!(watch.runs.len(), 3);
        assert!(watch.active());
        // A run left `running` by a killed process goes quiet: after ten minutes it no longer
        // counts as active.
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for file in [
            dir.path().join("a").join(METRICS_FILE),
            dir.path().join("b").join(METRICS_FILE),
            dir.path().join("c").join(STATUS_FILE),
        ] {
            std::fs::File::options().write(true).open(file).unwrap().set_modified(hour_ago).unwrap();
        }
        watch.refresh();
        assert_eq!(watch.runs[2].state, RunState::Running);
        assert!(!watch.active());
        // A single run directory is a watch of one.
        let one = Watch::open(&dir.path().join("a")).unwrap();
        assert_eq!(one.runs.len(), 1);
    }
}
