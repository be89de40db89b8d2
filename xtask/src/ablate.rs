//! `cargo xtask ablate [FILE]` and `cargo xtask monitor DIR`: the stability grid, live.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, anyhow};
use burn::tensor::Device;
use chameleon_train::ablation::{Grid, run_grid, summary};
use chameleon_train::monitor::{self, Owned, Watch};
use chameleon_train::trainer::RunOptions;

use crate::data::prepare_data;
use crate::logging;

/// The default grid.
pub const DEFAULT_GRID: &str = "experiments/stability.toml";

/// Runs the grid of `file` into `runs_dir` (default `runs/<file stem>`), with the live monitor on
/// a terminal and plain progress lines otherwise, then prints the summary table.
pub fn run(
    file: Option<&Path>,
    runs_dir: Option<&Path>,
    no_tui: bool,
    cache: &Path,
    device: &Device,
    spec: &str,
) -> Result<()> {
    let file = file.map_or_else(|| PathBuf::from(DEFAULT_GRID), Path::to_path_buf);
    let grid = Grid::load(&file)?;
    let dir = runs_dir.map_or_else(
        || PathBuf::from("runs").join(file.file_stem().and_then(|s| s.to_str()).unwrap_or("grid")),
        Path::to_path_buf,
    );
    println!("{}: {} runs into {}", file.display(), grid.runs.len(), dir.display());
    // The switches never touch [data], so every run shares one prepared folder.
    let prepared = prepare_data(&grid.runs[0].experiment().data, cache, false, device)?;
    let stop = Arc::new(AtomicBool::new(false));
    let precision = grid.runs[0].experiment().train.precision;
    let options = RunOptions { peak: crate::device::peak(spec, precision, device), ..RunOptions::default() };
    let outcomes = if !no_tui && monitor::has_terminal() {
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let log = dir.join("ablate.log");
        logging::to_file(&log).with_context(|| format!("{}: cannot open the log", log.display()))?;
        let (grid, dir2, device, stop2) = (grid.clone(), dir.clone(), device.clone(), stop.clone());
        let handle = std::thread::spawn(move || run_grid(&grid, &prepared, &dir2, &device, &stop2, &options));
        let shown = monitor::run(&dir, Some(Owned { handle, stop }));
        logging::to_stderr();
        eprintln!("logs of this grid: {}", log.display());
        let joined = shown.map_err(|e| anyhow!(e))?.ok_or_else(|| anyhow!("the training thread went missing"))?;
        joined.map_err(|payload| {
            let what = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow!("the training thread panicked: {what} (grid {}; its log: {})", dir.display(), log.display())
        })??
    } else {
        run_grid(&grid, &prepared, &dir, device, &stop, &options)?
    };
    let table = summary(&dir).map_err(|e| anyhow!(e))?;
    let path = dir.join("summary.txt");
    std::fs::write(&path, &table).with_context(|| format!("{}: cannot write", path.display()))?;
    println!("\n{table}\n(also in {})", path.display());
    report(&dir, None)?;
    let stopped = outcomes.len() < grid.runs.len() || outcomes.iter().any(|o| o.status.state == "stopped");
    if stopped {
        println!("stopped early: run `cargo xtask ablate {}` again to resume", file.display());
    }
    Ok(())
}

/// Writes the ablation report of the grid in `runs_dir` into `out` (default `RUNS_DIR/report`).
pub fn report(runs_dir: &Path, out: Option<&Path>) -> Result<()> {
    let out = out.map_or_else(|| runs_dir.join("report"), Path::to_path_buf);
    let path = chameleon_eval::report::write_report(runs_dir, &out)?;
    println!("report: {} (plots beside it)", path.display());
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
