//! Interleaved documents from a folder of saved HTML pages: each page's visible text and images in
//! reading order, icons left out.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::document::{BadRecord, DocKind, Document, ImageRef, Location};
use crate::source::markup::{ImgTag, page_segments};
use crate::source::walk::files_under;

/// Reads one `DocKind::Interleaved` document per `.html`/`.htm` page of a folder (recursively,
/// sorted by path), or from one page.
///
/// Images are `<img src>` files resolved against the page's folder (a `src` starting with `/`
/// against the folder given to [`HtmlSource::open`]); `data:` URIs and `http(s)` URLs are skipped.
/// An image whose `width` or `height` attribute, or else whose file header, says it is smaller
/// than `min_image_side` on a side is an icon: left out and counted by
/// [`HtmlSource::dropped_icons`]. A non-empty `alt` becomes a text segment right after its image.
pub struct HtmlSource {
    root: PathBuf,
    files: std::vec::IntoIter<PathBuf>,
    errors: VecDeque<BadRecord>,
    min_image_side: u32,
    dropped_icons: usize,
}

impl HtmlSource {
    /// Opens a folder of pages, or one page. A path that does not exist is a bad record naming
    /// it.
    pub fn open(path: &Path, min_image_side: u32) -> Result<Self, BadRecord> {
        let found = files_under(path, &["html", "htm"])?;
        let root =
            if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new("")).to_path_buf() };
        Ok(Self { root, files: found.files.into_iter(), errors: found.errors, min_image_side, dropped_icons: 0 })
    }

    /// How many icons have been left out of the documents read so far.
    pub fn dropped_icons(&self) -> usize {
        self.dropped_icons
    }

    fn page(&mut self, path: &Path) -> Result<Document, BadRecord> {
        let location = Location::file(path);
        let bad = |reason: String| BadRecord::new(location.clone(), reason);
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
        let html = std::str::from_utf8(bytes)
            .map_err(|e| bad(format!("page is not valid UTF-8 (at byte {})", e.valid_up_to())))?;
        let folder = path.parent().unwrap_or(Path::new(""));
        let mut icons = 0;
        let segments = page_segments(html, |img| page_image(img, folder, &self.root, self.min_image_side, &mut icons))
            .map_err(bad)?;
        if segments.is_empty() {
            return Err(bad("page has neither text nor images".to_owned()));
        }
        self.dropped_icons += icons;
        Ok(Document { location, kind: DocKind::Interleaved, segments })
    }
}

impl Iterator for HtmlSource {
    type Item = Result<Document, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.errors.pop_front() {
            return Some(Err(error));
        }
        let path = self.files.next()?;
        Some(self.page(&path))
    }
}

/// Whether to keep an `<img>`: `Ok(None)` for no usable `src` (none, `data:`, `http(s):`) and for
/// icons (counted in `icons`), an error when the file is missing.
fn page_image(
    img: &ImgTag,
    folder: &Path,
    root: &Path,
    min_side: u32,
    icons: &mut usize,
) -> Result<Option<ImageRef>, String> {
    let Some(src) = img.src.as_deref().filter(|s| !s.is_empty()) else { return Ok(None) };
    let lower = src.to_ascii_lowercase();
    if ["data:", "http:", "https:", "//"].iter().any(|p| lower.starts_with(p)) {
        return Ok(None);
    }
    let small = |side: u32| side < min_side;
    if img.width.is_some_and(small) || img.height.is_some_and(small) {
        *icons += 1;
        return Ok(None);
    }
    let file = percent_decode(src.split(['?', '#']).next().unwrap_or(src));
    let path = match file.strip_prefix('/') {
        Some(from_root) => root.join(from_root),
        None => folder.join(&file),
    };
    if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
        return Err(format!("image file not found: {}", path.display()));
    }
    if (img.width.is_none() || img.height.is_none())
        && let Ok((w, h)) = image::image_dimensions(&path)
        && (small(img.width.unwrap_or(w)) || small(img.height.unwrap_or(h)))
    {
        *icons += 1;
        return Ok(None);
    }
    Ok(Some(ImageRef::File(path)))
}

/// Decodes `%XX` escapes of a URL path; returns it unchanged when the result is not UTF-8.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex.filter(|_| b == b'%').and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Segment;
    use crate::source::fixtures::{write, write_png};

    fn read(path: &Path, min_side: u32) -> (Vec<Result<Document, BadRecord>>, usize) {
        let mut source = HtmlSource::open(path, min_side).unwrap();
        let docs: Vec<_> = source.by_ref().collect();
        (docs, source.dropped_icons())
    }

    #[test]
    fn a_page_gives_text_and_images_in_reading_order() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("site/img/photo one.png"), 64, 48);
        write_png(&dir.path().join("site/logo.png"), 100, 100);
        let page = dir.path().join("site/blog/post.html");
        write_png(&dir.path().join("site/blog/local.png"), 40, 40);
        let html = r#"<html><head><title>Post</title><style>body{}</style></head><body>
            <nav><img src="/logo.png"> Home | About</nav>
            <article><h1>My   trip</h1><p>We went &amp; saw <em>things</em>.</p>
            <img src="../img/photo%20one.png?v=2" alt="The lake">
            <p>Then &lt;more&gt;.</p><img src="local.png"><img src="/logo.png" width="64" height="64"></article>
            <footer>(c) me</footer></body></html>"#;
        write(&page, html);
        let (docs, icons) = read(&dir.path().join("site"), 32);
        assert_eq!(icons, 0);
        assert_eq!(docs.len(), 1);
        let doc = docs[0].as_ref().unwrap();
        assert_eq!(doc.location, Location::file(&page));
        assert_eq!(doc.kind, DocKind::Interleaved);
        assert_eq!(
            doc.segments,
            vec![
                Segment::Text("My trip\n\nWe went & saw things.".into()),
                Segment::Image(ImageRef::File(dir.path().join("site/blog/../img/photo one.png"))),
                Segment::Text("The lake".into()),
                Segment::Text("Then <more>.".into()),
                Segment::Image(ImageRef::File(dir.path().join("site/blog/local.png"))),
                Segment::Image(ImageRef::File(dir.path().join("site/logo.png"))),
            ]
        );
    }

    #[test]
    fn icons_are_dropped_by_attribute_or_by_file_size_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("tiny.png"), 16, 16);
        write_png(&dir.path().join("wide.png"), 200, 20);
        write_png(&dir.path().join("big.png"), 64, 64);
        let html = r#"<p>A <img src="big.png" width="16" height="16"> B</p>
            <img src="gone-but-small.png" width="10">
            <img src="tiny.png"><img src="wide.png"><img src="tiny.png" width="100" height="100">
            <img src="big.png" height="20px"><img src="big.png" width="50%">
            <img src="data:image/png;base64,AAAA"><img src="https://example.com/x.png"><img src="//cdn/x.png">"#;
        write(&dir.path().join("p.html"), html);
        let (docs, icons) = read(dir.path(), 32);
        assert_eq!(icons, 5);
        assert_eq!(
            docs[0].as_ref().unwrap().segments,
            vec![
                Segment::Text("A B".into()),
                Segment::Image(ImageRef::File(dir.path().join("tiny.png"))),
                Segment::Image(ImageRef::File(dir.path().join("big.png"))),
            ]
        );
        let (_, icons) = read(dir.path(), 0);
        assert_eq!(icons, 0, "min side 0 keeps everything");
    }

    #[test]
    fn empty_pages_missing_images_and_bad_utf8_are_bad_records_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a.html"), "<html><head><title>only a title</title></head><body> </body></html>");
        write(&dir.path().join("b.htm"), "<p>text</p><img src='nope.png'>");
        write(&dir.path().join("c/d.html"), b"<p>caf\xe9</p>");
        write(&dir.path().join("e.html"), "<script>only()</script><!-- x -->");
        write(&dir.path().join("f.html"), "<p>fine</p>");
        write(&dir.path().join("notes.txt"), "not a page");
        let (docs, _) = read(dir.path(), 32);
        let shown: Vec<String> = docs
            .iter()
            .map(|d| match d {
                Ok(doc) => format!("ok {}", doc.location),
                Err(bad) => bad.to_string(),
            })
            .collect();
        let at = |name: &str| dir.path().join(name).display().to_string();
        assert_eq!(
            shown,
            vec![
                format!("{}: page has neither text nor images", at("a.html")),
                format!("{}: image file not found: {}", at("b.htm"), at("nope.png")),
                format!("{}: page is not valid UTF-8 (at byte 6)", at("c/d.html")),
                format!("{}: page has neither text nor images", at("e.html")),
                format!("ok {}", at("f.html")),
            ]
        );
    }

    #[test]
    fn a_single_page_can_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("one.html");
        write_png(&dir.path().join("pic.png"), 40, 40);
        write(&page, "<img src='/pic.png' alt='x'>");
        let (docs, _) = read(&page, 32);
        assert_eq!(
            docs[0].as_ref().unwrap().segments,
            vec![Segment::Image(ImageRef::File(dir.path().join("pic.png"))), Segment::Text("x".into())]
        );
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("a%20b%2Fc.png"), "a b/c.png");
        assert_eq!(percent_decode("100%.png"), "100%.png");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%ff.png"), "%ff.png");
    }
}
