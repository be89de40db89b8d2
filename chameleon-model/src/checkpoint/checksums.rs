//! Checksums of a checkpoint directory's files (a training checkpoint, a tokenizer): written
//! last, before the directory is renamed into place, and checked before any of its files is
//! trusted. A flipped bit or a truncated file
//! is found by name instead of being trained on.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file in a checkpoint directory that lists the others' sizes and CRC-32s.
pub const CHECKSUMS_FILE: &str = "checksums.json";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Entry {
    bytes: u64,
    crc32: String,
}

/// Size and CRC-32 of one file, streamed.
fn entry(path: &Path) -> Result<Entry, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("cannot read: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Entry { bytes, crc32: format!("{:08x}", hasher.finalize()) })
}

/// Writes `dir/checksums.json` for every regular file in `dir` (itself excluded).
pub fn write(dir: &Path) -> Result<(), String> {
    let mut sums = BTreeMap::new();
    let list = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot list: {e}", dir.display()))?;
    for e in list {
        let path = e.map_err(|e| format!("{}: cannot list: {e}", dir.display()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if path.is_file() && name != CHECKSUMS_FILE {
            sums.insert(name, entry(&path).map_err(|m| format!("{}: {m}", path.display()))?);
        }
    }
    let path = dir.join(CHECKSUMS_FILE);
    let json = serde_json::to_string_pretty(&sums).expect("JSON of strings and numbers");
    std::fs::write(&path, json).map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// What checking a directory found.
#[derive(Debug, PartialEq)]
pub enum Verified {
    /// Every listed file is present with its size and checksum.
    Intact,
    /// No checksums.json: a checkpoint written before checksums existed; nothing to check.
    Unchecked,
}

/// A file of a checkpoint that is not as it was written.
#[derive(Debug, PartialEq)]
pub struct Damaged {
    /// The file.
    pub file: std::path::PathBuf,
    /// What differs.
    pub reason: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)
    }
}

/// Checks every file listed in `dir/checksums.json`. The error names the first damaged file
/// and what differs.
pub fn verify(dir: &Path) -> Result<Verified, Damaged> {
    let path = dir.join(CHECKSUMS_FILE);
    let damaged = |file: &Path, reason: String| Damaged { file: file.to_path_buf(), reason };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verified::Unchecked),
        Err(e) => return Err(damaged(&path, format!("cannot read: {e}"))),
    };
    let sums: BTreeMap<String, Entry> =
        serde_json::from_str(&text).map_err(|e| damaged(&path, format!("damaged: {e}")))?;
    for (name, want) in &sums {
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(damaged(&path, format!("lists {name:?}, which is not a file of this directory")));
        }
        let file = dir.join(name);
        if !file.is_file() {
            return Err(damaged(&file, format!("missing (listed in {CHECKSUMS_FILE})")));
        }
        let got = entry(&file).map_err(|m| damaged(&file, m))?;
        if got.bytes != want.bytes {
            return Err(damaged(&file, format!("damaged: {} bytes, {} when written", got.bytes, want.bytes)));
        }
        if got.crc32 != want.crc32 {
            return Err(damaged(
                &file,
                format!("damaged: CRC-32 {}, {} when written (a changed byte)", got.crc32, want.crc32),
            ));
        }
    }
    Ok(Verified::Intact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_bit_or_a_cut_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(verify(d), Ok(Verified::Unchecked));
        std::fs::write(d.join("model.bpk"), vec![7u8; 3000]).unwrap();
        std::fs::write(d.join("state.json"), "{}").unwrap();
        write(d).unwrap();
        assert_eq!(verify(d), Ok(Verified::Intact));
        let mut bytes = std::fs::read(d.join("model.bpk")).unwrap();
        bytes[1234] ^= 0x10;
        std::fs::write(d.join("model.bpk"), &bytes).unwrap();
        let err = verify(d).unwrap_err().to_string();
        assert!(err.contains("model.bpk") && err.contains("CRC-32"), "{err}");
        std::fs::write(d.join("model.bpk"), &bytes[..100]).unwrap();
        assert!(verify(d).unwrap_err().reason.contains("100 bytes, 3000 when written"));
        std::fs::remove_file(d.join("model.bpk")).unwrap();
        assert!(verify(d).unwrap_err().reason.contains("missing"));
    }
}
