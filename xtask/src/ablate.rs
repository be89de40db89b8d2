//! `cargo xtask ablate [FILE]` and `cargo xtask monitor DIR`: the stability grid, live.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use burn::tensor::Device;
use chameleon_train::ablation::{Grid, run_grid, summary};
use chameleon_train::monitor::{self, Watch};

use crate::data::prepare_data;
use crate::live::monitored;

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
    let precision = grid.runs[0].experiment().train.precision;
    let options = crate::device::training(spec, precision, device)?;
    let (grid2, dir2, device2) = (grid.clone(), dir.clone(), device.clone());
    let outcomes = monitored(&dir, "ablate.log", !no_tui, move |stop| {
        Ok(run_grid(&grid2, &prepared, &dir2, &device2, &stop, &options)?)
    })?;
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
