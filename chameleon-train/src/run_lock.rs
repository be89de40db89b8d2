//! One process per run directory. `train`, `sft`, a resumed run and an ablation grid take an
//! exclusive lock on `DIR/run.lock` (an advisory `flock`) for as long as they write there, so a
//! second process is refused by name instead of interleaving `metrics.jsonl`. The kernel drops
//! the lock when its holder exits, however it exits: a killed run leaves no stale lock.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run (or grid) directory.
pub const LOCK_FILE: &str = "run.lock";

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist) for `what`, written into the lock file for
    /// whoever is refused next. Refused while another process holds it; the message names that
    /// process.
    pub fn acquire(dir: &Path, what: &str) -> Result<Self, String> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("{}: cannot open the lock file: {e}", path.display()))?;
        if !try_flock(&file, &path) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "another process" } else { holder };
            return Err(format!(
                "{}: in use by {holder}; wait for it to finish or stop it (the lock is {})",
                dir.display(),
                path.display()
            ));
        }
        let note = format!("pid {} ({what})", std::process::id());
        let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(note.as_bytes()));
        Ok(Self { _file: file, path })
    }

    /// Whether the process named in `dir`'s lock file is alive. A run whose status says
    /// `running` while this is false was killed or crashed. This only reads the file and asks
    /// the kernel whether the pid exists, so it never takes the lock from under a starting run.
    /// A lock released normally is emptied first, so it names no one.
    pub fn holder_alive(dir: &Path) -> bool {
        let Ok(text) = std::fs::read_to_string(dir.join(LOCK_FILE)) else { return false };
        let pid = text.strip_prefix("pid ").and_then(|r| r.split_whitespace().next()).and_then(|p| p.parse().ok());
        pid.is_some_and(process_exists)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Still locked here: nobody reads a half-cleared file.
        let _ = self._file.set_len(0);
    }
}

#[cfg(unix)]
fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists (EPERM: it does, under another user).
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

#[cfg(not(unix))]
fn process_exists(_pid: i32) -> bool {
    true
}

/// Takes the lock; false only when another holder has it. A file system that cannot lock at
/// all (some network mounts) is said once and not held against the run.
#[cfg(unix)]
fn try_flock(file: &File, path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor this function borrows for its duration.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return true;
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return false;
    }
    tracing::warn!("{}: cannot lock ({e}); nothing stops a second process from using this run", path.display());
    true
}

#[cfg(not(unix))]
fn try_flock(_file: &File, _path: &Path) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path(), "train").unwrap();
        assert!(RunLock::holder_alive(dir.path()));
        // flock locks belong to open files, so a second open in this process conflicts as a
        // second process would.
        let err = RunLock::acquire(dir.path(), "train --resume").unwrap_err();
        assert!(err.contains(&format!("pid {} (train)", std::process::id())), "{err}");
        drop(first);
        assert!(!RunLock::holder_alive(dir.path()));
        let again = RunLock::acquire(dir.path(), "train --resume").unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
        // A holder that died without releasing: its pid names no process.
        std::mem::forget(again);
        std::fs::write(dir.path().join(LOCK_FILE), "pid 2147483646 (train)").unwrap();
        assert!(!RunLock::holder_alive(dir.path()));
    }
}
