//! Where `tracing` output goes: stderr, or a log file while the terminal UI owns the screen.
//! Two fmt layers (coloured for a terminal, plain for the file); each writes only while its
//! sink is the current one.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The open log file, when logs go to one.
static FILE: Mutex<Option<File>> = Mutex::new(None);

/// Installs the subscriber (`RUST_LOG` filters; by default `info`, but warnings only from the
/// CUDA kernel compiler, which logs every kernel's IR at `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,pliron=warn,cubecl=warn,cubecl_llvm=warn".into());
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(Sink::Stderr))
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(Sink::File))
        .init();
}

/// Sends logs to `path` (appending) until [`to_stderr`].
pub fn to_file(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

/// Sends logs to stderr again.
pub fn to_stderr() {
    *FILE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

#[derive(Clone, Copy)]
enum Sink {
    Stderr,
    File,
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Sink {
        *self
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = FILE.lock().unwrap_or_else(|e| e.into_inner());
        match (self, file.as_mut()) {
            (Sink::Stderr, None) => std::io::stderr().write(buf),
            (Sink::File, Some(f)) => f.write(buf),
            _ => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
