//! What a run directory holds, by name, and its status as a type. Every writer and reader of
//! `RUN/status.json` goes through [`Status`] and [`State`]; the file keeps its JSON form
//! (`{"state": "done", "step": 20}`).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One JSON object per step.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's status.
pub const STATUS_FILE: &str = "status.json";
/// The resolved experiment.
pub const CONFIG_FILE: &str = "config.toml";
/// The realised mixture: rows drawn per stream in each stage against the intended shares.
pub const PROPORTIONS_FILE: &str = "proportions.json";

/// Where a run stands, as `status.json` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Training (or its process died without a word; see [`crate::run_lock::RunLock::holder_alive`]).
    Running,
    /// Every step done.
    Done,
    /// Stopped by `--max-steps` or a stop request; resumable.
    Stopped,
    /// A non-finite loss or gradient ended it.
    Diverged,
    /// An error ended it.
    Failed,
}

impl std::fmt::Display for State {
    /// The word status.json uses.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Running => "running",
            State::Done => "done",
            State::Stopped => "stopped",
            State::Diverged => "diverged",
            State::Failed => "failed",
        })
    }
}

impl State {
    /// Whether the run ended for good: done or diverged (nothing to resume).
    pub fn ended(self) -> bool {
        matches!(self, State::Done | State::Diverged)
    }
}

/// How a run ended, or where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Where it stands.
    pub state: State,
    /// Steps completed.
    pub step: usize,
    /// Why it stopped, when it diverged or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The status a run directory's last process wrote, if any (and if it parses).
pub fn read_status(run: &Path) -> Option<Status> {
    std::fs::read_to_string(run.join(STATUS_FILE)).ok().and_then(|t| serde_json::from_str(&t).ok())
}

/// Writes `RUN/status.json` through a temporary file and a rename.
pub fn write_status(run: &Path, status: &Status) -> Result<(), String> {
    let path = run.join(STATUS_FILE);
    let json = serde_json::to_string_pretty(status).map_err(|e| format!("{}: {e}", path.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_file_keeps_its_json_form() {
        let dir = tempfile::tempdir().unwrap();
        let s = Status { state: State::Diverged, step: 7, reason: Some("non-finite loss".into()) };
        write_status(dir.path(), &s).unwrap();
        let text = std::fs::read_to_string(dir.path().join(STATUS_FILE)).unwrap();
        assert!(text.contains(r#""state": "diverged""#), "{text}");
        assert_eq!(read_status(dir.path()), Some(s));
        std::fs::write(dir.path().join(STATUS_FILE), r#"{"state":"running","step":0}"#).unwrap();
        assert_eq!(read_status(dir.path()).map(|s| s.state), Some(State::Running));
        assert!(State::Done.ended() && State::Diverged.ended() && !State::Stopped.ended());
        for state in [State::Running, State::Done, State::Stopped, State::Diverged, State::Failed] {
            assert_eq!(serde_json::to_value(state).unwrap(), serde_json::json!(state.to_string()));
        }
    }
}
