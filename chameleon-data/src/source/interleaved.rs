//! Interleaved documents from OBELICS-style JSONL: `{"texts": [str|null, …], "images":
//! [path|null, …]}`, two lists of one length with exactly one non-null entry at each position.

use std::path::Path;

use serde_json::Value;

use crate::document::{BadRecord, DocKind, Document, ImageRef, Location, Segment};
use crate::source::jsonl::{ImagePaths, JsonlRecords, LineOrigin, existing_image, parse_object};

/// Reads `DocKind::Interleaved` documents from a JSONL file or a folder of them. Empty strings in
/// `texts` count as present but add no segment.
pub struct InterleavedSource {
    records: JsonlRecords,
}

impl InterleavedSource {
    /// Opens a JSONL file, or a folder whose `.jsonl` files are read recursively, sorted by path.
    /// Images must lie under `path` unless `images` says anywhere. A path that does not exist
    /// is a bad record naming it.
    pub fn open(path: &Path, images: ImagePaths) -> Result<Self, BadRecord> {
        Ok(Self { records: JsonlRecords::open(path, interleaved_line, images)? })
    }
}

impl Iterator for InterleavedSource {
    type Item = Result<Document, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        self.records.next()
    }
}

/// The list field `name`, each entry a string or null.
fn string_or_null_list<'a>(
    object: &'a serde_json::Map<String, Value>,
    name: &str,
    location: &Location,
) -> Result<Vec<Option<&'a str>>, BadRecord> {
    let list = match object.get(name) {
        Some(Value::Array(list)) => list,
        None => return Err(BadRecord::new(location.clone(), format!("missing field `{name}`"))),
        Some(_) => return Err(BadRecord::new(location.clone(), format!("field `{name}` is not a list"))),
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.as_str())),
            _ => Err(BadRecord::new(location.clone(), format!("{name}[{i}] is neither a string nor null"))),
        })
        .collect()
}

/// One line as an interleaved document.
fn interleaved_line(origin: &LineOrigin<'_>, line: &str, location: Location) -> Result<Document, BadRecord> {
    let object = parse_object(line, &location)?;
    let texts = string_or_null_list(&object, "texts", &location)?;
    let images = string_or_null_list(&object, "images", &location)?;
    if texts.len() != images.len() {
        let reason = format!("`texts` has {} entries but `images` has {}", texts.len(), images.len());
        return Err(BadRecord::new(location, reason));
    }
    let mut segments = Vec::with_capacity(texts.len());
    for (i, (text, image)) in texts.iter().zip(&images).enumerate() {
        match (text, image) {
            (Some(text), None) => {
                if !text.is_empty() {
                    segments.push(Segment::Text((*text).to_owned()));
                }
            }
            (None, Some(image)) => {
                let path = existing_image(origin, image, &format!("images[{i}]"), &location)?;
                segments.push(Segment::Image(ImageRef::File(path)));
            }
            (Some(_), Some(_)) => {
                return Err(BadRecord::new(location, format!("position {i} has both a text and an image")));
            }
            (None, None) => {
                return Err(BadRecord::new(location, format!("position {i} has neither a text nor an image")));
            }
        }
    }
    if segments.is_empty() {
        return Err(BadRecord::new(location, "no segments"));
    }
    Ok(Document { location, kind: DocKind::Interleaved, segments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fixtures::{write, write_png};

    #[test]
    fn segments_keep_their_order_and_images_resolve_against_the_jsonl_folder() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("obelics");
        write_png(&data.join("imgs/a.png"), 4, 4);
        write_png(&data.join("b.png"), 4, 4);
        let jsonl = data.join("docs.jsonl");
        let line = r#"{"texts": ["Intro", null, "", "Middle", null], "images": [null, "imgs/a.png", null, null, "b.png"], "url": "x"}"#;
        write(&jsonl, format!("\n{line}\n"));
        let docs: Vec<_> = InterleavedSource::open(&jsonl, ImagePaths::Inside).unwrap().map(Result::unwrap).collect();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].location, Location::line(&jsonl, 2));
        assert_eq!(docs[0].kind, DocKind::Interleaved);
        assert_eq!(
            docs[0].segments,
            vec![
                Segment::Text("Intro".into()),
                Segment::Image(ImageRef::File(data.join("imgs/a.png"))),
                Segment::Text("Middle".into()),
                Segment::Image(ImageRef::File(data.join("b.png"))),
            ]
        );
    }

    #[test]
    fn every_bad_line_is_named_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a.png"), 4, 4);
        let jsonl = dir.path().join("docs.jsonl");
        let lines = [
            r#"{"texts": ["a", null], "images": [null]}"#,
            r#"{"texts": ["a", "b"], "images": [null, "a.png"]}"#,
            r#"{"texts": ["a", null, null], "images": [null, "a.png", null]}"#,
            r#"{"texts": [null], "images": ["missing.png"]}"#,
            r#"{"texts": [], "images": []}"#,
            r#"{"texts": [""], "images": [null]}"#,
            r#"{"texts": ["a"]}"#,
            r#"{"texts": "a", "images": []}"#,
            r#"{"texts": [1], "images": [null]}"#,
            r#"{"texts": [nope]}"#,
            r#"{"texts": ["ok"], "images": [null]}"#,
        ];
        write(&jsonl, lines.join("\n"));
        let docs: Vec<_> = InterleavedSource::open(&jsonl, ImagePaths::Inside).unwrap().collect();
        assert_eq!(docs.len(), 11);
        let reason = |i: usize| {
            let bad = docs[i].as_ref().unwrap_err();
            assert_eq!(bad.location, Location::line(&jsonl, i + 1));
            bad.reason.clone()
        };
        assert_eq!(reason(0), "`texts` has 2 entries but `images` has 1");
        assert_eq!(reason(1), "position 1 has both a text and an image");
        assert_eq!(reason(2), "position 2 has neither a text nor an image");
        assert_eq!(reason(3), format!("images[0] file not found: {}", dir.path().join("missing.png").display()));
        assert_eq!(reason(4), "no segments");
        assert_eq!(reason(5), "no segments");
        assert_eq!(reason(6), "missing field `images`");
        assert_eq!(reason(7), "field `texts` is not a list");
        assert_eq!(reason(8), "texts[0] is neither a string nor null");
        assert!(reason(9).starts_with("line is not valid JSON"));
        assert_eq!(docs[10].as_ref().unwrap().segments, vec![Segment::Text("ok".into())]);
    }
}
