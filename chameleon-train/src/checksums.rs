//! Checksums of a checkpoint directory's files: written last, before the directory is renamed
//! into place, and checked before any of its files is trusted. A flipped bit or a truncated file
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
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
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
            sums.insert(name, entry(&path)?);
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

/// Checks every file listed in `dir/checksums.json`. The error names the first damaged file
/// and what differs.
pub fn verify(dir: &Path) -> Result<Verified, String> {
    let path = dir.join(CHECKSUMS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verified::Unchecked),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let sums: BTreeMap<String, Entry> =
        serde_json::from_str(&text).map_err(|e| format!("{}: damaged: {e}", path.display()))?;
    for (name, want) in &sums {
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(format!("{}: lists {name:?}, which is not a file of this directory", path.display()));
        }
        let file = dir.join(name);
        if !file.is_file() {
            return Err(format!("{}: missing (listed in {CHECKSUMS_FILE})", file.display()));
        }
        let got = entry(&file)?;
        if got.bytes != want.bytes {
            return Err(format!("{}: damaged: {} bytes, {} when written", file.display(), got.bytes, want.bytes));
        }
        if got.crc32 != want.crc32 {
            return Err(format!(
                "{}: damaged: CRC-32 {}, {} when written (a changed byte)",
                file.display(),
                got.crc32,
                want.crc32
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
        let err = verify(d).unwrap_err();
        assert!(err.contains("model.bpk") && err.contains("CRC-32"), "{err}");
        std::fs::write(d.join("model.bpk"), &bytes[..100]).unwrap();
        assert!(verify(d).unwrap_err().contains("100 bytes, 3000 when written"));
        std::fs::remove_file(d.join("model.bpk")).unwrap();
        assert!(verify(d).unwrap_err().contains("missing"));
    }
}
