//! What every source yields: a document as a list of text and image segments, and the bad
//! records it skips, each named by where it came from.

use std::fmt;
use std::path::PathBuf;

/// Where a record came from: `file:line`, `archive.tar:member`, or `file` alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Location {
    /// The file (a JSONL file, a tar shard, an HTML page, a text file).
    pub file: PathBuf,
    /// A line number (1-based) or a tar member name, when there is one.
    pub within: Option<String>,
}

impl Location {
    /// A whole file.
    pub fn file(file: impl Into<PathBuf>) -> Self {
        Self { file: file.into(), within: None }
    }

    /// Line `line` (1-based) of a file.
    pub fn line(file: impl Into<PathBuf>, line: usize) -> Self {
        Self { file: file.into(), within: Some(line.to_string()) }
    }

    /// A member of an archive.
    pub fn member(file: impl Into<PathBuf>, member: impl Into<String>) -> Self {
        Self { file: file.into(), within: Some(member.into()) }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.within {
            Some(w) => write!(f, "{}:{w}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// An image as a source names it: a file on disk, or bytes read out of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A file; relative paths are already resolved against the source file's folder.
    File(PathBuf),
    /// Bytes (from a tar member, or shipped inside a crate); `origin` names them in errors.
    Bytes {
        /// Where they came from, e.g. `shard-0000.tar:000123.jpg` or `twemoji:waffle`.
        origin: String,
        /// The encoded image (PNG, JPEG, WebP).
        bytes: std::sync::Arc<[u8]>,
    },
}

impl ImageRef {
    /// A name for error messages.
    pub fn origin(&self) -> String {
        match self {
            ImageRef::File(p) => p.display().to_string(),
            ImageRef::Bytes { origin, .. } => origin.clone(),
        }
    }
}

/// One piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text, UTF-8.
    Text(String),
    /// An image, turned into one begin-image … codes … end-image block when tokenized.
    Image(ImageRef),
    /// The `end-of-turn` token: in an SFT conversation it closes a turn, so it ends the prompt
    /// and opens the answer.
    EndOfTurn,
}

/// What kind of source a document came from; decides how it is ordered and weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    /// Text only.
    Text,
    /// One image and its caption. Sources yield `[Image, Text]`; the tokenizer puts them in
    /// either order (caption first: generation; image first: understanding).
    Caption,
    /// Text and images in reading order.
    Interleaved,
    /// A supervised fine-tuning conversation: turns closed by `end-of-turn`, prompt first; only
    /// the answers carry loss.
    Sft,
}

/// A document: segments in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Where it came from.
    pub location: Location,
    /// What kind of document it is.
    pub kind: DocKind,
    /// Text and images in order; never empty.
    pub segments: Vec<Segment>,
}

impl Document {
    /// The images of this document.
    pub fn images(&self) -> impl Iterator<Item = &ImageRef> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Image(i) => Some(i),
            Segment::Text(_) | Segment::EndOfTurn => None,
        })
    }
}

/// A record that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {reason}")]
pub struct BadRecord {
    /// Where.
    pub location: Location,
    /// Why, in words ("line is not valid JSON: …", "image file not found: a.png").
    pub reason: String,
}

impl BadRecord {
    /// A bad record at `location`.
    pub fn new(location: Location, reason: impl Into<String>) -> Self {
        Self { location, reason: reason.into() }
    }
}
