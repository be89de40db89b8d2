//! Image-caption pairs from JSONL: one `{"image": "path", "caption": "…"}` a line, relative
//! image paths resolved against the JSONL file's folder.

use std::path::Path;

use crate::document::{BadRecord, DocKind, Document, ImageRef, Location, Segment};
use crate::source::jsonl::{ImagePaths, JsonlRecords, LineOrigin, existing_image, parse_object, string_field};

/// Reads `DocKind::Caption` documents, `[Image, Text]`, from a JSONL file or a folder of them.
pub struct CaptionSource {
    records: JsonlRecords,
}

impl CaptionSource {
    /// Opens a JSONL file, or a folder whose `.jsonl` files are read recursively, sorted by path.
    /// Images must lie under `path` unless `images` says anywhere. A path that does not exist
    /// is a bad record naming it.
    pub fn open(path: &Path, images: ImagePaths) -> Result<Self, BadRecord> {
        Ok(Self { records: JsonlRecords::open(path, caption_line, images)? })
    }
}

impl Iterator for CaptionSource {
    type Item = Result<Document, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        self.records.next()
    }
}

/// One line as a caption document; the image must exist (it is not decoded here).
fn caption_line(origin: &LineOrigin<'_>, line: &str, location: Location) -> Result<Document, BadRecord> {
    let object = parse_object(line, &location)?;
    let image = string_field(&object, "image", &location)?;
    let caption = string_field(&object, "caption", &location)?;
    if caption.trim().is_empty() {
        return Err(BadRecord::new(location, "empty caption"));
    }
    let image = existing_image(origin, image, "image", &location)?;
    Ok(Document {
        location,
        kind: DocKind::Caption,
        segments: vec![Segment::Image(ImageRef::File(image)), Segment::Text(caption.to_owned())],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fixtures::{write, write_png};

    #[test]
    fn captions_resolve_relative_images_against_the_jsonl_folder() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_png(&data.join("img/cat.png"), 4, 4);
        let absolute = dir.path().join("elsewhere/dog.png");
        write_png(&absolute, 4, 4);
        let jsonl = data.join("pairs.jsonl");
        let lines = format!(
            "{}\n{}\n",
            r#"{"image": "img/cat.png", "caption": "a cat"}"#,
            serde_json::json!({"image": absolute, "caption": "a dog"})
        );
        write(&jsonl, lines);
        let docs: Vec<_> = CaptionSource::open(&jsonl, ImagePaths::Anywhere).unwrap().map(Result::unwrap).collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].location, Location::line(&jsonl, 1));
        assert_eq!(docs[0].kind, DocKind::Caption);
        assert_eq!(
            docs[0].segments,
            vec![Segment::Image(ImageRef::File(data.join("img/cat.png"))), Segment::Text("a cat".to_owned())]
        );
        assert_eq!(docs[1].segments[0], Segment::Image(ImageRef::File(absolute)));
    }

    #[test]
    fn images_outside_the_source_folder_are_bad_records_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_png(&data.join("img/cat.png"), 4, 4);
        write_png(&dir.path().join("secret.png"), 4, 4);
        let lines = [
            r#"{"image": "img/cat.png", "caption": "inside"}"#.to_string(),
            r#"{"image": "img/../img/cat.png", "caption": "inside, with a detour"}"#.to_string(),
            r#"{"image": "../secret.png", "caption": "climbs out"}"#.to_string(),
            serde_json::json!({"image": dir.path().join("secret.png"), "caption": "absolute"}).to_string(),
            serde_json::json!({"image": "/etc/passwd", "caption": "absolute"}).to_string(),
        ];
        write(&data.join("pairs.jsonl"), lines.join("\n"));
        let read = |images| CaptionSource::open(&data, images).unwrap().collect::<Vec<_>>();
        let inside = read(ImagePaths::Inside);
        assert!(inside[0].is_ok() && inside[1].is_ok());
        for (i, r) in inside.iter().enumerate().skip(2) {
            let bad = r.as_ref().unwrap_err();
            assert_eq!(bad.location, Location::line(data.join("pairs.jsonl"), i + 1));
            assert!(
                bad.reason.contains("outside the source's folder") && bad.reason.contains("images_anywhere"),
                "{bad}"
            );
        }
        let anywhere = read(ImagePaths::Anywhere);
        assert!(anywhere[..4].iter().all(Result::is_ok));
        // /etc/passwd is allowed as a path, and is a file: it fails later, when decoded.
        assert!(anywhere[4].is_ok());
    }

    #[test]
    fn bad_lines_are_named_by_line_number_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("ok.png"), 4, 4);
        let jsonl = dir.path().join("pairs.jsonl");
        let lines = [
            r#"{"image": "ok.png", "caption": "fine"}"#,
            r#"{"image": "ok.png", "caption": "#,
            r#"{"caption": "no image"}"#,
            r#"{"image": "ok.png"}"#,
            r#"{"image": 3, "caption": "x"}"#,
            r#"{"image": "ok.png", "caption": ""}"#,
            r#"{"image": "gone.png", "caption": "missing"}"#,
            r#"{"image": "", "caption": "empty path"}"#,
            r#""just a string""#,
        ];
        write(&jsonl, lines.join("\n"));
        let docs: Vec<_> = CaptionSource::open(&jsonl, ImagePaths::Inside).unwrap().collect();
        assert_eq!(docs.len(), 9);
        assert!(docs[0].is_ok());
        let bad: Vec<_> = docs[1..].iter().map(|d| d.as_ref().unwrap_err()).collect();
        for (i, b) in bad.iter().enumerate() {
            assert_eq!(b.location, Location::line(&jsonl, i + 2), "{b}");
        }
        assert!(bad[0].reason.starts_with("line is not valid JSON"));
        assert_eq!(bad[1].reason, "missing field `image`");
        assert_eq!(bad[2].reason, "missing field `caption`");
        assert_eq!(bad[3].reason, "field `image` is not a string");
        assert_eq!(bad[4].reason, "empty caption");
        assert_eq!(bad[5].reason, format!("image file not found: {}", dir.path().join("gone.png").display()));
        assert_eq!(bad[6].reason, "image is an empty path");
        assert_eq!(bad[7].reason, "line is not a JSON object");
    }

    #[test]
    fn a_folder_of_jsonl_files_is_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("b/x.png"), 4, 4);
        write(&dir.path().join("b/2.jsonl"), r#"{"image": "x.png", "caption": "second"}"#);
        write(&dir.path().join("a.jsonl"), r#"{"image": "b/x.png", "caption": "first"}"#);
        let captions: Vec<_> = CaptionSource::open(dir.path(), ImagePaths::Inside)
            .unwrap()
            .map(|d| d.unwrap().segments[1].clone())
            .collect();
        assert_eq!(captions, vec![Segment::Text("first".into()), Segment::Text("second".into())]);
    }
}
