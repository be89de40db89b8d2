//! Running a training job under the live monitor: the job on a thread, the monitor on the
//! terminal, logs to a file meanwhile (never to the screen the monitor owns).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, anyhow};
use chameleon_train::monitor::{self, Owned};

use crate::logging;

/// Runs `job` with the monitor following `dir` when there is a terminal and `tui` is on (its `q`
/// raises the stop flag the job gets), and plainly otherwise. Logs go to `dir/log_name` while
/// the monitor is up.
pub fn monitored<T: Send + 'static>(
    dir: &Path,
    log_name: &str,
    tui: bool,
    job: impl FnOnce(Arc<AtomicBool>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let stop = Arc::new(AtomicBool::new(false));
    if !(tui && monitor::has_terminal()) {
        return job(stop);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let log = dir.join(log_name);
    logging::to_file(&log).with_context(|| format!("{}: cannot open the log", log.display()))?;
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || job(stop2));
    let shown = monitor::run(dir, Some(Owned { handle, stop }));
    logging::to_stderr();
    eprintln!("logs of this run: {}", log.display());
    let joined = shown.map_err(|e| anyhow!(e))?.ok_or_else(|| anyhow!("the training thread went missing"))?;
    joined.map_err(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        anyhow!("the training thread panicked: {what} ({}; its log: {})", dir.display(), log.display())
    })?
}
