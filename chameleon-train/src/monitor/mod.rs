//! The live monitor: a ratatui screen over run directories, written by this process (the
//! ablation grid) or by others (`cargo xtask monitor DIR`).
//!
//! It only reads files, so it can follow any run anywhere; see [`runs`] for how it reads files
//! that are still being written, and [`view`] for what it draws and the keys.

pub mod runs;
pub mod scale;
pub mod view;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

pub use runs::{Metric, Point, RunState, RunView, Watch};
pub use view::{Action, App};

/// Training that the monitor owns: `q` raises `stop` and waits for the thread to checkpoint.
pub struct Owned<T> {
    /// The training thread.
    pub handle: JoinHandle<T>,
    /// Raised to stop it gracefully.
    pub stop: Arc<AtomicBool>,
}

/// Shows the runs under `dir` until `q` (or, with `owned`, until its training ends).
/// Returns the training thread's result when there is one.
pub fn run<T>(dir: &Path, owned: Option<Owned<T>>) -> Result<Option<std::thread::Result<T>>, String> {
    let mut watch = Watch::open(dir);
    // A grid directory may appear a moment after its thread starts.
    for _ in 0..50 {
        if watch.is_ok() || owned.as_ref().is_none_or(|o| o.handle.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        watch = Watch::open(dir);
    }
    let mut app = App::new(watch?);
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot start the terminal UI: {e}"))?;
    let outcome = (|| -> std::io::Result<()> {
        loop {
            app.watch.refresh();
            terminal.draw(|f| app.render(f))?;
            if owned.as_ref().is_some_and(|o| o.handle.is_finished()) {
                return Ok(());
            }
            if !event::poll(Duration::from_millis(500))? {
                continue;
            }
            // Resize events need nothing: the next draw fits the new size.
            if let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
            {
                let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if (ctrl_c || app.on_key(key.code) == Action::Quit) && quit(&mut app, owned.as_ref()) {
                    return Ok(());
                }
            }
        }
    })();
    let _ = ratatui::try_restore();
    outcome.map_err(|e| format!("terminal UI: {e}"))?;
    Ok(owned.map(|o| o.handle.join()))
}

/// Whether to leave now. With training owned, the first `q` asks it to stop and the screen stays
/// up until the checkpoint is written.
fn quit<T>(app: &mut App, owned: Option<&Owned<T>>) -> bool {
    match owned {
        None => true,
        Some(o) => {
            o.stop.store(true, Ordering::Relaxed);
            app.message =
                Some("stopping: the current run finishes its step and writes a checkpoint; `cargo xtask ablate` again resumes".into());
            false
        }
    }
}

/// Whether the monitor can take the screen (stdout and stdin are terminals).
pub fn has_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::io::stdin().is_terminal()
}
