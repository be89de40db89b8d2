//! `cargo xtask ablate [FILE]` and `cargo xtask monitor DIR`: the stability grid, live.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow};
use burn::tensor::Device;
use chameleon_eval::ablation::summary;
use chameleon_train::ablation::{Grid, GridRun, InProcess, Launcher, run_grid};
use chameleon_train::monitor::{self, Watch};
use chameleon_train::run_dir::{State, Status, read_status};
use chameleon_train::speed::Peak;
use chameleon_train::trainer::{RunOptions, TrainError, train};

use crate::data::prepare_data;
use crate::live::monitored;

/// The default grid.
pub const DEFAULT_GRID: &str = "experiments/stability.toml";

/// The grid's log while the monitor owns the terminal.
const LOG: &str = "ablate.log";

/// Runs the grid of `file` into `runs_dir` (default `runs/<file stem>`), `jobs` runs at a time,
/// with the live monitor on a terminal and plain progress lines otherwise, then prints the
/// summary and writes the report.
pub fn run(
    file: Option<&Path>,
    runs_dir: Option<&Path>,
    no_tui: bool,
    cache: &Path,
    jobs: Option<usize>,
    device: &Device,
    spec: &str,
) -> Result<()> {
    let file = file.map_or_else(|| PathBuf::from(DEFAULT_GRID), Path::to_path_buf);
    let grid = Grid::load(&file)?;
    let dir = runs_dir.map_or_else(
        || PathBuf::from("runs").join(file.file_stem().and_then(|s| s.to_str()).unwrap_or("grid")),
        Path::to_path_buf,
    );
    let jobs = match jobs {
        Some(0) => anyhow::bail!("--jobs 0: give at least 1"),
        Some(j) => j,
        // One run per core on the CPU; a GPU (or a list of them) trains one run at a time.
        None if matches!(spec.trim(), "cpu" | "flex") => std::thread::available_parallelism().map_or(1, |n| n.get()),
        None => 1,
    }
    .min(grid.runs.len());
    println!("{}: {} runs into {}, {jobs} at a time", file.display(), grid.runs.len(), dir.display());
    // The switches never touch [data], so every run shares one prepared folder.
    let prepared = prepare_data(&grid.runs[0].experiment().data, cache, false, device)?;
    let precision = grid.runs[0].experiment().train.precision;
    let options = crate::device::training(spec, precision, device)?;
    let tui = !no_tui && monitor::has_terminal();
    let workers = Workers {
        file: file.clone(),
        dir: dir.clone(),
        cache: cache.to_path_buf(),
        device: spec.to_string(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()).div_ceil(jobs).max(1),
        log: tui.then(|| dir.join(LOG)),
        peak: options.peak.clone(),
    };
    let (grid2, dir2, device2) = (grid.clone(), dir.clone(), device.clone());
    let outcomes = monitored(&dir, LOG, tui, move |stop| {
        let in_process = InProcess { prepared: &prepared, device: &device2, options: &options };
        let launcher: &dyn Launcher = if jobs > 1 { &workers } else { &in_process };
        Ok(run_grid(&grid2, &prepared, &dir2, &stop, jobs, launcher)?)
    })?;
    let stopped = outcomes.len() < grid.runs.len() || outcomes.iter().any(|o| o.status.state == State::Stopped);
    let ended = outcomes.iter().any(|o| o.status.state.ended());
    if ended {
        let table = summary(&dir).map_err(|e| anyhow!(e))?;
        let path = dir.join("summary.txt");
        std::fs::write(&path, &table).with_context(|| format!("{}: cannot write", path.display()))?;
        println!("\n{table}\n(also in {})", path.display());
        report(&dir, None)?;
    }
    if stopped {
        println!("stopped early: run `cargo xtask ablate {}` again to resume", file.display());
    }
    Ok(())
}

/// Trains each run in a worker process of this executable (`grid-worker`), so that several runs
/// train side by side, each with its own process-wide RNG (burn's, which dropout and
/// initialisation draw from): a run trains to the same bits as it would alone.
struct Workers {
    file: PathBuf,
    dir: PathBuf,
    cache: PathBuf,
    device: String,
    /// Threads per worker (the cores shared out).
    threads: usize,
    /// Where the workers log while the monitor owns the terminal (else: this process' stderr).
    log: Option<PathBuf>,
    /// The device's peak, measured once here and handed to every worker.
    peak: Option<Peak>,
}

impl Launcher for Workers {
    fn launch(
        &self,
        run: &GridRun,
        run_dir: &Path,
        resume: bool,
        stop: &Arc<AtomicBool>,
    ) -> Result<Status, TrainError> {
        let fail = |m: String| TrainError { path: run_dir.to_path_buf(), message: m };
        let exe = this_executable().map_err(|e| fail(format!("cannot find this executable: {e}")))?;
        let mut cmd = Command::new(exe);
        cmd.args(["--device", &self.device, "grid-worker"])
            .arg(&self.file)
            .arg("--runs-dir")
            .arg(&self.dir)
            .args(["--run", &run.name])
            .arg("--cache")
            .arg(&self.cache)
            .env("RAYON_NUM_THREADS", self.threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        if resume {
            cmd.arg("--resume");
        }
        if let Some(peak) = &self.peak {
            cmd.arg("--peak-flops").arg(peak.flops.to_string()).args(["--peak-source", &peak.source]);
        }
        if let Some(log) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| fail(format!("{}: cannot open the log: {e}", log.display())))?;
            cmd.stderr(file);
        }
        let mut child = cmd.spawn().map_err(|e| fail(format!("cannot start a worker process: {e}")))?;
        let mut stdin = child.stdin.take();
        let exit = loop {
            match child.try_wait() {
                Ok(Some(exit)) => break exit,
                Ok(None) => {}
                Err(e) => return Err(fail(format!("lost the worker process: {e}"))),
            }
            if stop.load(Ordering::Relaxed)
                && let Some(mut pipe) = stdin.take()
            {
                // It checkpoints after its current step and exits.
                let _ = writeln!(pipe, "stop");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        match read_status(&run_dir).filter(|s| s.state != State::Running) {
            Some(s) if exit.success() => Ok(s),
            _ => {
                let log = self.log.as_ref().map_or_else(|| "above".to_string(), |l| format!("in {}", l.display()));
                Err(fail(format!("its worker process ended with {exit} (its error is {log})")))
            }
        }
    }
}

/// The executable this process runs. On Linux, `/proc/self/exe`: it stays this very program even
/// when the file is rebuilt or removed during a long grid (its path would then name a new binary,
/// or nothing).
fn this_executable() -> std::io::Result<PathBuf> {
    let proc = Path::new("/proc/self/exe");
    if proc.exists() { Ok(proc.to_path_buf()) } else { std::env::current_exe() }
}

/// One run of a grid for a worker process to train: what `grid-worker` was given.
pub struct WorkerJob {
    /// The grid's experiment file.
    pub file: PathBuf,
    /// The grid's run directory.
    pub runs_dir: PathBuf,
    /// The run's name.
    pub run: String,
    /// Continue from its newest checkpoint.
    pub resume: bool,
    /// Cache folder for data.
    pub cache: PathBuf,
    /// The device's peak as the grid measured it (`None`: measure it here).
    pub peak: Option<Peak>,
}

/// `grid-worker`: trains one run of the grid of `file` into `runs_dir/run`, until it ends or
/// its standard input says `stop` (or closes), when it checkpoints and stops.
pub fn worker(job: WorkerJob, device: &Device, spec: &str) -> Result<()> {
    let WorkerJob { file, runs_dir, run, resume, cache, peak } = job;
    let (file, runs_dir, run, cache) = (file.as_path(), runs_dir.as_path(), run.as_str(), cache.as_path());
    let grid = Grid::load(file)?;
    let Some(run) = grid.runs.iter().find(|r| r.name == run) else {
        anyhow::bail!("{}: the grid has no run named `{run}`", file.display());
    };
    let exp = run.experiment();
    let prepared = prepare_data(&exp.data, cache, false, device)?;
    let options = match peak {
        Some(peak) => {
            let (replicas, grad_sync) = crate::device::replicas(spec)?;
            RunOptions { peak: Some(peak), replicas, grad_sync, ..RunOptions::default() }
        }
        None => crate::device::training(spec, exp.train.precision, device)?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let raised = stop.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        // A line saying `stop`, or the parent gone (end of input).
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "stop" {
            line.clear();
        }
        raised.store(true, Ordering::Relaxed);
    });
    let options = RunOptions { resume, stop: Some(stop), ..options };
    train(exp, &prepared, &runs_dir.join(&run.name), device, &options)?;
    Ok(())
}

/// Writes the ablation report of the grid in `runs_dir` into `out` (default `RUNS_DIR/report`).
pub fn report(runs_dir: &Path, out: Option<&Path>) -> Result<()> {
    let out = out.map_or_else(|| runs_dir.join("report"), Path::to_path_buf);
    let path = chameleon_eval::ablation::write_report(runs_dir, &out)?;
    println!("report: {} (plots beside it)", path.display());
    Ok(())
}

/// Prints the verdicts of two runs of a grid side by side, and how far their cells moved.
pub fn compare(a: &Path, b: &Path) -> Result<()> {
    let read = |d: &Path| chameleon_eval::ablation::Analysis::read(d).map_err(|e| anyhow!(e));
    let (x, y) = (read(a)?, read(b)?);
    print!("{}", chameleon_eval::ablation::compare(&x, &a.display().to_string(), &y, &b.display().to_string()));
    Ok(())
}

/// Follows the runs under `dir` (a grid, one run, or a folder of runs), written by any process.
/// Without a terminal it prints the summary table every 30 s while runs are active.
pub fn monitor(dir: &Path) -> Result<()> {
    if monitor::has_terminal() {
        monitor::run::<()>(dir, None).map_err(|e| anyhow!(e))?;
        return Ok(());
    }
    let mut watch = Watch::open(dir).map_err(|e| anyhow!(e))?;
    loop {
        println!("{}", summary(dir).map_err(|e| anyhow!(e))?);
        if !watch.active() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
        watch.refresh();
    }
}
