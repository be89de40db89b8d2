//! The files a source reads: the path itself when it is a file, or every file under a folder
//! with one of the wanted extensions, recursively, sorted by path.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use crate::document::{BadRecord, Location};

/// The files to read, and the folders under the root that could not be listed.
#[derive(Debug, Default)]
pub(crate) struct Files {
    /// Sorted by path.
    pub(crate) files: Vec<PathBuf>,
    /// One bad record per folder (below the root) that could not be read.
    pub(crate) errors: VecDeque<BadRecord>,
}

/// Whether `path` ends in one of `extensions` (lowercase, without the dot), ignoring case.
pub(crate) fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|wanted| e.eq_ignore_ascii_case(wanted)))
}

/// `root` itself when it is a file (whatever its extension), else every file under it whose
/// extension is one of `extensions`. A root that does not exist or cannot be read is an error.
/// Symbolic links to files are followed; links to folders are not (no cycles).
pub(crate) fn files_under(root: &Path, extensions: &[&str]) -> Result<Files, BadRecord> {
    let meta = fs::metadata(root).map_err(|e| BadRecord::new(Location::file(root), format!("cannot open: {e}")))?;
    if !meta.is_dir() {
        return Ok(Files { files: vec![root.to_path_buf()], errors: VecDeque::new() });
    }
    let mut out = Files::default();
    let mut folders = vec![root.to_path_buf()];
    let mut top = true;
    while let Some(folder) = folders.pop() {
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if top => return Err(BadRecord::new(Location::file(&folder), format!("cannot list folder: {e}"))),
            Err(e) => {
                out.errors.push_back(BadRecord::new(Location::file(&folder), format!("cannot list folder: {e}")));
                continue;
            }
        };
        top = false;
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    out.errors.push_back(BadRecord::new(Location::file(&folder), format!("cannot list folder: {e}")));
                    continue;
                }
            };
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                folders.push(path);
            } else if has_extension(&path, extensions) && (kind.is_file() || path.is_file()) {
                out.files.push(path);
            }
        }
    }
    out.files.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fixtures::write;

    #[test]
    fn a_folder_is_walked_recursively_sorted_and_filtered_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("b.txt"), "b");
        write(&dir.path().join("a/z.TXT"), "z");
        write(&dir.path().join("a/y.jsonl"), "{}");
        write(&dir.path().join("a/x.md"), "x");
        let found = files_under(dir.path(), &["txt", "jsonl"]).unwrap();
        let names: Vec<_> = found.files.iter().map(|p| p.strip_prefix(dir.path()).unwrap().to_path_buf()).collect();
        assert_eq!(names, vec![PathBuf::from("a/y.jsonl"), PathBuf::from("a/z.TXT"), PathBuf::from("b.txt")]);
        assert!(found.errors.is_empty());
    }

    #[test]
    fn a_file_is_taken_whatever_its_extension_and_a_missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.md");
        write(&file, "x");
        assert_eq!(files_under(&file, &["txt"]).unwrap().files, vec![file]);
        let missing = dir.path().join("nope");
        let err = files_under(&missing, &["txt"]).unwrap_err();
        assert_eq!(err.location, Location::file(&missing));
        assert!(err.reason.starts_with("cannot open"), "{err}");
    }
}
