//! Text-only sources: a plain text file is one document; a `.jsonl` file holds one
//! `{"text": "…"}` document a line; a folder holds both kinds, read recursively in path order.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::document::{BadRecord, DocKind, Document, Location, Segment};
use crate::source::jsonl::{JsonlLines, parse_object, string_field};
use crate::source::walk::{files_under, has_extension};

/// Reads text documents from a text file, a JSONL file or a folder of them.
pub struct TextSource {
    files: std::vec::IntoIter<PathBuf>,
    errors: VecDeque<BadRecord>,
    lines: Option<JsonlLines>,
}

impl TextSource {
    /// Opens `path`: a `.jsonl` file, any other file (read as plain text), or a folder whose
    /// `.txt` and `.jsonl` files are read recursively, sorted by path. A path that does not
    /// exist is a bad record naming it.
    pub fn open(path: &Path) -> Result<Self, BadRecord> {
        let found = files_under(path, &["txt", "jsonl"])?;
        Ok(Self { files: found.files.into_iter(), errors: found.errors, lines: None })
    }
}

impl Iterator for TextSource {
    type Item = Result<Document, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(error) = self.errors.pop_front() {
                return Some(Err(error));
            }
            if let Some(lines) = self.lines.as_mut() {
                match lines.next() {
                    Some(Ok((line, text))) => return Some(text_line(lines.path(), line, &text)),
                    Some(Err(bad)) => return Some(Err(bad)),
                    None => self.lines = None,
                }
            }
            let path = self.files.next()?;
            if has_extension(&path, &["jsonl"]) {
                match JsonlLines::open(&path) {
                    Ok(lines) => self.lines = Some(lines),
                    Err(bad) => return Some(Err(bad)),
                }
            } else {
                return Some(text_file(&path));
            }
        }
    }
}

/// A whole plain text file as one document.
fn text_file(path: &Path) -> Result<Document, BadRecord> {
    let location = Location::file(path);
    let bytes = std::fs::read(path).map_err(|e| BadRecord::new(location.clone(), format!("cannot read: {e}")))?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        BadRecord::new(location.clone(), format!("file is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })?;
    text_document(location, text)
}

/// One `{"text": "…"}` line as a document.
fn text_line(path: &Path, line: usize, json: &str) -> Result<Document, BadRecord> {
    let location = Location::line(path, line);
    let object = parse_object(json, &location)?;
    let text = string_field(&object, "text", &location)?;
    text_document(location, text)
}

fn text_document(location: Location, text: &str) -> Result<Document, BadRecord> {
    if text.trim().is_empty() {
        return Err(BadRecord::new(location, "empty text"));
    }
    Ok(Document { location, kind: DocKind::Text, segments: vec![Segment::Text(text.to_owned())] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fixtures::write;

    fn texts(docs: &[Result<Document, BadRecord>]) -> Vec<Result<String, String>> {
        docs.iter()
            .map(|d| match d {
                Ok(doc) => {
                    assert_eq!(doc.kind, DocKind::Text);
                    match doc.segments.as_slice() {
                        [Segment::Text(t)] => Ok(t.clone()),
                        other => panic!("one text segment expected: {other:?}"),
                    }
                }
                Err(bad) => Err(bad.to_string()),
            })
            .collect()
    }

    #[test]
    fn a_text_file_is_one_document_with_its_whole_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("book.md");
        write(&path, "Line one.\n\nLine two.\n");
        let docs: Vec<_> = TextSource::open(&path).unwrap().collect();
        assert_eq!(texts(&docs), vec![Ok("Line one.\n\nLine two.\n".to_owned())]);
        assert_eq!(docs[0].as_ref().unwrap().location, Location::file(&path));
    }

    #[test]
    fn a_jsonl_file_gives_one_document_a_line_and_names_bad_lines_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let lines = [
            r#"{"text": "first"}"#,
            "",
            r#"{"text": "second", "id": 7}"#,
            r#"{"text": "#,
            r#"{"body": "no text"}"#,
            r#"{"text": 42}"#,
            r#"{"text": "  "}"#,
            r#"{"text": "last"}"#,
        ];
        let mut bytes = lines.join("\n").into_bytes();
        bytes.extend_from_slice(b"\n{\"text\": \"caf\xe9\"}\n");
        write(&path, bytes);
        let docs: Vec<_> = TextSource::open(&path).unwrap().collect();
        let at = |n: usize| format!("{}:{n}", path.display());
        let got = texts(&docs);
        assert_eq!(got[0], Ok("first".to_owned()));
        assert_eq!(docs[0].as_ref().unwrap().location, Location::line(&path, 1));
        assert_eq!(got[1], Ok("second".to_owned()));
        assert_eq!(docs[1].as_ref().unwrap().location, Location::line(&path, 3));
        assert!(got[2].as_ref().unwrap_err().starts_with(&format!("{}: line is not valid JSON", at(4))));
        assert_eq!(got[3], Err(format!("{}: missing field `text`", at(5))));
        assert_eq!(got[4], Err(format!("{}: field `text` is not a string", at(6))));
        assert_eq!(got[5], Err(format!("{}: empty text", at(7))));
        assert_eq!(got[6], Ok("last".to_owned()));
        assert!(got[7].as_ref().unwrap_err().starts_with(&format!("{}: line is not valid UTF-8", at(9))));
        assert_eq!(got.len(), 8);
    }

    #[test]
    fn a_folder_is_read_recursively_in_path_order_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("b.txt"), "bee");
        write(&dir.path().join("a/1.jsonl"), "{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
        write(&dir.path().join("a/2.txt"), b"bad \xc3\x28 utf8");
        write(&dir.path().join("c.txt"), "  \n");
        write(&dir.path().join("ignored.md"), "not read");
        let docs: Vec<_> = TextSource::open(dir.path()).unwrap().collect();
        let got = texts(&docs);
        assert_eq!(got[0], Ok("one".to_owned()));
        assert_eq!(got[1], Ok("two".to_owned()));
        let bad = docs[2].as_ref().unwrap_err();
        assert_eq!(bad.location, Location::file(dir.path().join("a/2.txt")));
        assert_eq!(bad.reason, "file is not valid UTF-8 (at byte 4)");
        assert_eq!(got[3], Ok("bee".to_owned()));
        assert_eq!(docs[4].as_ref().unwrap_err().reason, "empty text");
        assert_eq!(docs.len(), 5);
    }

    #[test]
    fn a_missing_path_is_a_bad_record_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.jsonl");
        let err = TextSource::open(&missing).err().unwrap();
        assert_eq!(err.location, Location::file(&missing));
    }
}
