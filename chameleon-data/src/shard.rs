//! Compact binary token shards: tokenized documents written once by [`ShardWriter`], then
//! memory-mapped for reading by [`Shard`], and by [`ShardSet`] across a folder of shards.
//!
//! # File layout
//!
//! All integers are little-endian. A shard is a 48-byte header followed by the payload; every
//! section starts at a multiple of 8 bytes from the start of the file.
//!
//! | offset | size | field                                                              |
//! |-------:|-----:|--------------------------------------------------------------------|
//! |      0 |    8 | magic `b"CHMSHARD"`                                                |
//! |      8 |    4 | format version, u32 ([`FORMAT_VERSION`], 1)                        |
//! |     12 |    4 | token width in bytes, u32: 2 when `vocab_size <= 65536`, else 4    |
//! |     16 |    4 | `vocab_size`, u32: every token is below it                         |
//! |     20 |    4 | reserved, u32, zero                                                |
//! |     24 |    8 | `n_docs`, u64                                                      |
//! |     32 |    8 | `n_tokens`, u64                                                    |
//! |     40 |    4 | CRC-32 (IEEE) of the payload, every byte after the header, u32     |
//! |     44 |    4 | CRC-32 (IEEE) of header bytes `0..44`, u32                         |
//!
//! The payload, from byte 48:
//!
//! 1. tokens: `n_tokens` tokens of `width` bytes each, all documents back to back, then zero
//!    bytes up to a multiple of 8;
//! 2. kinds: `n_docs` bytes, one per document (0 text, 1 caption, 2 interleaved, 3 SFT, as
//!    [`DocKind`]), then zero bytes up to a multiple of 8;
//! 3. index: `n_docs + 1` u64 offsets, in tokens: document `i` is tokens
//!    `index[i]..index[i + 1]`; `index[0] == 0`, `index[n_docs] == n_tokens`, never decreasing.
//!
//! The file is exactly `48 + pad8(n_tokens * width) + pad8(n_docs) + 8 * (n_docs + 1)` bytes
//! long; an empty shard is 56 bytes.
//!
//! # Crash safety
//!
//! [`ShardWriter`] writes to `<path>.tmp` in the same folder, flushes and fsyncs it, then renames
//! it over `path` (and, on Unix, fsyncs the folder, best effort). A crash leaves at most a stray
//! `.tmp` file, never a file at `path` that looks whole; a writer dropped before
//! [`ShardWriter::finish`] removes its temp file and leaves any file already at `path` alone.
//!
//! # Reading
//!
//! [`Shard::open`] checks the magic, version, header checksum, exact file length, payload
//! checksum, document kinds, index and token range. [`Shard::open_unverified`] skips only the
//! payload checksum and the token range scan (both read every token), for the fast path.
//! [`Shard::tokens_into`] is the batch loader's hot path: one range check, then a bulk widening
//! copy into the caller's buffer.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::document::DocKind;

/// The bytes every shard file starts with.
pub const MAGIC: [u8; 8] = *b"CHMSHARD";

/// The format version this module writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Length of the fixed header, in bytes.
pub const HEADER_LEN: usize = 48;

/// The largest `vocab_size` whose tokens are stored in 2 bytes; larger ones take 4.
pub const MAX_U16_VOCAB: u32 = 1 << 16;

/// The extension [`ShardSet::open`] looks for.
pub const SHARD_EXTENSION: &str = "shard";

/// A shard that cannot be written, read or trusted; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The operating system refused an operation.
    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done ("open", "write", "rename into place", …).
        action: &'static str,
        /// The underlying error.
        error: io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("{}: not a chameleon shard (the file does not start with \"CHMSHARD\")", path.display())]
    NotAShard {
        /// The file.
        path: PathBuf,
    },
    /// The file is a shard of a format version this build cannot read.
    #[error("{}: shard format version {found} is not supported (this build reads version {supported})", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The file is shorter than its header.
    #[error("{}: truncated: expected at least {HEADER_LEN} bytes (the header), found {found}", path.display())]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// Its length.
        found: u64,
    },
    /// The file is shorter than its header implies.
    #[error("{}: truncated: expected {expected} bytes, found {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The length the header implies.
        expected: u64,
        /// The actual length.
        found: u64,
    },
    /// The file is longer than its header implies.
    #[error("{}: trailing bytes: expected {expected} bytes, found {found}", path.display())]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// The length the header implies.
        expected: u64,
        /// The actual length.
        found: u64,
    },
    /// A stored checksum does not match the bytes.
    #[error("{}: {section} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// `"header"` or `"payload"`.
        section: &'static str,
        /// The checksum in the file.
        stored: u32,
        /// The checksum of the bytes as read.
        computed: u32,
    },
    /// The header or payload is inconsistent (bad token width, index, kind byte, …).
    #[error("{}: corrupt shard: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// [`ShardWriter::push`] got a token outside the vocabulary; nothing of the document was
    /// written.
    #[error("{}: token {token} at position {position} of the document is not below vocab_size {vocab_size}", path.display())]
    TokenOutOfRange {
        /// The shard being written.
        path: PathBuf,
        /// The token.
        token: u32,
        /// Its position in the document.
        position: usize,
        /// The shard's vocabulary size.
        vocab_size: u32,
    },
    /// A writer was asked for something it cannot do (a zero vocabulary, a path with no file
    /// name, a push after a failed write).
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The shard being written.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// A folder holds no `*.shard` files.
    #[error("{}: no *.{SHARD_EXTENSION} files in this folder", path.display())]
    NoShards {
        /// The folder.
        path: PathBuf,
    },
    /// A shard's vocabulary differs from the rest of its set.
    #[error("{}: vocab_size {found} differs from {expected}, the vocab_size of the set's first shard", path.display())]
    VocabMismatch {
        /// The odd shard.
        path: PathBuf,
        /// Its vocabulary size.
        found: u32,
        /// The first shard's vocabulary size.
        expected: u32,
    },
}

impl ShardError {
    /// The file or folder the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ShardError::Io { path, .. }
            | ShardError::NotAShard { path }
            | ShardError::Version { path, .. }
            | ShardError::TruncatedHeader { path, .. }
            | ShardError::Truncated { path, .. }
            | ShardError::TrailingBytes { path, .. }
            | ShardError::Checksum { path, .. }
            | ShardError::Corrupt { path, .. }
            | ShardError::TokenOutOfRange { path, .. }
            | ShardError::Invalid { path, .. }
            | ShardError::NoShards { path }
            | ShardError::VocabMismatch { path, .. } => path,
        }
    }
}

fn io_error(path: &Path, action: &'static str, error: io::Error) -> ShardError {
    ShardError::Io { path: path.to_path_buf(), action, error }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> ShardError {
    ShardError::Corrupt { path: path.to_path_buf(), reason: reason.into() }
}

/// How many bytes one token takes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    U16,
    U32,
}

impl Width {
    fn for_vocab(vocab_size: u32) -> Self {
        if vocab_size <= MAX_U16_VOCAB { Width::U16 } else { Width::U32 }
    }

    fn bytes(self) -> usize {
        match self {
            Width::U16 => 2,
            Width::U32 => 4,
        }
    }
}

fn kind_byte(kind: DocKind) -> u8 {
    match kind {
        DocKind::Text => 0,
        DocKind::Caption => 1,
        DocKind::Interleaved => 2,
        DocKind::Sft => 3,
    }
}

fn kind_from_byte(byte: u8) -> Option<DocKind> {
    match byte {
        0 => Some(DocKind::Text),
        1 => Some(DocKind::Caption),
        2 => Some(DocKind::Interleaved),
        3 => Some(DocKind::Sft),
        _ => None,
    }
}

/// `n` rounded up to a multiple of 8, or `None` on overflow.
fn pad8(n: u64) -> Option<u64> {
    Some(n.checked_add(7)? & !7)
}

/// Zero bytes to write after a section of `n` bytes.
fn padding(n: u64) -> &'static [u8] {
    &[0u8; 8][..((8 - n % 8) % 8) as usize]
}

/// The fixed header, as numbers.
#[derive(Debug, Clone, Copy)]
struct Header {
    version: u32,
    width: u32,
    vocab_size: u32,
    reserved: u32,
    n_docs: u64,
    n_tokens: u64,
    payload_crc: u32,
    header_crc: u32,
}

impl Header {
    /// The header's bytes; the header checksum is computed here, not taken from `self`.
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&self.width.to_le_bytes());
        h[16..20].copy_from_slice(&self.vocab_size.to_le_bytes());
        h[20..24].copy_from_slice(&self.reserved.to_le_bytes());
        h[24..32].copy_from_slice(&self.n_docs.to_le_bytes());
        h[32..40].copy_from_slice(&self.n_tokens.to_le_bytes());
        h[40..44].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..44]);
        h[44..48].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The header's numbers; the magic is not checked here.
    fn decode(h: &[u8; HEADER_LEN]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        Header {
            version: u32_at(8),
            width: u32_at(12),
            vocab_size: u32_at(16),
            reserved: u32_at(20),
            n_docs: u64_at(24),
            n_tokens: u64_at(32),
            payload_crc: u32_at(40),
            header_crc: u32_at(44),
        }
    }
}

/// What [`ShardWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardSummary {
    /// The shard file.
    pub path: PathBuf,
    /// Its vocabulary size.
    pub vocab_size: u32,
    /// Bytes per token on disk: 2 or 4.
    pub token_width: u32,
    /// Documents.
    pub n_docs: u64,
    /// Tokens, all documents together.
    pub n_tokens: u64,
    /// Length of the file, in bytes.
    pub file_len: u64,
}

/// Writes one shard: documents one at a time through [`push`](Self::push), then
/// [`finish`](Self::finish). Dropped without `finish`, it removes its temp file and leaves
/// `path` as it was.
///
/// Two writers for the same path at once share one temp file and spoil each other's output.
#[derive(Debug)]
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    vocab_size: u32,
    width: Width,
    crc: crc32fast::Hasher,
    kinds: Vec<u8>,
    /// Token offsets: starts with 0, one more entry per document.
    index: Vec<u64>,
    scratch: Vec<u8>,
    failed: bool,
    finished: bool,
}

impl ShardWriter {
    /// Starts a shard at `path` for tokens below `vocab_size`; the bytes go to `<path>.tmp`
    /// until [`finish`](Self::finish).
    pub fn create(path: &Path, vocab_size: u32) -> Result<ShardWriter, ShardError> {
        let invalid = |reason: &str| ShardError::Invalid { path: path.to_path_buf(), reason: reason.to_string() };
        if vocab_size == 0 {
            return Err(invalid("vocab_size must be at least 1"));
        }
        let Some(name) = path.file_name() else {
            return Err(invalid("not a file path: it has no file name"));
        };
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let file = File::create(&tmp).map_err(|e| io_error(&tmp, "create", e))?;
        let mut writer = ShardWriter {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            vocab_size,
            width: Width::for_vocab(vocab_size),
            crc: crc32fast::Hasher::new(),
            kinds: Vec::new(),
            index: vec![0],
            scratch: Vec::new(),
            failed: false,
            finished: false,
        };
        // A placeholder; the real header is written by `finish`.
        writer.write_raw(&[0u8; HEADER_LEN])?;
        Ok(writer)
    }

    /// The shard's final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Documents pushed so far.
    pub fn n_docs(&self) -> u64 {
        self.kinds.len() as u64
    }

    /// Tokens pushed so far.
    pub fn n_tokens(&self) -> u64 {
        self.index.last().copied().unwrap_or(0)
    }

    /// Appends one document. A token `>= vocab_size` refuses the whole document (naming the
    /// token) and leaves the writer as it was; an I/O error spoils the writer, and later calls
    /// fail.
    pub fn push(&mut self, kind: DocKind, tokens: &[u32]) -> Result<(), ShardError> {
        self.check_usable()?;
        if let Some(position) = tokens.iter().position(|&t| t >= self.vocab_size) {
            return Err(ShardError::TokenOutOfRange {
                path: self.path.clone(),
                token: tokens[position],
                position,
                vocab_size: self.vocab_size,
            });
        }
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        bytes.resize(tokens.len() * self.width.bytes(), 0);
        match self.width {
            // Every token is below vocab_size <= 65536, so it fits in 16 bits.
            Width::U16 => {
                let (out, _) = bytes.as_chunks_mut::<2>();
                out.iter_mut().zip(tokens).for_each(|(o, &t)| *o = (t as u16).to_le_bytes());
            }
            Width::U32 => {
                let (out, _) = bytes.as_chunks_mut::<4>();
                out.iter_mut().zip(tokens).for_each(|(o, &t)| *o = t.to_le_bytes());
            }
        }
        let written = self.write_payload(&bytes);
        self.scratch = bytes;
        written?;
        self.kinds.push(kind_byte(kind));
        self.index.push(self.n_tokens() + tokens.len() as u64);
        Ok(())
    }

    /// Writes the kinds, index and header, flushes and fsyncs the temp file, and renames it over
    /// the shard's path. On error the temp file is removed and `path` is left as it was.
    pub fn finish(mut self) -> Result<ShardSummary, ShardError> {
        self.check_usable()?;
        let n_docs = self.n_docs();
        let n_tokens = self.n_tokens();
        let width = self.width.bytes() as u64;
        self.write_payload(padding(n_tokens * width))?;
        let kinds = std::mem::take(&mut self.kinds);
        self.write_payload(&kinds)?;
        self.write_payload(padding(n_docs))?;
        let index: Vec<u8> = self.index.iter().flat_map(|o| o.to_le_bytes()).collect();
        self.write_payload(&index)?;
        let header = Header {
            version: FORMAT_VERSION,
            width: width as u32,
            vocab_size: self.vocab_size,
            reserved: 0,
            n_docs,
            n_tokens,
            payload_crc: self.crc.clone().finalize(),
            header_crc: 0,
        };
        let tmp = self.tmp.clone();
        let Some(mut writer) = self.file.take() else {
            return Err(ShardError::Invalid { path: self.path.clone(), reason: "the writer is closed".into() });
        };
        let write_err = |e| io_error(&tmp, "write", e);
        writer.seek(SeekFrom::Start(0)).map_err(write_err)?;
        writer.write_all(&header.encode()).map_err(write_err)?;
        let file = writer.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(|e| io_error(&tmp, "fsync", e))?;
        let file_len = file.metadata().map_err(|e| io_error(&tmp, "read the metadata of", e))?.len();
        drop(file);
        fs::rename(&tmp, &self.path).map_err(|e| io_error(&self.path, "rename the temp file into place", e))?;
        self.finished = true;
        sync_parent(&self.path);
        Ok(ShardSummary {
            path: self.path.clone(),
            vocab_size: self.vocab_size,
            token_width: width as u32,
            n_docs,
            n_tokens,
            file_len,
        })
    }

    fn check_usable(&self) -> Result<(), ShardError> {
        if self.failed || self.file.is_none() {
            return Err(ShardError::Invalid {
                path: self.path.clone(),
                reason: "an earlier write to this shard failed; start it again".into(),
            });
        }
        Ok(())
    }

    /// Writes payload bytes and adds them to the payload checksum.
    fn write_payload(&mut self, bytes: &[u8]) -> Result<(), ShardError> {
        self.crc.update(bytes);
        self.write_raw(bytes)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ShardError> {
        let result = match self.file.as_mut() {
            Some(file) => file.write_all(bytes),
            None => Err(io::Error::other("the writer is closed")),
        };
        result.map_err(|e| {
            self.failed = true;
            io_error(&self.tmp, "write", e)
        })
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Discard buffered bytes instead of flushing them into a file about to be removed.
            if let Some(writer) = self.file.take() {
                drop(writer.into_parts());
            }
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Makes a rename durable by fsyncing the folder that holds `path`; best effort, as some
/// filesystems refuse to fsync folders.
fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// One shard file, memory-mapped; documents are numbered from 0.
///
/// The accessors taking a document number panic when it is `>= len()`, like slice indexing;
/// everything read from the file is checked when it is opened.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    width: Width,
    vocab_size: u32,
    n_tokens: usize,
    kinds: Vec<DocKind>,
    /// Byte offset of the index.
    index_at: usize,
}

impl Shard {
    /// Opens and fully checks a shard: header, length, payload checksum, kinds, index, and that
    /// every token is below `vocab_size`.
    pub fn open(path: &Path) -> Result<Shard, ShardError> {
        Shard::open_with(path, true)
    }

    /// Opens a shard checking everything [`open`](Self::open) does except the payload checksum
    /// and the token range, which read every token: still the header, its checksum, the exact
    /// length, the kinds and the index. For the fast path over shards checked before.
    pub fn open_unverified(path: &Path) -> Result<Shard, ShardError> {
        Shard::open_with(path, false)
    }

    fn open_with(path: &Path, verify: bool) -> Result<Shard, ShardError> {
        let mut file = File::open(path).map_err(|e| io_error(path, "open", e))?;
        let file_len = file.metadata().map_err(|e| io_error(path, "read the metadata of", e))?.len();
        if file_len < HEADER_LEN as u64 {
            // Too short to map usefully (and an empty file cannot be mapped at all).
            let mut head = Vec::with_capacity(HEADER_LEN);
            file.read_to_end(&mut head).map_err(|e| io_error(path, "read", e))?;
            return Err(short_file(path, &head));
        }
        // SAFETY: the map is only read, through `&[u8]`, and every value taken from it is checked
        // here. A shard is written once and renamed into place, never modified in place; another
        // process truncating or rewriting the file while it is mapped would break that contract
        // (as with any memory-mapped file), which this module cannot prevent.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, "memory-map", e))?;
        let bytes: &[u8] = &map;
        let found = bytes.len() as u64;
        let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(short_file(path, bytes));
        };
        if head[..8] != MAGIC {
            return Err(ShardError::NotAShard { path: path.to_path_buf() });
        }
        let header = Header::decode(head);
        if header.version != FORMAT_VERSION {
            return Err(ShardError::Version {
                path: path.to_path_buf(),
                found: header.version,
                supported: FORMAT_VERSION,
            });
        }
        let computed = crc32fast::hash(&head[..44]);
        if computed != header.header_crc {
            return Err(ShardError::Checksum {
                path: path.to_path_buf(),
                section: "header",
                stored: header.header_crc,
                computed,
            });
        }
        if header.reserved != 0 {
            return Err(corrupt(path, format!("reserved header field is {}, expected 0", header.reserved)));
        }
        let width = match header.width {
            2 => Width::U16,
            4 => Width::U32,
            w => return Err(corrupt(path, format!("token width is {w} bytes, expected 2 or 4"))),
        };
        if width == Width::U16 && header.vocab_size > MAX_U16_VOCAB {
            return Err(corrupt(path, format!("2-byte tokens cannot hold vocab_size {}", header.vocab_size)));
        }
        let (n_docs, n_tokens) = (header.n_docs, header.n_tokens);
        let sections = || {
            let kinds_at = pad8(n_tokens.checked_mul(width.bytes() as u64)?)?.checked_add(HEADER_LEN as u64)?;
            let index_at = kinds_at.checked_add(pad8(n_docs)?)?;
            let end = index_at.checked_add(n_docs.checked_add(1)?.checked_mul(8)?)?;
            Some((kinds_at, index_at, end))
        };
        let Some((kinds_at, index_at, expected)) = sections() else {
            return Err(corrupt(path, format!("header claims {n_docs} documents and {n_tokens} tokens: too large")));
        };
        if found < expected {
            return Err(ShardError::Truncated { path: path.to_path_buf(), expected, found });
        }
        if found > expected {
            return Err(ShardError::TrailingBytes { path: path.to_path_buf(), expected, found });
        }
        // Everything below is within the map, so these fit in usize.
        let (kinds_at, index_at, n_docs, n_tokens) =
            (kinds_at as usize, index_at as usize, n_docs as usize, n_tokens as usize);
        if verify {
            let computed = crc32fast::hash(&bytes[HEADER_LEN..]);
            if computed != header.payload_crc {
                return Err(ShardError::Checksum {
                    path: path.to_path_buf(),
                    section: "payload",
                    stored: header.payload_crc,
                    computed,
                });
            }
        }
        let mut kinds = Vec::with_capacity(n_docs);
        for (i, &b) in bytes[kinds_at..kinds_at + n_docs].iter().enumerate() {
            match kind_from_byte(b) {
                Some(kind) => kinds.push(kind),
                None => return Err(corrupt(path, format!("document {i} has unknown kind byte {b}"))),
            }
        }
        check_index(path, &bytes[index_at..], n_tokens as u64)?;
        let shard =
            Shard { path: path.to_path_buf(), map, width, vocab_size: header.vocab_size, n_tokens, kinds, index_at };
        if verify {
            shard.check_token_range()?;
        }
        Ok(shard)
    }

    /// Fails on the first token `>= vocab_size` in the whole token array.
    fn check_token_range(&self) -> Result<(), ShardError> {
        let bytes = self.all_token_bytes();
        let vocab = self.vocab_size;
        let bad = match self.width {
            Width::U16 if vocab >= MAX_U16_VOCAB => None,
            Width::U16 => {
                let tokens = bytes.as_chunks::<2>().0.iter().map(|&b| u32::from(u16::from_le_bytes(b)));
                if tokens.clone().max().unwrap_or(0) < vocab {
                    None
                } else {
                    tokens.enumerate().find(|&(_, t)| t >= vocab)
                }
            }
            Width::U32 => {
                let tokens = bytes.as_chunks::<4>().0.iter().map(|&b| u32::from_le_bytes(b));
                if tokens.clone().max().unwrap_or(0) < vocab {
                    None
                } else {
                    tokens.enumerate().find(|&(_, t)| t >= vocab)
                }
            }
        };
        match bad {
            None => Ok(()),
            Some((position, token)) => Err(corrupt(
                &self.path,
                format!("token {token} at position {position} of the token array is not below vocab_size {vocab}"),
            )),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Documents in the shard.
    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    /// Whether the shard holds no documents.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Tokens in the shard, all documents together.
    pub fn n_tokens(&self) -> u64 {
        self.n_tokens as u64
    }

    /// Every token is below this.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// Bytes per token on disk: 2 or 4.
    pub fn token_width(&self) -> u32 {
        self.width.bytes() as u32
    }

    /// The kinds of all documents, in order.
    pub fn kinds(&self) -> &[DocKind] {
        &self.kinds
    }

    /// The kind of document `i`.
    pub fn kind(&self, i: usize) -> DocKind {
        self.kinds[i]
    }

    /// The number of tokens of document `i`.
    pub fn doc_len(&self, i: usize) -> usize {
        let (start, end) = self.bounds(i);
        end - start
    }

    /// Appends the tokens of document `i` to `out`, widened to u32; `out` is not cleared.
    #[inline]
    pub fn tokens_into(&self, i: usize, out: &mut Vec<u32>) {
        let (start, end) = self.bounds(i);
        let w = self.width.bytes();
        widen_into(self.width, &self.map[HEADER_LEN + start * w..HEADER_LEN + end * w], out);
    }

    /// The tokens of document `i`, in a new vector.
    pub fn tokens(&self, i: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.doc_len(i));
        self.tokens_into(i, &mut out);
        out
    }

    /// Token counts per class and document counts per kind, over this shard (`shards` is 1).
    pub fn stats(&self, modality_of: impl Fn(u32) -> TokenClass) -> ShardStats {
        let mut stats = ShardStats { shards: 1, ..ShardStats::default() };
        self.add_stats(&modality_of, &mut stats);
        stats
    }

    fn add_stats(&self, modality_of: &impl Fn(u32) -> TokenClass, stats: &mut ShardStats) {
        stats.documents += self.len() as u64;
        stats.tokens += self.n_tokens();
        for kind in &self.kinds {
            match kind {
                DocKind::Text => stats.text_docs += 1,
                DocKind::Caption => stats.caption_docs += 1,
                DocKind::Interleaved => stats.interleaved_docs += 1,
                DocKind::Sft => stats.sft_docs += 1,
            }
        }
        let mut counts = [0u64; 3];
        let mut buffer = Vec::with_capacity(1 << 16);
        let w = self.width.bytes();
        for chunk in self.all_token_bytes().chunks(w << 16) {
            buffer.clear();
            widen_into(self.width, chunk, &mut buffer);
            for &t in &buffer {
                counts[modality_of(t) as usize] += 1;
            }
        }
        stats.text_tokens += counts[TokenClass::Text as usize];
        stats.image_tokens += counts[TokenClass::Image as usize];
        stats.special_tokens += counts[TokenClass::Special as usize];
    }

    fn all_token_bytes(&self) -> &[u8] {
        &self.map[HEADER_LEN..HEADER_LEN + self.n_tokens * self.width.bytes()]
    }

    /// Token offsets of document `i`; panics with a clear message when `i` is out of range.
    #[inline]
    fn bounds(&self, i: usize) -> (usize, usize) {
        assert!(i < self.len(), "document {i} out of range: {} holds {} documents", self.path.display(), self.len());
        let index = &self.map[self.index_at + 8 * i..self.index_at + 8 * i + 16];
        let (pair, _) = index.as_chunks::<8>();
        // Checked at open: 0 <= start <= end <= n_tokens.
        (u64::from_le_bytes(pair[0]) as usize, u64::from_le_bytes(pair[1]) as usize)
    }
}

/// Appends little-endian tokens of `width` to `out`, widened to u32.
#[inline]
fn widen_into(width: Width, bytes: &[u8], out: &mut Vec<u32>) {
    match width {
        Width::U16 => out.extend(bytes.as_chunks::<2>().0.iter().map(|&b| u32::from(u16::from_le_bytes(b)))),
        Width::U32 => out.extend(bytes.as_chunks::<4>().0.iter().map(|&b| u32::from_le_bytes(b))),
    }
}

/// The error for a file shorter than the header: not a shard unless it starts like one.
fn short_file(path: &Path, head: &[u8]) -> ShardError {
    let n = head.len().min(MAGIC.len());
    if head[..n] != MAGIC[..n] {
        return ShardError::NotAShard { path: path.to_path_buf() };
    }
    ShardError::TruncatedHeader { path: path.to_path_buf(), found: head.len() as u64 }
}

/// Checks that the index (`n_docs + 1` u64s) starts at 0, never decreases and ends at
/// `n_tokens`.
fn check_index(path: &Path, index: &[u8], n_tokens: u64) -> Result<(), ShardError> {
    let (offsets, _) = index.as_chunks::<8>();
    let mut previous = 0u64;
    for (i, &b) in offsets.iter().enumerate() {
        let offset = u64::from_le_bytes(b);
        if i == 0 && offset != 0 {
            return Err(corrupt(path, format!("index starts at {offset}, expected 0")));
        }
        if offset < previous {
            return Err(corrupt(
                path,
                format!("index decreases at document {}: {previous} then {offset}", i.saturating_sub(1)),
            ));
        }
        previous = offset;
    }
    if previous != n_tokens {
        return Err(corrupt(path, format!("index ends at {previous}, but the shard holds {n_tokens} tokens")));
    }
    Ok(())
}

/// What a token stands for, as the vocabulary layout tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenClass {
    /// A text (BPE) token.
    Text,
    /// An image code.
    Image,
    /// A special token (begin/end of sequence or image, padding, …).
    Special,
}

/// Counts over shards: tokens per [`TokenClass`], documents per [`DocKind`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardStats {
    /// Shards counted.
    pub shards: usize,
    /// Documents, all kinds.
    pub documents: u64,
    /// Tokens, all classes.
    pub tokens: u64,
    /// Text tokens.
    pub text_tokens: u64,
    /// Image tokens.
    pub image_tokens: u64,
    /// Special tokens.
    pub special_tokens: u64,
    /// Documents of kind [`DocKind::Text`].
    pub text_docs: u64,
    /// Documents of kind [`DocKind::Caption`].
    pub caption_docs: u64,
    /// Documents of kind [`DocKind::Interleaved`].
    pub interleaved_docs: u64,
    /// Documents of kind [`DocKind::Sft`].
    pub sft_docs: u64,
}

impl ShardStats {
    /// Adds another set's counts to these.
    pub fn merge(&mut self, other: &ShardStats) {
        self.shards += other.shards;
        self.documents += other.documents;
        self.tokens += other.tokens;
        self.text_tokens += other.text_tokens;
        self.image_tokens += other.image_tokens;
        self.special_tokens += other.special_tokens;
        self.text_docs += other.text_docs;
        self.caption_docs += other.caption_docs;
        self.interleaved_docs += other.interleaved_docs;
        self.sft_docs += other.sft_docs;
    }
}

/// Shards read as one: the `*.shard` files of a folder in sorted order, with documents numbered
/// globally, the first shard's first.
///
/// The accessors taking a document number panic when it is `>= len()`, like slice indexing.
#[derive(Debug)]
pub struct ShardSet {
    shards: Vec<Shard>,
    /// `starts[s]` is the global number of shard `s`'s first document; one more entry, the total.
    starts: Vec<usize>,
}

impl ShardSet {
    /// Opens every `*.shard` file of `dir`, in sorted order, each checked fully as by
    /// [`Shard::open`]. A folder without shards, or shards of different vocabulary sizes, are
    /// errors.
    pub fn open(dir: &Path) -> Result<ShardSet, ShardError> {
        ShardSet::open_dir(dir, Shard::open)
    }

    /// As [`open`](Self::open), opening each shard with [`Shard::open_unverified`].
    pub fn open_unverified(dir: &Path) -> Result<ShardSet, ShardError> {
        ShardSet::open_dir(dir, Shard::open_unverified)
    }

    fn open_dir(dir: &Path, open: fn(&Path) -> Result<Shard, ShardError>) -> Result<ShardSet, ShardError> {
        let paths = ShardSet::shard_paths(dir)?;
        if paths.is_empty() {
            return Err(ShardError::NoShards { path: dir.to_path_buf() });
        }
        let shards = paths.iter().map(|p| open(p)).collect::<Result<Vec<_>, _>>()?;
        ShardSet::from_shards(shards)
    }

    /// The `*.shard` files directly in `dir` (following symbolic links), sorted by path.
    pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, ShardError> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io_error(dir, "list the folder", e))? {
            let path = entry.map_err(|e| io_error(dir, "list the folder", e))?.path();
            if path.extension().is_some_and(|e| e == SHARD_EXTENSION) && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        Ok(paths)
    }

    /// A set of shards already open, in the given order; they must share one vocabulary size.
    pub fn from_shards(shards: Vec<Shard>) -> Result<ShardSet, ShardError> {
        if let Some(first) = shards.first()
            && let Some(odd) = shards.iter().find(|s| s.vocab_size != first.vocab_size)
        {
            return Err(ShardError::VocabMismatch {
                path: odd.path.clone(),
                found: odd.vocab_size,
                expected: first.vocab_size,
            });
        }
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut total = 0usize;
        starts.push(0);
        for shard in &shards {
            total += shard.len();
            starts.push(total);
        }
        Ok(ShardSet { shards, starts })
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Documents in all shards.
    pub fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Whether the set holds no documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens in all shards.
    pub fn n_tokens(&self) -> u64 {
        self.shards.iter().map(Shard::n_tokens).sum()
    }

    /// The shards' vocabulary size; 0 for a set of no shards.
    pub fn vocab_size(&self) -> u32 {
        self.shards.first().map_or(0, Shard::vocab_size)
    }

    /// Where global document `i` lives: (shard number, document number within that shard).
    #[inline]
    pub fn doc(&self, i: usize) -> (usize, usize) {
        assert!(i < self.len(), "document {i} out of range: the shard set holds {} documents", self.len());
        // The first shard whose end is past `i`; empty shards are skipped over.
        let shard = self.starts[1..].partition_point(|&end| end <= i);
        (shard, i - self.starts[shard])
    }

    /// The kind of global document `i`.
    pub fn kind(&self, i: usize) -> DocKind {
        let (s, local) = self.doc(i);
        self.shards[s].kind(local)
    }

    /// The number of tokens of global document `i`.
    pub fn doc_len(&self, i: usize) -> usize {
        let (s, local) = self.doc(i);
        self.shards[s].doc_len(local)
    }

    /// Appends the tokens of global document `i` to `out`; `out` is not cleared.
    #[inline]
    pub fn tokens_into(&self, i: usize, out: &mut Vec<u32>) {
        let (s, local) = self.doc(i);
        self.shards[s].tokens_into(local, out);
    }

    /// Token counts per class (as `modality_of` classes each token), document counts per kind,
    /// and the number of shards.
    pub fn stats(&self, modality_of: impl Fn(u32) -> TokenClass) -> ShardStats {
        let mut stats = ShardStats { shards: self.shards.len(), ..ShardStats::default() };
        for shard in &self.shards {
            shard.add_stats(&modality_of, &mut stats);
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Docs = Vec<(DocKind, Vec<u32>)>;

    fn write(path: &Path, vocab: u32, docs: &[(DocKind, Vec<u32>)]) -> ShardSummary {
        let mut w = ShardWriter::create(path, vocab).unwrap();
        for (kind, tokens) in docs {
            w.push(*kind, tokens).unwrap();
        }
        w.finish().unwrap()
    }

    fn sample_docs(vocab: u32) -> Docs {
        vec![
            (DocKind::Text, vec![1, 2, 3]),
            (DocKind::Caption, vec![vocab - 1, 0, 7, vocab / 2, 9]),
            (DocKind::Interleaved, vec![]),
            (DocKind::Text, (0..vocab.min(5000)).rev().collect()),
            (DocKind::Interleaved, vec![42]),
        ]
    }

    fn tmp_path(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap().to_os_string();
        name.push(".tmp");
        path.with_file_name(name)
    }

    fn check_round_trip(vocab: u32, width: u32) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        let docs = sample_docs(vocab);
        let summary = write(&path, vocab, &docs);
        let n_tokens: usize = docs.iter().map(|d| d.1.len()).sum();
        assert_eq!(summary.token_width, width);
        assert_eq!(summary.n_docs, docs.len() as u64);
        assert_eq!(summary.n_tokens, n_tokens as u64);
        assert_eq!(summary.file_len, fs::metadata(&path).unwrap().len());
        assert!(!tmp_path(&path).exists());
        for shard in [Shard::open(&path).unwrap(), Shard::open_unverified(&path).unwrap()] {
            assert_eq!(shard.len(), docs.len());
            assert!(!shard.is_empty());
            assert_eq!(shard.n_tokens(), n_tokens as u64);
            assert_eq!(shard.vocab_size(), vocab);
            assert_eq!(shard.token_width(), width);
            assert_eq!(shard.path(), path);
            for (i, (kind, tokens)) in docs.iter().enumerate() {
                assert_eq!(shard.kind(i), *kind);
                assert_eq!(shard.doc_len(i), tokens.len());
                assert_eq!(&shard.tokens(i), tokens);
            }
        }
    }

    #[test]
    fn round_trip_u16() {
        check_round_trip(1000, 2);
        check_round_trip(MAX_U16_VOCAB, 2);
    }

    #[test]
    fn round_trip_u32() {
        check_round_trip(100_000, 4);
        check_round_trip(MAX_U16_VOCAB + 1, 4);
    }

    #[test]
    fn readers_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Shard>();
        assert_send_sync::<ShardSet>();
        assert_send_sync::<ShardError>();
    }

    #[test]
    fn empty_shard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.shard");
        let summary = write(&path, 1000, &[]);
        assert_eq!(summary.file_len, 56);
        let shard = Shard::open(&path).unwrap();
        assert!(shard.is_empty());
        assert_eq!(shard.len(), 0);
        assert_eq!(shard.n_tokens(), 0);
    }

    #[test]
    fn token_out_of_range_refused_and_writer_still_usable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        let mut w = ShardWriter::create(&path, 1000).unwrap();
        w.push(DocKind::Text, &[1, 2]).unwrap();
        let err = w.push(DocKind::Text, &[5, 999, 1000, 3]).unwrap_err();
        assert!(matches!(err, ShardError::TokenOutOfRange { token: 1000, position: 2, vocab_size: 1000, .. }));
        let msg = err.to_string();
        assert!(msg.contains("a.shard") && msg.contains("token 1000"), "{msg}");
        w.push(DocKind::Caption, &[7]).unwrap();
        w.finish().unwrap();
        let shard = Shard::open(&path).unwrap();
        assert_eq!(shard.len(), 2);
        assert_eq!(shard.tokens(1), vec![7]);
        assert!(ShardWriter::create(&dir.path().join("z.shard"), 0).is_err());
    }

    #[test]
    fn truncated_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("good.shard");
        write(&path, 1000, &sample_docs(1000));
        let bytes = fs::read(&path).unwrap();
        for cut in [0, 4, 20, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 3, bytes.len() / 2, bytes.len() - 1] {
            let cut_path = dir.path().join(format!("cut{cut}.shard"));
            fs::write(&cut_path, &bytes[..cut]).unwrap();
            for err in [Shard::open(&cut_path).unwrap_err(), Shard::open_unverified(&cut_path).unwrap_err()] {
                let msg = err.to_string();
                assert!(msg.contains(&cut_path.display().to_string()), "{msg}");
                assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
                assert_eq!(err.path(), cut_path);
            }
        }
        let cut_path = dir.path().join("last.shard");
        fs::write(&cut_path, &bytes[..bytes.len() - 1]).unwrap();
        let msg = Shard::open(&cut_path).unwrap_err().to_string();
        assert!(msg.contains(&format!("expected {} bytes, found {}", bytes.len(), bytes.len() - 1)), "{msg}");
    }

    #[test]
    fn trailing_bytes_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        write(&path, 1000, &sample_docs(1000));
        let mut bytes = fs::read(&path).unwrap();
        bytes.push(0);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(Shard::open_unverified(&path), Err(ShardError::TrailingBytes { .. })));
    }

    #[test]
    fn flipped_payload_byte_caught_by_checksum_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        write(&path, 1000, &sample_docs(1000));
        let mut bytes = fs::read(&path).unwrap();
        // The first token of document 0 (1, as u16): 1 becomes 3, still a valid token.
        bytes[HEADER_LEN] ^= 2;
        fs::write(&path, &bytes).unwrap();
        let err = Shard::open(&path).unwrap_err();
        assert!(matches!(err, ShardError::Checksum { section: "payload", .. }), "{err}");
        assert!(err.to_string().contains("a.shard"));
        let shard = Shard::open_unverified(&path).unwrap();
        assert_eq!(shard.tokens(0), vec![3, 2, 3]);
    }

    #[test]
    fn flipped_header_byte_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        write(&path, 1000, &sample_docs(1000));
        let mut bytes = fs::read(&path).unwrap();
        bytes[24] ^= 1; // n_docs
        fs::write(&path, &bytes).unwrap();
        let err = Shard::open_unverified(&path).unwrap_err();
        assert!(matches!(err, ShardError::Checksum { section: "header", .. }), "{err}");
    }

    #[test]
    fn wrong_magic_and_version_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        write(&path, 1000, &sample_docs(1000));
        let good = fs::read(&path).unwrap();

        let mut bytes = good.clone();
        bytes[0] = b'X';
        fs::write(&path, &bytes).unwrap();
        let msg = Shard::open_unverified(&path).unwrap_err().to_string();
        assert!(msg.contains("not a chameleon shard") && msg.contains("a.shard"), "{msg}");
        fs::write(&path, b"hello").unwrap();
        let msg = Shard::open(&path).unwrap_err().to_string();
        assert!(msg.contains("not a chameleon shard"), "{msg}");

        let mut bytes = good.clone();
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = Shard::open(&path).unwrap_err();
        assert!(matches!(err, ShardError::Version { found: 7, supported: 1, .. }));
        let msg = err.to_string();
        assert!(msg.contains("version 7") && msg.contains("version 1"), "{msg}");
    }

    #[test]
    fn corrupt_index_and_kind_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        let summary = write(&path, 1000, &sample_docs(1000));
        let good = fs::read(&path).unwrap();
        let shard = Shard::open(&path).unwrap();
        let (kinds_at, index_at) = (HEADER_LEN + ((shard.n_tokens() as usize * 2 + 7) & !7), shard.index_at);
        drop(shard);
        // Rewrites the payload checksum so only the structural checks can catch the damage.
        let rewrite = |bytes: &mut Vec<u8>| {
            let mut header = Header::decode(bytes.first_chunk().unwrap());
            header.payload_crc = crc32fast::hash(&bytes[HEADER_LEN..]);
            bytes[..HEADER_LEN].copy_from_slice(&header.encode());
            fs::write(&path, &bytes).unwrap();
        };
        let mut bytes = good.clone();
        bytes[kinds_at + 1] = 9;
        rewrite(&mut bytes);
        let msg = Shard::open(&path).unwrap_err().to_string();
        assert!(msg.contains("document 1 has unknown kind byte 9"), "{msg}");

        let mut bytes = good.clone();
        bytes[index_at + 16..index_at + 24].copy_from_slice(&1u64.to_le_bytes());
        rewrite(&mut bytes);
        let msg = Shard::open_unverified(&path).unwrap_err().to_string();
        assert!(msg.contains("index decreases"), "{msg}");

        let mut bytes = good.clone();
        let last = index_at + 8 * summary.n_docs as usize;
        bytes[last..last + 8].copy_from_slice(&(summary.n_tokens - 1).to_le_bytes());
        rewrite(&mut bytes);
        let msg = Shard::open_unverified(&path).unwrap_err().to_string();
        assert!(msg.contains("index ends at"), "{msg}");

        let mut bytes = good.clone();
        bytes[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&1000u16.to_le_bytes());
        rewrite(&mut bytes);
        let msg = Shard::open(&path).unwrap_err().to_string();
        assert!(msg.contains("token 1000 at position 0"), "{msg}");
        Shard::open_unverified(&path).unwrap();
    }

    #[test]
    fn temp_file_gone_after_finish_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        let tmp = tmp_path(&path);
        let mut w = ShardWriter::create(&path, 1000).unwrap();
        w.push(DocKind::Text, &[1, 2, 3]).unwrap();
        assert!(tmp.exists());
        assert!(!path.exists());
        w.finish().unwrap();
        assert!(!tmp.exists());
        assert!(path.exists());

        let other = dir.path().join("b.shard");
        let other_tmp = tmp_path(&other);
        let mut w = ShardWriter::create(&other, 1000).unwrap();
        w.push(DocKind::Text, &[1, 2, 3]).unwrap();
        drop(w);
        assert!(!other_tmp.exists());
        assert!(!other.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_writer_leaves_existing_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        write(&path, 1000, &sample_docs(1000));
        let before = fs::read(&path).unwrap();
        let mut w = ShardWriter::create(&path, 5000).unwrap();
        w.push(DocKind::Caption, &[4, 4, 4]).unwrap();
        drop(w);
        assert_eq!(fs::read(&path).unwrap(), before);
        assert!(!tmp_path(&path).exists());
        assert_eq!(Shard::open(&path).unwrap().len(), 5);
    }

    #[test]
    fn tokens_into_appends() {
        let dir = tempfile::tempdir().unwrap();
        for vocab in [1000, 100_000] {
            let path = dir.path().join(format!("v{vocab}.shard"));
            write(&path, vocab, &sample_docs(vocab));
            let shard = Shard::open(&path).unwrap();
            let mut out = vec![77, 88];
            shard.tokens_into(0, &mut out);
            shard.tokens_into(2, &mut out);
            shard.tokens_into(4, &mut out);
            assert_eq!(out, vec![77, 88, 1, 2, 3, 42]);
        }
    }

    #[test]
    fn shard_set_global_indexing_and_stats() {
        let dir = tempfile::tempdir().unwrap();
        let vocab = 1000;
        // Written out of order; read back sorted by name. The middle shard is empty.
        let shards: [(&str, Docs); 3] = [
            ("c.shard", vec![(DocKind::Interleaved, vec![600, 1, 2]), (DocKind::Text, vec![3])]),
            ("a.shard", vec![(DocKind::Text, vec![0, 10, 11]), (DocKind::Caption, vec![1, 500, 501, 999, 2])]),
            ("b.shard", vec![]),
        ];
        for (name, docs) in &shards {
            write(&dir.path().join(name), vocab, docs);
        }
        fs::write(dir.path().join("notes.txt"), "not a shard").unwrap();
        fs::write(dir.path().join("x.shard.tmp"), "stray temp").unwrap();
        for set in [ShardSet::open(dir.path()).unwrap(), ShardSet::open_unverified(dir.path()).unwrap()] {
            assert_eq!(set.shards().len(), 3);
            assert_eq!(set.shards()[0].path(), dir.path().join("a.shard"));
            assert_eq!(set.len(), 4);
            assert!(!set.is_empty());
            assert_eq!(set.n_tokens(), 12);
            assert_eq!(set.vocab_size(), vocab);
            assert_eq!(set.doc(0), (0, 0));
            assert_eq!(set.doc(1), (0, 1));
            assert_eq!(set.doc(2), (2, 0));
            assert_eq!(set.doc(3), (2, 1));
            let kinds: Vec<_> = (0..4).map(|i| set.kind(i)).collect();
            assert_eq!(kinds, [DocKind::Text, DocKind::Caption, DocKind::Interleaved, DocKind::Text]);
            let mut out = Vec::new();
            for i in 0..set.len() {
                let before = out.len();
                set.tokens_into(i, &mut out);
                assert_eq!(out.len() - before, set.doc_len(i));
            }
            assert_eq!(out, vec![0, 10, 11, 1, 500, 501, 999, 2, 600, 1, 2, 3]);

            let classify = |t: u32| match t {
                0..3 => TokenClass::Special,
                3..500 => TokenClass::Text,
                _ => TokenClass::Image,
            };
            let stats = set.stats(classify);
            assert_eq!(
                stats,
                ShardStats {
                    shards: 3,
                    documents: 4,
                    tokens: 12,
                    text_tokens: 3,
                    image_tokens: 4,
                    special_tokens: 5,
                    text_docs: 2,
                    caption_docs: 1,
                    interleaved_docs: 1,
                    sft_docs: 0,
                }
            );
            assert_eq!(set.shards()[1].stats(classify), ShardStats { shards: 1, ..ShardStats::default() });
        }
    }

    #[test]
    fn shard_set_refuses_empty_folder_and_mixed_vocab() {
        let dir = tempfile::tempdir().unwrap();
        let err = ShardSet::open(dir.path()).unwrap_err();
        assert!(matches!(err, ShardError::NoShards { .. }), "{err}");
        write(&dir.path().join("a.shard"), 1000, &[]);
        write(&dir.path().join("b.shard"), 2000, &[]);
        let err = ShardSet::open(dir.path()).unwrap_err();
        assert!(matches!(err, ShardError::VocabMismatch { found: 2000, expected: 1000, .. }), "{err}");
        assert_eq!(err.path(), dir.path().join("b.shard"));
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_document_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.shard");
        write(&path, 1000, &sample_docs(1000));
        Shard::open(&path).unwrap().doc_len(5);
    }
}
