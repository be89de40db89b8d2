//! Image-caption pairs from WebDataset / img2dataset tar shards: members `KEY.jpg` (or `.jpeg`,
//! `.png`, `.webp`) and `KEY.txt`, grouped by KEY (the member name up to the first dot of its
//! file name, folder prefix kept). Other members (`KEY.json`, …) are ignored.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use crate::document::{BadRecord, DocKind, Document, ImageRef, Location, Segment};
use crate::source::walk::files_under;

/// Members larger than this are bad records rather than read into memory.
const MAX_MEMBER_BYTES: u64 = 256 << 20;

/// How many documents a shard's reading thread may get ahead of the caller.
const READ_AHEAD: usize = 8;

/// Reads `DocKind::Caption` documents, `[Image(Bytes), Text]`, from one tar shard or a folder of
/// `.tar` shards (recursively, sorted by path).
///
/// Each shard is read sequentially on a helper thread (the tar reader borrows its archive, so it
/// cannot live inside this iterator); at most a few documents are read ahead. Members of one key
/// need not be adjacent: members of unfinished keys are held until their partner arrives.
pub struct WebDatasetSource {
    shards: std::vec::IntoIter<PathBuf>,
    errors: VecDeque<BadRecord>,
    current: Option<ShardReader>,
}

/// The reading thread of one shard and what it sends.
struct ShardReader {
    shard: PathBuf,
    items: Receiver<Result<Document, BadRecord>>,
    thread: Option<JoinHandle<()>>,
}

impl WebDatasetSource {
    /// Opens a tar shard, or a folder of `.tar` shards. A path that does not exist is a bad
    /// record naming it.
    pub fn open(path: &Path) -> Result<Self, BadRecord> {
        let found = files_under(path, &["tar"])?;
        Ok(Self { shards: found.files.into_iter(), errors: found.errors, current: None })
    }
}

impl Iterator for WebDatasetSource {
    type Item = Result<Document, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(error) = self.errors.pop_front() {
                return Some(Err(error));
            }
            if let Some(reader) = self.current.as_mut() {
                if let Ok(item) = reader.items.recv() {
                    return Some(item);
                }
                let stopped = reader.thread.take().is_some_and(|thread| thread.join().is_err());
                let shard = reader.shard.clone();
                self.current = None;
                if stopped {
                    return Some(Err(BadRecord::new(Location::file(shard), "reading the shard stopped unexpectedly")));
                }
            }
            let shard = self.shards.next()?;
            let (send, items) = sync_channel(READ_AHEAD);
            let path = shard.clone();
            let spawned = std::thread::Builder::new().name("webdataset-shard".into()).spawn(move || {
                let mut emit = |item| send.send(item).is_ok();
                match File::open(&path) {
                    Ok(file) => read_shard(&path, BufReader::new(file), &mut emit),
                    Err(e) => {
                        emit(Err(BadRecord::new(Location::file(&path), format!("cannot open: {e}"))));
                    }
                }
            });
            match spawned {
                Ok(thread) => self.current = Some(ShardReader { shard, items, thread: Some(thread) }),
                Err(e) => {
                    return Some(Err(BadRecord::new(Location::file(shard), format!("cannot start a reader: {e}"))));
                }
            }
        }
    }
}

/// What a member holds, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberKind {
    Image,
    Caption,
}

/// `(key, extension)` of a member name: the key is the name up to the first dot of its file
/// name. Names whose file name starts with a dot or has none have no key.
fn split_member(name: &str) -> Option<(&str, &str)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = file_start + name.get(file_start..)?.find('.')?;
    if dot == file_start {
        return None;
    }
    Some((name.get(..dot)?, name.get(dot + 1..)?))
}

fn member_kind(extension: &str) -> Option<MemberKind> {
    let lower = extension.to_ascii_lowercase();
    match lower.as_str() {
        "jpg" | "jpeg" | "png" | "webp" => Some(MemberKind::Image),
        "txt" => Some(MemberKind::Caption),
        _ => None,
    }
}

/// The members of a key read so far.
#[derive(Default)]
struct Pending {
    /// `(member name, bytes)`.
    image: Option<(String, Vec<u8>)>,
    /// `(member name, caption)`; `None` once the caption was reported bad.
    caption: Option<(String, Option<String>)>,
}

/// A reader that remembers whether its last non-empty read found the end of the input.
struct EofWatch<R> {
    inner: R,
    at_eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !buf.is_empty() {
            self.at_eof = n == 0;
        }
        Ok(n)
    }
}

/// Groups the members of one shard into documents and bad records, in the order they complete,
/// handing each to `emit`; stops early when `emit` returns false. A truncated or corrupt shard is
/// reported once, naming the shard, and ends it; keys left without a partner are reported last,
/// sorted by key.
fn read_shard(shard: &Path, reader: impl Read, emit: &mut dyn FnMut(Result<Document, BadRecord>) -> bool) {
    let mut archive = tar::Archive::new(EofWatch { inner: reader, at_eof: false });
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut last_member: Option<String> = None;
    let mut broken: Option<String> = None;
    let after = |last: &Option<String>| match last {
        Some(name) => format!("after member {name}"),
        None => "at its start".to_owned(),
    };
    match archive.entries() {
        Err(e) => broken = Some(format!("cannot read the tar: {e}")),
        Ok(entries) => {
            for entry in entries {
                let mut entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        broken = Some(format!("truncated or corrupt tar {}: {e}", after(&last_member)));
                        break;
                    }
                };
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                last_member = Some(name.clone());
                if !entry.header().entry_type().is_file() && !entry.header().entry_type().is_contiguous() {
                    continue;
                }
                let Some((key, kind)) = split_member(&name).and_then(|(k, e)| Some((k.to_owned(), member_kind(e)?)))
                else {
                    continue;
                };
                let size = entry.size();
                if size > MAX_MEMBER_BYTES {
                    let reason = format!("member is too large ({size} bytes)");
                    if !emit(Err(BadRecord::new(Location::member(shard, &name), reason))) {
                        return;
                    }
                    continue;
                }
                let mut bytes = Vec::with_capacity(size.min(1 << 20) as usize);
                if let Err(e) = entry.read_to_end(&mut bytes) {
                    broken = Some(format!("truncated or corrupt tar in member {name}: {e}"));
                    break;
                }
                if bytes.len() as u64 != size {
                    broken = Some(format!("truncated tar: member {name} has {} of its {size} bytes", bytes.len()));
                    break;
                }
                if !add_member(shard, &mut pending, key, kind, name, bytes, emit) {
                    return;
                }
            }
        }
    }
    if broken.is_none() && archive.into_inner().at_eof {
        broken = Some(format!("truncated tar: it ends {} without the end-of-archive marker", after(&last_member)));
    }
    let suffix = match broken {
        Some(reason) => {
            if !emit(Err(BadRecord::new(Location::file(shard), reason))) {
                return;
            }
            " (the shard is truncated)"
        }
        None => "",
    };
    for (key, rest) in pending {
        let bad = match (rest.image, rest.caption) {
            (Some((image, _)), None) => BadRecord::new(
                Location::member(shard, &image),
                format!("tar member without a partner: no {key}.txt{suffix}"),
            ),
            (None, Some((caption, _))) => BadRecord::new(
                Location::member(shard, &caption),
                format!("tar member without a partner: no image for {key}{suffix}"),
            ),
            _ => continue,
        };
        if !emit(Err(bad)) {
            return;
        }
    }
}

/// Files one member under its key; emits the document when the key is complete, or a bad record
/// for a bad caption or a second member of one kind. Returns false when `emit` does.
fn add_member(
    shard: &Path,
    pending: &mut BTreeMap<String, Pending>,
    key: String,
    kind: MemberKind,
    name: String,
    bytes: Vec<u8>,
    emit: &mut dyn FnMut(Result<Document, BadRecord>) -> bool,
) -> bool {
    let entry = pending.entry(key.clone()).or_default();
    match kind {
        MemberKind::Image => {
            if let Some((first, _)) = &entry.image {
                let reason = format!("a second image for key {key} (the first is {first})");
                return emit(Err(BadRecord::new(Location::member(shard, &name), reason)));
            }
            entry.image = Some((name, bytes));
        }
        MemberKind::Caption => {
            if let Some((first, _)) = &entry.caption {
                let reason = format!("a second caption for key {key} (the first is {first})");
                return emit(Err(BadRecord::new(Location::member(shard, &name), reason)));
            }
            let caption = match String::from_utf8(bytes) {
                Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
                Ok(_) => Err("empty caption".to_owned()),
                Err(e) => Err(format!("caption is not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to())),
            };
            match caption {
                Ok(text) => entry.caption = Some((name, Some(text))),
                Err(reason) => {
                    let location = Location::member(shard, &name);
                    entry.caption = Some((name, None));
                    if !emit(Err(BadRecord::new(location, reason))) {
                        return false;
                    }
                }
            }
        }
    }
    if entry.image.is_none() || entry.caption.is_none() {
        return true;
    }
    let Some(Pending { image: Some((image, bytes)), caption: Some((_, caption)) }) = pending.remove(&key) else {
        return true;
    };
    let Some(caption) = caption else { return true };
    let origin = format!("{}:{image}", shard.display());
    emit(Ok(Document {
        location: Location::member(shard, key),
        kind: DocKind::Caption,
        segments: vec![Segment::Image(ImageRef::Bytes { origin, bytes: Arc::from(bytes) }), Segment::Text(caption)],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fixtures::{png_bytes, write};

    fn tar_bytes(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn read(path: &Path) -> Vec<Result<Document, BadRecord>> {
        WebDatasetSource::open(path).unwrap().collect()
    }

    fn caption_of(doc: &Document) -> &str {
        match &doc.segments[..] {
            [Segment::Image(ImageRef::Bytes { .. }), Segment::Text(t)] => t,
            other => panic!("[image bytes, text] expected: {other:?}"),
        }
    }

    #[test]
    fn member_names_split_into_key_and_extension() {
        assert_eq!(split_member("000123.jpg"), Some(("000123", "jpg")));
        assert_eq!(split_member("part/00/000123.seg.png"), Some(("part/00/000123", "seg.png")));
        assert_eq!(split_member("dir.v2/abc.txt"), Some(("dir.v2/abc", "txt")));
        assert_eq!(split_member("._000123.jpg"), None, "macOS resource forks have no key");
        assert_eq!(split_member(".hidden"), None);
        assert_eq!(split_member("noext"), None);
        assert_eq!(member_kind("JPEG"), Some(MemberKind::Image));
        assert_eq!(member_kind("seg.png"), None);
    }

    #[test]
    fn pairs_are_grouped_by_key_even_when_not_adjacent() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("shard-0000.tar");
        let png = png_bytes(4, 4);
        let tar = tar_bytes(&[
            ("a/000.jpg", &png),
            ("a/001.png", &png),
            ("a/000.json", b"{}"),
            ("a/001.txt", b"second\n"),
            ("a/000.txt", b"first"),
            ("a/002.webp.json", b"{}"),
        ]);
        write(&shard, tar);
        let docs: Vec<_> = read(&shard).into_iter().map(Result::unwrap).collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].location, Location::member(&shard, "a/001"));
        assert_eq!(docs[0].kind, DocKind::Caption);
        assert_eq!(caption_of(&docs[0]), "second");
        assert_eq!(caption_of(&docs[1]), "first");
        match &docs[1].segments[0] {
            Segment::Image(ImageRef::Bytes { origin, bytes }) => {
                assert_eq!(origin, &format!("{}:a/000.jpg", shard.display()));
                assert_eq!(&bytes[..], &png[..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn members_without_a_partner_and_bad_captions_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("s.tar");
        let png = png_bytes(4, 4);
        let tar = tar_bytes(&[
            ("lonely.jpg", &png),
            ("ok.png", &png),
            ("ok.txt", b"fine"),
            ("words.txt", b"no picture"),
            ("latin.txt", b"caf\xe9"),
            ("latin.jpg", &png),
            ("blank.txt", b" \n"),
            ("blank.jpg", &png),
        ]);
        write(&shard, tar);
        let items = read(&shard);
        let shown: Vec<String> = items
            .iter()
            .map(|i| match i {
                Ok(doc) => format!("ok {}", caption_of(doc)),
                Err(bad) => bad.to_string(),
            })
            .collect();
        let s = shard.display();
        assert_eq!(
            shown,
            vec![
                "ok fine".to_owned(),
                format!("{s}:latin.txt: caption is not valid UTF-8 (at byte 3)"),
                format!("{s}:blank.txt: empty caption"),
                format!("{s}:lonely.jpg: tar member without a partner: no lonely.txt"),
                format!("{s}:words.txt: tar member without a partner: no image for words"),
            ]
        );
    }

    #[test]
    fn a_second_image_for_a_key_is_a_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("s.tar");
        let png = png_bytes(4, 4);
        write(&shard, tar_bytes(&[("k.jpg", &png), ("k.png", &png), ("k.txt", b"cap")]));
        let items = read(&shard);
        assert_eq!(items.len(), 2);
        let bad = items[0].as_ref().unwrap_err();
        assert_eq!(bad.location, Location::member(&shard, "k.png"));
        assert_eq!(bad.reason, "a second image for key k (the first is k.jpg)");
        assert_eq!(caption_of(items[1].as_ref().unwrap()), "cap");
    }

    #[test]
    fn a_shard_truncated_inside_a_member_is_reported_once_and_ends_that_shard() {
        let dir = tempfile::tempdir().unwrap();
        let png = png_bytes(40, 40);
        let full = tar_bytes(&[("0.jpg", &png), ("0.txt", b"zero"), ("1.jpg", &png), ("1.txt", b"one")]);
        // Members: header(512) + data padded; cut in the middle of 1.jpg's data.
        let padded = png.len().div_ceil(512) * 512;
        let cut = 512 + padded + 512 + 512 + 512 + png.len() / 2;
        let shard = dir.path().join("a.tar");
        write(&shard, &full[..cut]);
        write(&dir.path().join("b.tar"), tar_bytes(&[("2.jpg", &png), ("2.txt", b"two")]));
        let items = read(dir.path());
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(caption_of(items[0].as_ref().unwrap()), "zero");
        let bad = items[1].as_ref().unwrap_err();
        assert_eq!(bad.location, Location::file(&shard));
        assert!(bad.reason.starts_with("truncated tar: member 1.jpg has"), "{bad}");
        assert_eq!(caption_of(items[2].as_ref().unwrap()), "two", "the next shard is still read");
    }

    #[test]
    fn a_shard_truncated_between_or_inside_headers_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let png = png_bytes(4, 4);
        let full = tar_bytes(&[("0.jpg", &png), ("0.txt", b"zero"), ("1.jpg", &png)]);
        let one_member = 512 + png.len().div_ceil(512) * 512;
        let two_members = one_member + 1024;
        // Cut at a member boundary: no end-of-archive marker.
        let shard = dir.path().join("a.tar");
        write(&shard, &full[..two_members]);
        let items = read(&shard);
        assert_eq!(caption_of(items[0].as_ref().unwrap()), "zero");
        let bad = items[1].as_ref().unwrap_err();
        assert_eq!(bad.location, Location::file(&shard));
        assert!(bad.reason.contains("without the end-of-archive marker"), "{bad}");
        assert_eq!(items.len(), 2);
        // Cut inside the third header; the orphaned image of key 0 is then named too.
        write(&shard, &full[..one_member + 100]);
        let items = read(&shard);
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(items[0].as_ref().unwrap_err().reason.starts_with("truncated or corrupt tar after member 0.jpg"));
        let orphan = items[1].as_ref().unwrap_err();
        assert_eq!(orphan.location, Location::member(&shard, "0.jpg"));
        assert_eq!(orphan.reason, "tar member without a partner: no 0.txt (the shard is truncated)");
    }

    #[test]
    fn garbage_and_empty_files_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("junk.tar");
        for junk in [&b""[..], b"hello", &[0xffu8; 2048][..], &[0u8; 100][..]] {
            write(&shard, junk);
            let items = read(&shard);
            assert!(items.iter().all(Result::is_err), "{items:?}");
            assert!(!items.is_empty(), "{:?} gave nothing", &junk[..junk.len().min(8)]);
        }
    }

    #[test]
    fn corrupted_shards_do_not_panic() {
        let png = png_bytes(4, 4);
        let full = tar_bytes(&[("0.jpg", &png), ("0.txt", b"zero"), ("1.jpg", &png), ("1.txt", b"one")]);
        let mut state = 0x9e37_79b9_u64;
        for _ in 0..500 {
            let mut bytes = full.clone();
            for _ in 0..4 {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let at = (state >> 33) as usize % bytes.len();
                bytes[at] = (state >> 20) as u8;
            }
            let cut = (state >> 40) as usize % (bytes.len() + 1);
            let mut items = Vec::new();
            read_shard(Path::new("fuzz.tar"), &bytes[..cut.max(bytes.len() / 2)], &mut |item| {
                items.push(item);
                true
            });
            assert!(items.len() <= 6, "{items:?}");
        }
    }

    #[test]
    fn stopping_early_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("s.tar");
        let png = png_bytes(4, 4);
        let names: Vec<(String, String)> = (0..50).map(|i| (format!("{i:03}.png"), format!("{i:03}.txt"))).collect();
        let mut members: Vec<(&str, &[u8])> = Vec::new();
        for (img, txt) in &names {
            members.push((img, &png));
            members.push((txt, b"c"));
        }
        write(&shard, tar_bytes(&members));
        let mut source = WebDatasetSource::open(&shard).unwrap();
        assert!(source.next().unwrap().is_ok());
        drop(source);
        assert_eq!(read(&shard).len(), 50);
    }
}
