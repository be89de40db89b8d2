//! JSON Lines, one line at a time: numbered (1-based), checked for UTF-8, blank lines skipped;
//! and a reader over many JSONL files that turns each line into a document.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::document::{BadRecord, Document, Location};
use crate::source::walk::files_under;

/// The non-blank lines of one JSONL file, with their 1-based numbers.
pub(crate) struct JsonlLines {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    line: usize,
    buf: Vec<u8>,
}

impl JsonlLines {
    /// Opens `path`; an unreadable file is a bad record naming it.
    pub(crate) fn open(path: &Path) -> Result<Self, BadRecord> {
        let file = File::open(path).map_err(|e| BadRecord::new(Location::file(path), format!("cannot open: {e}")))?;
        Ok(Self { path: path.to_path_buf(), reader: Some(BufReader::new(file)), line: 0, buf: Vec::new() })
    }

    /// The file being read.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for JsonlLines {
    /// `(line number, line)`, or why a line cannot be read; a read error ends the file.
    type Item = Result<(usize, String), BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let reader = self.reader.as_mut()?;
            self.buf.clear();
            self.line += 1;
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.reader = None;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.reader = None;
                    return Some(Err(BadRecord::new(
                        Location::line(&self.path, self.line),
                        format!("cannot read: {e}"),
                    )));
                }
            }
            let mut bytes = self.buf.as_slice();
            if self.line == 1 {
                bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
            }
            let text = match std::str::from_utf8(bytes) {
                Ok(text) => text,
                Err(e) => {
                    let reason = format!("line is not valid UTF-8 (at byte {})", e.valid_up_to());
                    return Some(Err(BadRecord::new(Location::line(&self.path, self.line), reason)));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(Ok((self.line, text.trim_end_matches(['\n', '\r']).to_owned())));
        }
    }
}

/// Parses one line as a JSON object.
pub(crate) fn parse_object(line: &str, location: &Location) -> Result<Map<String, Value>, BadRecord> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(BadRecord::new(location.clone(), "line is not a JSON object")),
        Err(e) => Err(BadRecord::new(location.clone(), format!("line is not valid JSON: {e}"))),
    }
}

/// The string field `name` of `object`.
pub(crate) fn string_field<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    location: &Location,
) -> Result<&'a str, BadRecord> {
    match object.get(name) {
        Some(Value::String(s)) => Ok(s),
        None => Err(BadRecord::new(location.clone(), format!("missing field `{name}`"))),
        Some(_) => Err(BadRecord::new(location.clone(), format!("field `{name}` is not a string"))),
    }
}

/// Where the images a JSONL source names may live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImagePaths {
    /// Under the source's own folder (the folder given as its path, or the folder of the JSONL
    /// file given): no absolute paths, no `..` that climbs out. The default.
    #[default]
    Inside,
    /// Anywhere the paths say (the user opted out: `images_anywhere = true`).
    Anywhere,
}

/// The JSONL file a line comes from, and the folder its images must stay in.
pub(crate) struct LineOrigin<'a> {
    /// The JSONL file.
    pub(crate) jsonl: &'a Path,
    /// The source's root folder.
    root: &'a Path,
    /// Whether images may lie outside `root`.
    images: ImagePaths,
}

/// `path` with `.` dropped and each `..` taking away the named component before it; a `..`
/// with none before it stays (a relative path that starts above the working folder) or, at the
/// root, goes nowhere.
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    let mut depth = 0usize;
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if depth > 0 {
                    out.pop();
                    depth -= 1;
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            Component::Normal(_) => {
                out.push(c);
                depth += 1;
            }
            Component::RootDir | Component::Prefix(_) => out.push(c),
        }
    }
    out
}

/// Resolves an image path from a JSONL file against that file's folder, keeps it inside the
/// source's folder (unless the source allows [`ImagePaths::Anywhere`]), and checks (cheaply,
/// without decoding) that it names a file. `what` names the image in the error.
pub(crate) fn existing_image(
    origin: &LineOrigin<'_>,
    image: &str,
    what: &str,
    location: &Location,
) -> Result<PathBuf, BadRecord> {
    if image.is_empty() {
        return Err(BadRecord::new(location.clone(), format!("{what} is an empty path")));
    }
    let resolved = origin.jsonl.parent().unwrap_or(Path::new("")).join(image);
    if origin.images == ImagePaths::Inside {
        let inside =
            !Path::new(image).has_root() && lexically_normal(&resolved).starts_with(lexically_normal(origin.root));
        if !inside {
            return Err(BadRecord::new(
                location.clone(),
                format!(
                    "{what} {image:?} lies outside the source's folder {}; set `images_anywhere = true` on \
                     the source to allow it",
                    origin.root.display()
                ),
            ));
        }
    }
    match std::fs::metadata(&resolved) {
        Ok(meta) if meta.is_file() => Ok(resolved),
        Ok(_) => Err(BadRecord::new(location.clone(), format!("{what} is not a file: {}", resolved.display()))),
        Err(_) => Err(BadRecord::new(location.clone(), format!("{what} file not found: {}", resolved.display()))),
    }
}

/// Turns one line into a record (a document, or a document with more): `(its file, line,
/// location)`.
pub(crate) type ParseLine<T> = fn(&LineOrigin<'_>, &str, Location) -> Result<T, BadRecord>;

/// Every line of many JSONL files, in order, each turned into a record by `parse`.
pub(crate) struct JsonlRecords<T = Document> {
    files: std::vec::IntoIter<PathBuf>,
    errors: VecDeque<BadRecord>,
    current: Option<JsonlLines>,
    parse: ParseLine<T>,
    root: PathBuf,
    images: ImagePaths,
}

impl<T> JsonlRecords<T> {
    /// Reads the JSONL files under `path` (a file, or a folder read recursively and sorted)
    /// in order; their images must lie under `path` (its folder, for a file) unless `images`
    /// says anywhere. A path that does not exist is a bad record naming it.
    pub(crate) fn open(path: &Path, parse: ParseLine<T>, images: ImagePaths) -> Result<Self, BadRecord> {
        let files = files_under(path, &["jsonl"])?;
        let root =
            if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new("")).to_path_buf() };
        Ok(Self { files: files.files.into_iter(), errors: files.errors, current: None, parse, root, images })
    }
}

impl<T> Iterator for JsonlRecords<T> {
    type Item = Result<T, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(error) = self.errors.pop_front() {
                return Some(Err(error));
            }
            if let Some(lines) = self.current.as_mut() {
                match lines.next() {
                    Some(Ok((line, text))) => {
                        let location = Location::line(lines.path(), line);
                        let origin = LineOrigin { jsonl: lines.path(), root: &self.root, images: self.images };
                        return Some((self.parse)(&origin, &text, location));
                    }
                    Some(Err(bad)) => return Some(Err(bad)),
                    None => self.current = None,
                }
            }
            let path = self.files.next()?;
            match JsonlLines::open(&path) {
                Ok(lines) => self.current = Some(lines),
                Err(bad) => return Some(Err(bad)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fixtures::write;

    #[test]
    fn lines_are_numbered_from_one_blank_lines_skipped_and_bad_utf8_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        write(&path, b"\xef\xbb\xbf{\"a\": 1}\r\n\n   \n{\"b\": 2}\n\xff\xfe\n{\"c\": 3}");
        let items: Vec<_> = JsonlLines::open(&path).unwrap().collect();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], Ok((1, "{\"a\": 1}".to_owned())));
        assert_eq!(items[1], Ok((4, "{\"b\": 2}".to_owned())));
        let bad = items[2].as_ref().unwrap_err();
        assert_eq!(bad.location, Location::line(&path, 5));
        assert!(bad.reason.contains("UTF-8"), "{bad}");
        assert_eq!(items[3], Ok((6, "{\"c\": 3}".to_owned())));
    }

    #[test]
    fn paths_are_normalised_without_the_file_system() {
        let n = |p: &str| lexically_normal(Path::new(p));
        assert_eq!(n("../data/./img/../a.png"), PathBuf::from("../data/a.png"));
        assert_eq!(n("../data/../../x"), PathBuf::from("../../x"));
        assert_eq!(n("/../etc/passwd"), PathBuf::from("/etc/passwd"));
        // A source given as ../data keeps its images inside ../data, and no further up.
        assert!(n("../data/img/../a.png").starts_with(n("../data")));
        assert!(!n("../data/../other/a.png").starts_with(n("../data")));
    }

    #[test]
    fn objects_and_string_fields_are_checked() {
        let at = Location::line("f.jsonl", 3);
        assert!(parse_object("[1, 2]", &at).unwrap_err().reason.contains("not a JSON object"));
        assert!(parse_object("{\"a\": ", &at).unwrap_err().reason.starts_with("line is not valid JSON"));
        let object = parse_object(r#"{"a": "x", "b": 5}"#, &at).unwrap();
        assert_eq!(string_field(&object, "a", &at), Ok("x"));
        assert_eq!(string_field(&object, "b", &at).unwrap_err().reason, "field `b` is not a string");
        assert_eq!(string_field(&object, "c", &at).unwrap_err().reason, "missing field `c`");
    }
}
