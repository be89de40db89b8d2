//! A small HTML scanner: the visible text and `<img>` elements of a page, in reading order.
//!
//! Not a full HTML parser: it finds tags, comments and raw-text elements, drops the contents of
//! elements that are not page content (`<head>`, `<nav>`, `<header>`, `<footer>`, `<script>`,
//! `<style>`, …), collapses whitespace (kept inside `<pre>`), decodes common entities, and ends a
//! paragraph at block elements.

use crate::document::{ImageRef, Segment};

/// Elements whose contents are raw text up to their end tag; all of them are dropped.
const RAW_TEXT: &[&str] = &["script", "style", "title", "textarea", "xmp", "noembed", "noframes", "iframe"];

/// Elements whose contents (markup included) are dropped.
const DROPPED: &[&str] = &["head", "nav", "header", "footer", "noscript", "template", "svg", "select"];

/// Elements that may appear inside `<head>`; any other start tag ends an unclosed `<head>`.
const HEAD_CONTENT: &[&str] = &["meta", "link", "base", "basefont", "bgsound", "noscript", "template", "object"];

/// Elements that end a paragraph where they start and end.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "section",
    "article",
    "pre",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "caption",
    "blockquote",
    "main",
    "aside",
    "figure",
    "figcaption",
    "hr",
    "form",
    "fieldset",
    "address",
    "details",
    "summary",
    "body",
    "html",
];

/// Elements that separate words without ending a paragraph.
const CELLS: &[&str] = &["td", "th"];

/// An `<img>` element as the page writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ImgTag {
    /// `src`, entities decoded, when present.
    pub(crate) src: Option<String>,
    /// `alt`, entities decoded and whitespace collapsed; empty when absent.
    pub(crate) alt: String,
    /// `width` in pixels, when present and not a percentage.
    pub(crate) width: Option<u32>,
    /// `height` in pixels, when present and not a percentage.
    pub(crate) height: Option<u32>,
}

/// The segments of a page: text runs (paragraphs joined by a blank line), and each image kept by
/// `on_image` followed by its alt text when that is not empty. `on_image` returns `Ok(None)` to
/// leave an image out (text around it then runs on), or an error to stop.
pub(crate) fn page_segments<E>(
    html: &str,
    mut on_image: impl FnMut(&ImgTag) -> Result<Option<ImageRef>, E>,
) -> Result<Vec<Segment>, E> {
    let bytes = html.as_bytes();
    let mut out = Segments::default();
    let mut dropped: Vec<String> = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while let Some(offset) = html.get(i..).and_then(|rest| rest.find('<')) {
        let lt = i + offset;
        let next = bytes.get(lt + 1).copied().unwrap_or(b' ');
        let is_tag = next.is_ascii_alphabetic()
            || next == b'!'
            || next == b'?'
            || (next == b'/' && bytes.get(lt + 2).is_some_and(|b| b.is_ascii_alphabetic()));
        if !is_tag {
            i = lt + 1;
            continue;
        }
        out.raw_text(html.get(text_start..lt).unwrap_or(""), &mut dropped);
        i = if html.get(lt..).is_some_and(|s| s.starts_with("<!--")) {
            html.get(lt + 4..).and_then(|s| s.find("-->")).map_or(bytes.len(), |end| lt + 4 + end + 3)
        } else if next == b'!' || next == b'?' {
            skip_past(bytes, lt, b'>')
        } else if next == b'/' {
            let (name, after) = tag_name(bytes, lt + 2);
            out.end_tag(&name, &mut dropped);
            skip_past(bytes, after, b'>')
        } else {
            let tag = start_tag(html, lt + 1);
            out.start_tag(&tag, &mut dropped, &mut on_image)?;
            if RAW_TEXT.contains(&tag.name.as_str()) && !tag.self_closing {
                skip_raw_text(bytes, tag.end, &tag.name)
            } else {
                tag.end
            }
        };
        text_start = i;
    }
    out.raw_text(html.get(text_start..).unwrap_or(""), &mut dropped);
    Ok(out.finish())
}

/// The position after the first `byte` at or after `from`, or the end.
fn skip_past(bytes: &[u8], from: usize, byte: u8) -> usize {
    bytes.get(from..).and_then(|rest| rest.iter().position(|&b| b == byte)).map_or(bytes.len(), |p| from + p + 1)
}

/// The lowercase tag name starting at `from`, and the position after it.
fn tag_name(bytes: &[u8], from: usize) -> (String, usize) {
    let len = bytes
        .get(from..)
        .unwrap_or(&[])
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'>')
        .unwrap_or(bytes.len().saturating_sub(from));
    let name = String::from_utf8_lossy(bytes.get(from..from + len).unwrap_or(&[])).to_ascii_lowercase();
    (name, from + len)
}

/// Skips the contents of a raw-text element to after its end tag `</name…>` (any case), or to
/// the end of the page.
fn skip_raw_text(bytes: &[u8], from: usize, name: &str) -> usize {
    let mut i = from;
    while let Some(p) = bytes.get(i..).and_then(|rest| rest.windows(2).position(|w| w == b"</")) {
        let at = i + p + 2;
        let candidate = bytes.get(at..at + name.len());
        let follows = bytes.get(at + name.len()).copied();
        if candidate.is_some_and(|c| c.eq_ignore_ascii_case(name.as_bytes()))
            && follows.is_none_or(|b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        {
            return skip_past(bytes, at + name.len(), b'>');
        }
        i = at;
    }
    bytes.len()
}

/// A start tag: its name, attributes (names lowercase, values as written) and where it ends.
struct StartTag {
    name: String,
    attributes: Vec<(String, String)>,
    self_closing: bool,
    /// The position after its `>` (or the end of the page).
    end: usize,
}

impl StartTag {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Parses the start tag whose name begins at `from`. Quoted values may hold `>`.
fn start_tag(html: &str, from: usize) -> StartTag {
    let bytes = html.as_bytes();
    let (name, mut i) = tag_name(bytes, from);
    let mut attributes = Vec::new();
    let mut self_closing = false;
    let slice = |a: usize, b: usize| html.get(a..b).unwrap_or("").to_owned();
    loop {
        while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        match bytes.get(i) {
            None => break,
            Some(b'>') => {
                i += 1;
                break;
            }
            Some(b'/') => {
                self_closing = bytes.get(i + 1) == Some(&b'>');
                i += 1;
                continue;
            }
            Some(_) => {}
        }
        let start = i;
        while bytes.get(i).is_some_and(|b| !b.is_ascii_whitespace() && !matches!(b, b'/' | b'>' | b'=')) {
            i += 1;
        }
        if i == start {
            // A lone `=`: skip it.
            i += 1;
            continue;
        }
        let attr_name = slice(start, i).to_ascii_lowercase();
        let mut j = i;
        while bytes.get(j).is_some_and(|b| b.is_ascii_whitespace()) {
            j += 1;
        }
        let mut value = String::new();
        if bytes.get(j) == Some(&b'=') {
            j += 1;
            while bytes.get(j).is_some_and(|b| b.is_ascii_whitespace()) {
                j += 1;
            }
            match bytes.get(j) {
                Some(&quote @ (b'"' | b'\'')) => {
                    let close = bytes
                        .get(j + 1..)
                        .and_then(|rest| rest.iter().position(|&b| b == quote))
                        .map_or(bytes.len(), |p| j + 1 + p);
                    value = slice(j + 1, close);
                    i = (close + 1).min(bytes.len());
                }
                _ => {
                    let start = j;
                    while bytes.get(j).is_some_and(|b| !b.is_ascii_whitespace() && *b != b'>') {
                        j += 1;
                    }
                    value = slice(start, j);
                    i = j;
                }
            }
        }
        attributes.push((attr_name, value));
    }
    StartTag { name, attributes, self_closing, end: i }
}

/// A pixel size from a `width`/`height` attribute: leading digits (`32`, `32px`, `32.5`);
/// percentages and anything else give `None`.
fn pixel_size(value: &str) -> Option<u32> {
    let value = value.trim();
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let rest = value.get(digits..)?.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit()).trim_start();
    if digits == 0 || rest.starts_with('%') {
        return None;
    }
    Some(value.get(..digits)?.parse::<u64>().map_or(u32::MAX, |n| n.min(u32::MAX as u64) as u32))
}

/// Collapses whitespace runs to one space and trims.
fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The segments being built, and the text of the paragraph in progress.
#[derive(Default)]
struct Segments {
    segments: Vec<Segment>,
    /// Finished paragraphs of the current text run.
    paragraphs: Vec<String>,
    /// The paragraph in progress.
    current: String,
    /// Whitespace was seen after the last character of `current`.
    space: bool,
    /// Depth of open `<pre>` elements.
    pre: usize,
}

impl Segments {
    /// Text between tags: dropped inside dropped elements, else decoded and appended.
    fn raw_text(&mut self, raw: &str, dropped: &mut Vec<String>) {
        if raw.is_empty() {
            return;
        }
        if !dropped.is_empty() {
            // Text cannot sit in an open `<head>`: it ends it.
            if dropped.last().is_some_and(|d| d == "head") && !raw.trim().is_empty() {
                dropped.pop();
            } else {
                return;
            }
        }
        let text = decode_entities(raw);
        if self.pre > 0 {
            self.current.push_str(&text.replace("\r\n", "\n"));
            return;
        }
        for c in text.chars() {
            if c.is_whitespace() {
                self.space = !self.current.is_empty();
            } else {
                if self.space {
                    self.current.push(' ');
                    self.space = false;
                }
                self.current.push(c);
            }
        }
    }

    fn start_tag<E>(
        &mut self,
        tag: &StartTag,
        dropped: &mut Vec<String>,
        on_image: &mut impl FnMut(&ImgTag) -> Result<Option<ImageRef>, E>,
    ) -> Result<(), E> {
        let name = tag.name.as_str();
        if dropped.last().is_some_and(|d| d == "head") && !HEAD_CONTENT.contains(&name) && !RAW_TEXT.contains(&name) {
            dropped.pop();
        }
        if DROPPED.contains(&name) && !tag.self_closing {
            dropped.push(tag.name.clone());
            return Ok(());
        }
        if !dropped.is_empty() {
            return Ok(());
        }
        if name == "img" {
            let img = ImgTag {
                src: tag.attribute("src").map(|s| decode_entities(s).trim().to_owned()),
                alt: tag.attribute("alt").map(|a| collapse(&decode_entities(a))).unwrap_or_default(),
                width: tag.attribute("width").and_then(pixel_size),
                height: tag.attribute("height").and_then(pixel_size),
            };
            if let Some(image) = on_image(&img)? {
                self.end_text_run();
                self.segments.push(Segment::Image(image));
                if !img.alt.is_empty() {
                    self.segments.push(Segment::Text(img.alt));
                }
            }
        } else if BLOCKS.contains(&name) {
            self.end_paragraph();
            if name == "pre" {
                self.pre += 1;
            }
        } else if CELLS.contains(&name) {
            self.space = !self.current.is_empty();
        }
        Ok(())
    }

    fn end_tag(&mut self, name: &str, dropped: &mut Vec<String>) {
        if let Some(open) = dropped.iter().rposition(|d| d == name) {
            dropped.truncate(open);
            return;
        }
        if !dropped.is_empty() {
            return;
        }
        if BLOCKS.contains(&name) {
            self.end_paragraph();
            if name == "pre" {
                self.pre = self.pre.saturating_sub(1);
            }
        } else if CELLS.contains(&name) {
            self.space = !self.current.is_empty();
        }
    }

    fn end_paragraph(&mut self) {
        let paragraph = std::mem::take(&mut self.current);
        self.space = false;
        let paragraph = paragraph.trim_end().trim_start_matches(['\n', '\r']);
        if !paragraph.trim().is_empty() {
            self.paragraphs.push(paragraph.to_owned());
        }
    }

    fn end_text_run(&mut self) {
        self.end_paragraph();
        if !self.paragraphs.is_empty() {
            self.segments.push(Segment::Text(self.paragraphs.join("\n\n")));
            self.paragraphs.clear();
        }
    }

    fn finish(mut self) -> Vec<Segment> {
        self.end_text_run();
        self.segments
    }
}

/// Decodes character references: `&amp; &lt; &gt; &quot; &#39; &apos; &nbsp;`, a few common
/// typographic names, and numeric `&#NNN;` / `&#xHH;` (the `;` optional). Unknown names stay as
/// written; invalid code points become U+FFFD.
pub(crate) fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(rest.get(..amp).unwrap_or(""));
        let after = rest.get(amp + 1..).unwrap_or("");
        match decode_one(after) {
            Some((decoded, used)) => {
                out.push(decoded);
                rest = after.get(used..).unwrap_or("");
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One reference after its `&`: the character and how many bytes it used.
fn decode_one(after: &str) -> Option<(char, usize)> {
    if let Some(number) = after.strip_prefix('#') {
        let (digits, radix, prefix) = match number.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 2),
            None => (number, 10, 1),
        };
        let len = digits.bytes().take_while(|b| (*b as char).is_digit(radix)).count();
        if len == 0 {
            return None;
        }
        let value = u32::from_str_radix(digits.get(..len)?, radix).unwrap_or(u32::MAX);
        let c = match char::from_u32(value) {
            Some('\0') | None => '\u{fffd}',
            Some(c) => c,
        };
        let semicolon = usize::from(digits.get(len..)?.starts_with(';'));
        return Some((c, prefix + len + semicolon));
    }
    let len = after.bytes().take(32).take_while(u8::is_ascii_alphanumeric).count();
    if !after.get(len..)?.starts_with(';') {
        return None;
    }
    let c = match after.get(..len)? {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "middot" => '·',
        "bull" => '•',
        "times" => '×',
        "deg" => '°',
        "euro" => '€',
        _ => return None,
    };
    Some((c, len + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::path::PathBuf;

    /// Segments with every image kept as a file named by its src.
    fn segments(html: &str) -> Vec<Segment> {
        page_segments(html, |img| Ok::<_, Infallible>(img.src.clone().map(|s| ImageRef::File(PathBuf::from(s)))))
            .unwrap()
    }

    fn text(s: &str) -> Segment {
        Segment::Text(s.to_owned())
    }

    fn image(s: &str) -> Segment {
        Segment::Image(ImageRef::File(PathBuf::from(s)))
    }

    #[test]
    fn whitespace_collapses_and_blocks_end_paragraphs() {
        let html = "<html><body><h1>Title\n  here</h1><p>One <b>bold</b>\n\tword.</p><div>Two<br>Three</div>\
                    <ul><li>a</li><li>b</li></ul><table><tr><td>x</td><td>y</td></tr></table>tail</body></html>";
        assert_eq!(segments(html), vec![text("Title here\n\nOne bold word.\n\nTwo\n\nThree\n\na\n\nb\n\nx y\n\ntail")]);
    }

    #[test]
    fn scripts_styles_comments_and_page_chrome_are_dropped() {
        let html = r#"<!DOCTYPE html><html><head><title>T</title><style>p { color: red }</style>
            <script>if (a < b && c > d) { document.write("<p>no</p>") }</script></head>
            <body><header><p>site name</p></header><nav><ul><li>menu</li></ul></nav>
            <!-- a comment <p>hidden</p> --><p>Kept.</p><SCRIPT type="x">var s = "</scr" + "ipt>";</SCRIPT >
            <noscript>enable js</noscript><footer>(c) 2024<img src="f.png"></footer><p>End.</p></body></html>"#;
        assert_eq!(segments(html), vec![text("Kept.\n\nEnd.")]);
    }

    #[test]
    fn an_unclosed_head_ends_at_the_first_body_content() {
        assert_eq!(segments("<head><meta charset=utf-8><title>x</title><p>Body text"), vec![text("Body text")]);
        assert_eq!(segments("<head><link rel=x>Loose text"), vec![text("Loose text")]);
    }

    #[test]
    fn entities_are_decoded_in_text_and_attributes() {
        let html = "<p>a &amp; b &lt;c&gt; &quot;d&quot; &#39;e&#39; f&nbsp;g &#8364; &#x41;&#X42; &copy; &bogus; &amp \
                    &#0; &#xD800;</p><img src=\"a&amp;b.png\" alt=\"x &lt; y\">";
        assert_eq!(
            segments(html),
            vec![
                text("a & b <c> \"d\" 'e' f g € AB © &bogus; &amp \u{fffd} \u{fffd}"),
                image("a&b.png"),
                text("x < y")
            ]
        );
    }

    #[test]
    fn images_split_text_runs_and_alt_text_follows_the_image() {
        let html = "<p>Before <img src='a.png' alt='  An   apple '> after.</p><img src=b.png><p>Last</p>";
        assert_eq!(
            segments(html),
            vec![text("Before"), image("a.png"), text("An apple"), text("after."), image("b.png"), text("Last")]
        );
    }

    #[test]
    fn an_image_left_out_lets_the_text_run_on() {
        let html = "<p>Hello <img src='icon.png'> world</p>";
        let got = page_segments(html, |_| Ok::<_, Infallible>(None)).unwrap();
        assert_eq!(got, vec![text("Hello world")]);
        let err = page_segments(html, |img| Err(img.src.clone())).unwrap_err();
        assert_eq!(err, Some("icon.png".to_owned()));
    }

    #[test]
    fn img_attributes_are_parsed_with_quotes_sizes_and_odd_spacing() {
        let mut seen = Vec::new();
        let html = r#"<img alt="a > b" SRC = "x.png" width="50%" height='16px'><img src=y.png width=40.5 height=12/>
                      <img data-x=1 alt=solo>"#;
        page_segments(html, |img| {
            seen.push(img.clone());
            Ok::<_, Infallible>(None)
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ImgTag { src: Some("x.png".into()), alt: "a > b".into(), width: None, height: Some(16) },
                ImgTag { src: Some("y.png".into()), alt: String::new(), width: Some(40), height: Some(12) },
                ImgTag { src: None, alt: "solo".into(), width: None, height: None },
            ]
        );
    }

    #[test]
    fn pre_keeps_its_whitespace() {
        let html = "<p>Code:</p><pre>\nfn main() {\n    run();\n}\n</pre><p>done</p>";
        assert_eq!(segments(html), vec![text("Code:\n\nfn main() {\n    run();\n}\n\ndone")]);
    }

    #[test]
    fn broken_markup_does_not_panic() {
        let cases = [
            "<",
            "<p",
            "<img src=\"unterminated",
            "<!-- never closed",
            "<script>never closed",
            "</",
            "a < b and 1<2",
            "<p>caf\u{e9} \u{1f600}<img src=\u{e9}.png alt=\u{1f600}",
            "&",
            "&#",
            "&#x;",
            "&#99999999999999999999;",
            "<a href='x'>link</a><nav>unclosed",
            "<img/><img =x><img src=>",
            "\u{1f600}<\u{1f600}>\u{1f600}</\u{1f600}>",
        ];
        for case in cases {
            let _ = segments(case);
        }
        assert_eq!(segments("a < b and 1<2 <p"), vec![text("a < b and 1<2")]);
        assert_eq!(segments("&#99999999999999999999;"), vec![text("\u{fffd}")]);
    }

    #[test]
    fn random_fragment_soup_does_not_panic() {
        let pieces = [
            "<",
            ">",
            "</",
            "<!--",
            "-->",
            "<p>",
            "</p>",
            "<img src=",
            "\"",
            "'",
            "=",
            "&",
            "&#",
            "&#x",
            ";",
            "amp",
            "<script>",
            "</script",
            "<head>",
            "</head>",
            "<nav>",
            "<pre>",
            "</pre>",
            "é",
            "\u{1f600}",
            " ",
            "\n",
            "a",
            "width=",
            "9",
            "%",
            "/>",
            "<!",
            "<?",
            "<br/>",
            "<td>",
            "<svg/>",
        ];
        let mut state = 0x2545_f491_u64;
        for _ in 0..3000 {
            let mut html = String::new();
            for _ in 0..(state % 40) {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                html.push_str(pieces[(state >> 33) as usize % pieces.len()]);
            }
            for segment in segments(&html) {
                if let Segment::Text(t) = segment {
                    assert!(!t.is_empty() && t.trim_end() == t, "{html:?} gave {t:?}");
                }
            }
        }
    }
}
