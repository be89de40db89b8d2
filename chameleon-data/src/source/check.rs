//! One entry point for every format: [`open`] a source by name, or [`check`] it: read every
//! record, decode every image, and count what is usable and what is not.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::document::{BadRecord, DocKind, Document, ImageRef, Location, Segment};
use crate::source::{
    CaptionSource, HtmlSource, ImagePaths, InterleavedSource, SftSource, TextSource, WebDatasetSource,
};

/// The side images are decoded to when checked: small, since only decoding errors matter.
const CHECK_SIDE: usize = 8;

/// The formats a source can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceFormat {
    /// Plain text files, or `{"text": …}` JSONL ([`TextSource`]).
    Text,
    /// `{"image": …, "caption": …}` JSONL ([`CaptionSource`]).
    Caption,
    /// OBELICS-style `{"texts": […], "images": […]}` JSONL ([`InterleavedSource`]).
    Interleaved,
    /// WebDataset / img2dataset tar shards ([`WebDatasetSource`]).
    WebDataset,
    /// A folder of HTML pages ([`HtmlSource`]).
    Html,
    /// SFT conversations `{"category", "messages": [{"role", "content"}]}` JSONL ([`SftSource`]).
    Sft,
}

impl SourceFormat {
    /// Every format, in the order of [`SourceFormat::name`]s in help texts.
    pub const ALL: [SourceFormat; 6] = [
        SourceFormat::Text,
        SourceFormat::Caption,
        SourceFormat::Interleaved,
        SourceFormat::WebDataset,
        SourceFormat::Html,
        SourceFormat::Sft,
    ];

    /// The name [`FromStr`] accepts: `text`, `caption`, `interleaved`, `webdataset`, `html` or
    /// `sft`.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Text => "text",
            SourceFormat::Caption => "caption",
            SourceFormat::Interleaved => "interleaved",
            SourceFormat::WebDataset => "webdataset",
            SourceFormat::Html => "html",
            SourceFormat::Sft => "sft",
        }
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that is none of `text|caption|interleaved|webdataset|html|sft`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown source format `{0}`: expected one of text, caption, interleaved, webdataset, html, sft")]
pub struct UnknownSourceFormat(pub String);

impl FromStr for SourceFormat {
    type Err = UnknownSourceFormat;

    /// Parses a format name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SourceFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownSourceFormat(s.to_owned()))
    }
}

/// Settings the readers share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOptions {
    /// HTML images smaller than this on a side are icons and left out (default 32).
    pub min_image_side: u32,
    /// SFT: read only the conversations of this category (default: all).
    pub category: Option<String>,
    /// JSONL sources: whether images may lie outside the source's folder (default: no).
    pub image_paths: ImagePaths,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self { min_image_side: 32, category: None, image_paths: ImagePaths::Inside }
    }
}

/// Opens a source of `format` at `path` as an iterator of documents and bad records. A path
/// that cannot be opened (it does not exist, …) is a bad record naming it.
pub fn open(
    format: SourceFormat,
    path: &Path,
    options: &SourceOptions,
) -> Result<Box<dyn Iterator<Item = Result<Document, BadRecord>>>, BadRecord> {
    Ok(match format {
        SourceFormat::Text => Box::new(TextSource::open(path)?),
        SourceFormat::Caption => Box::new(CaptionSource::open(path, options.image_paths)?),
        SourceFormat::Interleaved => Box::new(InterleavedSource::open(path, options.image_paths)?),
        SourceFormat::WebDataset => Box::new(WebDatasetSource::open(path)?),
        SourceFormat::Html => Box::new(HtmlSource::open(path, options.min_image_side)?),
        SourceFormat::Sft => Box::new(SftSource::open(path, options.category.as_deref(), options.image_paths)?),
    })
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Documents whose every image decodes.
    pub documents: usize,
    /// Of those, text-only documents.
    pub text_documents: usize,
    /// Of those, image-caption documents.
    pub caption_documents: usize,
    /// Of those, interleaved documents.
    pub interleaved_documents: usize,
    /// Of those, SFT conversations.
    pub sft_documents: usize,
    /// Images in the usable documents.
    pub images: usize,
    /// UTF-8 bytes of text in the usable documents.
    pub text_bytes: u64,
    /// Icons the HTML reader left out (0 for other formats).
    pub dropped_icons: usize,
    /// Every record that cannot be used, in reading order.
    pub bad: Vec<BadRecord>,
}

impl CheckReport {
    /// Whether every record is usable.
    pub fn is_clean(&self) -> bool {
        self.bad.is_empty()
    }

    /// Counts a document whose images all decode, or records the first image that does not.
    fn add(&mut self, doc: &Document) {
        if let Some(bad) = doc.images().find_map(|image| undecodable(image, &doc.location)) {
            self.bad.push(bad);
            return;
        }
        self.documents += 1;
        match doc.kind {
            DocKind::Text => self.text_documents += 1,
            DocKind::Caption => self.caption_documents += 1,
            DocKind::Interleaved => self.interleaved_documents += 1,
            DocKind::Sft => self.sft_documents += 1,
        }
        for segment in &doc.segments {
            match segment {
                Segment::Text(text) => self.text_bytes += text.len() as u64,
                Segment::Image(_) => self.images += 1,
                Segment::EndOfTurn => {}
            }
        }
    }
}

/// A bad record at `location` when `image` does not decode fully.
fn undecodable(image: &ImageRef, location: &Location) -> Option<BadRecord> {
    let decoded = match image {
        ImageRef::File(path) => crate::image::load_image(path, CHECK_SIDE),
        ImageRef::Bytes { origin, bytes } => crate::image::decode_image(bytes, Path::new(origin), CHECK_SIDE),
    };
    decoded.err().map(|e| BadRecord::new(location.clone(), e.to_string()))
}

impl fmt::Display for CheckReport {
    /// Counts first, then one line per bad record: `file:line (or tar member): reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "documents: {} ok ({} text, {} caption, {} interleaved, {} sft)",
            self.documents, self.text_documents, self.caption_documents, self.interleaved_documents, self.sft_documents
        )?;
        writeln!(f, "images: {}", self.images)?;
        writeln!(f, "text bytes: {}", self.text_bytes)?;
        if self.dropped_icons > 0 {
            writeln!(f, "dropped icons: {}", self.dropped_icons)?;
        }
        writeln!(f, "bad records: {}", self.bad.len())?;
        for bad in &self.bad {
            writeln!(f, "  {bad}")?;
        }
        Ok(())
    }
}

/// Counts every record of `records` into `report`.
fn tally(records: &mut dyn Iterator<Item = Result<Document, BadRecord>>, report: &mut CheckReport) {
    for record in records {
        match record {
            Ok(doc) => report.add(&doc),
            Err(bad) => report.bad.push(bad),
        }
    }
}

/// Reads every record of a source, decodes every image of every document (at a small side, to
/// catch truncated and corrupt files), and counts. Never stops early: an unopenable path is the
/// report's one bad record.
pub fn check(format: SourceFormat, path: &Path, options: &SourceOptions) -> CheckReport {
    let mut report = CheckReport::default();
    if format == SourceFormat::Html {
        match HtmlSource::open(path, options.min_image_side) {
            Ok(mut source) => {
                tally(&mut source, &mut report);
                report.dropped_icons = source.dropped_icons();
            }
            Err(bad) => report.bad.push(bad),
        }
        return report;
    }
    match open(format, path, options) {
        Ok(mut source) => tally(&mut source, &mut report),
        Err(bad) => report.bad.push(bad),
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fixtures::{png_bytes, write, write_png};

    #[test]
    fn formats_parse_from_their_names() {
        for format in SourceFormat::ALL {
            assert_eq!(format.name().parse::<SourceFormat>(), Ok(format));
            assert_eq!(format.to_string().to_uppercase().parse::<SourceFormat>(), Ok(format));
        }
        let err = "tsv".parse::<SourceFormat>().unwrap_err();
        assert_eq!(err, UnknownSourceFormat("tsv".into()));
        assert!(err.to_string().contains("webdataset"));
        assert_eq!(SourceOptions::default().min_image_side, 32);
    }

    #[test]
    fn opening_a_missing_path_is_a_bad_record_naming_it_for_every_format() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        for format in SourceFormat::ALL {
            let err = open(format, &missing, &SourceOptions::default()).err().unwrap();
            assert_eq!(err.location, Location::file(&missing), "{format}");
            let report = check(format, &missing, &SourceOptions::default());
            assert_eq!(report.documents, 0);
            assert_eq!(report.bad, vec![err]);
        }
    }

    #[test]
    fn check_decodes_images_and_reports_truncated_ones() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("good.png"), 16, 16);
        let png = png_bytes(16, 16);
        write(&dir.path().join("cut.png"), &png[..png.len() / 2]);
        write(&dir.path().join("junk.png"), "not an image");
        let jsonl = dir.path().join("pairs.jsonl");
        let lines = [
            r#"{"image": "good.png", "caption": "fine"}"#,
            r#"{"image": "cut.png", "caption": "truncated"}"#,
            r#"{"image": "junk.png", "caption": "corrupt"}"#,
            r#"{"image": "gone.png", "caption": "missing"}"#,
            r#"{"image": "good.png", "caption": "fine again"}"#,
        ];
        write(&jsonl, lines.join("\n"));
        let report = check(SourceFormat::Caption, &jsonl, &SourceOptions::default());
        assert_eq!(report.documents, 2);
        assert_eq!(report.caption_documents, 2);
        assert_eq!(report.images, 2);
        assert_eq!(report.text_bytes, ("fine".len() + "fine again".len()) as u64);
        let at: Vec<_> = report.bad.iter().map(|b| b.location.clone()).collect();
        assert_eq!(at, vec![Location::line(&jsonl, 2), Location::line(&jsonl, 3), Location::line(&jsonl, 4)]);
        assert!(report.bad[0].reason.contains("cut.png") && report.bad[0].reason.contains("cannot decode"));
        assert!(report.bad[1].reason.contains("junk.png"));
        assert!(!report.is_clean());
        let shown = report.to_string();
        assert!(shown.starts_with("documents: 2 ok (0 text, 2 caption, 0 interleaved, 0 sft)\nimages: 2\n"), "{shown}");
        assert!(shown.contains("bad records: 3\n"), "{shown}");
        assert!(shown.contains(&format!("  {}:4: image file not found: ", jsonl.display())), "{shown}");
    }

    #[test]
    fn check_decodes_image_bytes_from_tar_shards() {
        let dir = tempfile::tempdir().unwrap();
        let png = png_bytes(16, 16);
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in [("a.png", &png[..]), ("a.txt", b"good"), ("b.png", &png[..20]), ("b.txt", b"cut")] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append_data(&mut header, name, data).unwrap();
        }
        let shard = dir.path().join("s.tar");
        write(&shard, builder.into_inner().unwrap());
        let report = check(SourceFormat::WebDataset, &shard, &SourceOptions::default());
        assert_eq!((report.documents, report.images, report.text_bytes), (1, 1, 4));
        assert_eq!(report.bad.len(), 1);
        assert_eq!(report.bad[0].location, Location::member(&shard, "b"));
        assert!(report.bad[0].reason.contains(&format!("{}:b.png", shard.display())), "{}", report.bad[0]);
    }

    #[test]
    fn check_counts_kinds_text_and_dropped_icons() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("t/a.txt"), "hello");
        write(&dir.path().join("t/b.jsonl"), "{\"text\": \"héllo\"}\n{\"text\": \"\"}\n");
        let report = check(SourceFormat::Text, &dir.path().join("t"), &SourceOptions::default());
        assert_eq!((report.documents, report.text_documents, report.images, report.text_bytes), (2, 2, 0, 11));
        assert_eq!(report.bad.len(), 1);
        assert_eq!(report.bad[0].location, Location::line(dir.path().join("t/b.jsonl"), 2));

        write_png(&dir.path().join("h/big.png"), 40, 40);
        write_png(&dir.path().join("h/icon.png"), 8, 8);
        write(&dir.path().join("h/p.html"), "<p>Hi</p><img src=icon.png><img src=big.png>");
        let report = check(SourceFormat::Html, &dir.path().join("h"), &SourceOptions::default());
        assert_eq!((report.documents, report.interleaved_documents, report.images), (1, 1, 1));
        assert_eq!(report.dropped_icons, 1);
        assert!(report.to_string().contains("dropped icons: 1\n"));
        let report = check(
            SourceFormat::Html,
            &dir.path().join("h"),
            &SourceOptions { min_image_side: 4, ..SourceOptions::default() },
        );
        assert_eq!((report.images, report.dropped_icons), (2, 0));
    }

    #[test]
    fn interleaved_documents_are_checked_through_open() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a.png"), 8, 8);
        let jsonl = dir.path().join("d.jsonl");
        write(&jsonl, r#"{"texts": ["x", null], "images": [null, "a.png"]}"#);
        let docs: Vec<_> = open(SourceFormat::Interleaved, &jsonl, &SourceOptions::default()).unwrap().collect();
        assert_eq!(docs.len(), 1);
        let report = check(SourceFormat::Interleaved, &jsonl, &SourceOptions::default());
        assert_eq!((report.documents, report.interleaved_documents, report.images, report.text_bytes), (1, 1, 1, 1));
        assert!(report.is_clean());
    }
}
