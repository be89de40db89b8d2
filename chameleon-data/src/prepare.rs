//! `prepare`: raw sources to tokenized shards, cached by content.
//!
//! 1. Gather each source's documents (the built-in ones are fetched once into the cache).
//! 2. Train the sentencepiece tokenizer on the text side (or load `tokenizer.model`); cached by
//!    the training text and settings.
//! 3. Tokenize: text with the tokenizer, every image with the VQ tokenizer into
//!    `begin-image, codes…, end-image`; caption pairs get their order (caption first for
//!    generation, image first for understanding) from a seeded hash.
//! 4. Write train and held-out shards per source, and `manifest.json`, into a folder named by a
//!    hash of every input (config, tokenizer, VQ weights, source contents). The folder is built
//!    under a temporary name and renamed when whole, so a second run with the same inputs finds
//!    it and does no work, and a crash never leaves one that looks whole.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use chameleon_model::vq::VqVae;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{DataConfig, SourceConfig, SourceKind, is_held_out};
use crate::corpus;
use crate::document::{BadRecord, DocKind, Document, ImageRef, Segment};
use crate::image as img;
use crate::shard::ShardWriter;
use crate::source::{self, ImagePaths, SourceFormat, SourceOptions};
use crate::tokenizer::{MODEL_FILE, TextTokenizer, train_sentencepiece};

/// Version of the prepared layout; part of the cache key.
pub const PREPARED_VERSION: u32 = 1;
/// The manifest of a prepared folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Documents per shard file before a new one starts.
pub const DOCS_PER_SHARD: usize = 50_000;
/// Images encoded by the VQ tokenizer at once.
const IMAGE_BATCH: usize = 64;

/// Why preparing stopped.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A bad record (without `--skip-bad`).
    #[error("{0} (use --skip-bad to skip bad records)")]
    Bad(BadRecord),
    /// Anything else, already in words that name the file.
    #[error("{0}")]
    Other(String),
}

fn other(e: impl ToString) -> PrepareError {
    PrepareError::Other(e.to_string())
}

/// What one source became.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceSummary {
    /// Source name.
    pub name: String,
    /// Training shard files (relative to the prepared folder).
    pub train_shards: Vec<String>,
    /// Held-out shard files.
    pub held_out_shards: Vec<String>,
    /// Training documents.
    pub documents: u64,
    /// Held-out documents.
    pub held_out_documents: u64,
    /// Images tokenized.
    pub images: u64,
    /// Tokens written (train and held out).
    pub tokens: u64,
    /// Caption pairs written caption first.
    pub captions_first: u64,
    /// Caption pairs written image first.
    pub images_first: u64,
    /// Bad records skipped (with `--skip-bad`).
    pub skipped_bad: u64,
}

/// `manifest.json`: what a prepared folder holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`PREPARED_VERSION`].
    pub version: u32,
    /// The content hash that names the folder.
    pub key: String,
    /// Token ids in the unified vocabulary.
    pub vocab_size: usize,
    /// VQ codebook entries.
    pub codebook_size: usize,
    /// Image side in pixels that the VQ tokenizer reads.
    pub image_resolution: usize,
    /// Codes per image.
    pub codes_per_image: usize,
    /// Per source, in config order.
    pub sources: Vec<SourceSummary>,
    /// The data config it was made from.
    pub config: DataConfig,
}

/// A prepared folder.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Whether this run made it (false: found in the cache).
    pub built: bool,
}

impl Prepared {
    /// Opens an existing prepared folder.
    pub fn open(dir: &Path) -> Result<Self, PrepareError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| other(format!("{}: {e}", path.display())))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| other(format!("{}: not a manifest: {e}", path.display())))?;
        if manifest.version != PREPARED_VERSION {
            return Err(other(format!(
                "{}: prepared with layout version {}, this build reads {PREPARED_VERSION}; prepare again",
                path.display(),
                manifest.version
            )));
        }
        Ok(Self { dir: dir.to_path_buf(), manifest, built: false })
    }

    /// The text tokenizer saved with the shards.
    pub fn tokenizer(&self) -> Result<TextTokenizer, PrepareError> {
        TextTokenizer::load(&self.dir).map_err(other)
    }
}

/// The VQ tokenizer and where its files are (their bytes are part of the cache key).
pub struct ImageCoder<'a> {
    /// The model.
    pub model: &'a VqVae,
    /// Its directory (hashed).
    pub dir: &'a Path,
    /// Device to encode on.
    pub device: &'a Device,
}

/// A source's documents, in order, with the group that decides the held-out split.
type Docs = Box<dyn Iterator<Item = Result<(Document, usize), BadRecord>>>;

fn open_source(
    s: &SourceConfig,
    held_out_every: usize,
    cache: &Path,
    texts: &mut Option<Vec<Document>>,
) -> Result<Docs, PrepareError> {
    let mut shakespeare = || -> Result<Vec<Document>, PrepareError> {
        if texts.is_none() {
            let files = corpus::shakespeare_files(cache).map_err(other)?;
            *texts = Some(corpus::text_documents(&files).map_err(other)?);
        }
        Ok(texts.clone().unwrap_or_default())
    };
    let indexed = |docs: Vec<Document>| -> Docs { Box::new(docs.into_iter().enumerate().map(|(i, d)| Ok((d, i)))) };
    let format = match s.format {
        SourceKind::BuiltinText => return Ok(indexed(shakespeare()?)),
        // Grouped by passage number, so a passage is on the same side of the held-out split in
        // the text and the interleaved source.
        SourceKind::BuiltinInterleaved => {
            let docs = corpus::interleaved_documents(&shakespeare()?, held_out_every);
            return Ok(Box::new(docs.into_iter().map(Ok)));
        }
        SourceKind::BuiltinCaptions => return Ok(Box::new(corpus::caption_documents().into_iter().map(Ok))),
        SourceKind::BuiltinSft => {
            let category = s.category.as_deref().unwrap_or_default();
            let conversations = crate::sft_set::conversations(category, &shakespeare()?).map_err(other)?;
            return Ok(Box::new(conversations.into_iter().map(|(c, group)| Ok((c.document(), group)))));
        }
        SourceKind::Text => SourceFormat::Text,
        SourceKind::Caption => SourceFormat::Caption,
        SourceKind::Interleaved => SourceFormat::Interleaved,
        SourceKind::Webdataset => SourceFormat::WebDataset,
        SourceKind::Html => SourceFormat::Html,
        SourceKind::Sft => SourceFormat::Sft,
    };
    let path = s.path.clone().unwrap_or_default();
    let image_paths = if s.images_anywhere { ImagePaths::Anywhere } else { ImagePaths::Inside };
    let options = SourceOptions { min_image_side: s.min_image_side, category: s.category.clone(), image_paths };
    let docs = source::open(format, &path, &options).map_err(PrepareError::Bad)?;
    Ok(Box::new(docs.enumerate().map(|(i, d)| d.map(|d| (d, i)))))
}

/// Hashes a file or every file under a folder (sorted), names included.
fn hash_path(h: &mut Sha256, path: &Path) -> Result<(), PrepareError> {
    let meta = std::fs::metadata(path).map_err(|e| other(format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| other(format!("{}: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            hash_path(h, &e)?;
        }
    } else {
        h.update(path.to_string_lossy().as_bytes());
        let mut f = std::fs::File::open(path).map_err(|e| other(format!("{}: {e}", path.display())))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(|e| other(format!("{}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text lines of every source, for training the tokenizer.
fn training_text(
    config: &DataConfig,
    cache: &Path,
    texts: &mut Option<Vec<Document>>,
) -> Result<Vec<String>, PrepareError> {
    let mut lines = Vec::new();
    for s in &config.sources {
        // The built-in interleaved documents repeat the built-in text.
        if s.format == SourceKind::BuiltinInterleaved
            && config.sources.iter().any(|o| o.format == SourceKind::BuiltinText)
        {
            continue;
        }
        for doc in open_source(s, config.held_out_every, cache, texts)? {
            let Ok((doc, _)) = doc else { continue };
            for seg in &doc.segments {
                if let Segment::Text(t) = seg {
                    lines.extend(t.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
                }
            }
        }
    }
    Ok(lines)
}

/// Trains (or finds in the cache, or loads from the config) the sentencepiece model.
fn tokenizer_model(
    config: &DataConfig,
    cache: &Path,
    texts: &mut Option<Vec<Document>>,
) -> Result<PathBuf, PrepareError> {
    if let Some(model) = &config.tokenizer.model {
        return Ok(model.clone());
    }
    let lines = training_text(config, cache, texts)?;
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&config.tokenizer).map_err(other)?);
    for l in &lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    let dir = cache.join("tokenizers").join(&hex(&h.finalize())[..16]);
    let model = dir.join(MODEL_FILE);
    if model.is_file() {
        tracing::info!("text tokenizer found in the cache: {}", model.display());
        return Ok(model);
    }
    let tmp = partial_dir(&dir);
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!(
        "training the sentencepiece BPE tokenizer ({} pieces) on {} lines",
        config.tokenizer.text_pieces,
        lines.len()
    ));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let trained = train_sentencepiece(lines.iter().map(String::as_str), &config.tokenizer, &tmp, cache);
    bar.finish_and_clear();
    trained.map_err(other)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| other(format!("{}: {e}", dir.display())))?;
    Ok(model)
}

/// The folder `dir` is built in before it is renamed into place: `DIR.partial-PID`, one per
/// process, so that two prepares at once never delete each other's work. Partial folders of
/// processes that no longer exist (killed mid-prepare) are removed here, beside any key.
fn partial_dir(dir: &Path) -> PathBuf {
    if let Some(parent) = dir.parent()
        && let Ok(list) = std::fs::read_dir(parent)
    {
        for entry in list.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.rsplit_once(".partial-").and_then(|(_, pid)| pid.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !process_exists(pid)
            {
                tracing::info!("removing {}, left by a prepare that did not finish", entry.path().display());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    tmp
}

/// Whether a process exists (`/proc/PID`); where there is no /proc, assume it does.
fn process_exists(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// The settings of `[data]` that change the shards (not the stages or the sequence length,
/// which only the loader uses).
#[derive(Serialize)]
struct KeyedSettings<'a> {
    seed: u64,
    caption_generation_share: f64,
    held_out_every: usize,
    tokenizer: &'a crate::tokenizer::TokenizerConfig,
    sources: Vec<(&'a str, SourceKind, Option<&'a Path>, u32, Option<&'a str>)>,
    skip_bad: bool,
    /// Sources whose images may lie anywhere (left out of the key when none, so that the keys
    /// of configs that never set it stay what they were).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images_anywhere: Vec<&'a str>,
}

/// Hashes every built-in emoji (name and PNG), once per key.
fn hash_emoji(h: &mut Sha256, done: &mut bool) {
    if !*done {
        for e in crate::emoji::all() {
            h.update(e.name.as_bytes());
            h.update(e.png);
        }
        *done = true;
    }
}

/// The content hash that names a prepared folder: the settings that change the shards, the
/// tokenizer and VQ files, and the bytes of every source, including the image files that
/// caption, interleaved and HTML sources point at (wherever they are).
fn cache_key(
    config: &DataConfig,
    model: &Path,
    vq_dir: &Path,
    cache: &Path,
    skip_bad: bool,
    texts: &mut Option<Vec<Document>>,
) -> Result<String, PrepareError> {
    let settings = KeyedSettings {
        seed: config.seed,
        caption_generation_share: config.caption_generation_share,
        held_out_every: config.held_out_every,
        tokenizer: &config.tokenizer,
        sources: config
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s.format, s.path.as_deref(), s.min_image_side, s.category.as_deref()))
            .collect(),
        skip_bad,
        images_anywhere: config.sources.iter().filter(|s| s.images_anywhere).map(|s| s.name.as_str()).collect(),
    };
    let mut h = Sha256::new();
    h.update(PREPARED_VERSION.to_le_bytes());
    h.update(serde_json::to_vec(&settings).map_err(other)?);
    hash_path(&mut h, model)?;
    hash_path(&mut h, vq_dir)?;
    let mut emoji_hashed = false;
    for s in &config.sources {
        match s.format {
            SourceKind::BuiltinText | SourceKind::BuiltinInterleaved | SourceKind::BuiltinCaptions => {
                if s.format != SourceKind::BuiltinCaptions {
                    for f in corpus::shakespeare_files(cache).map_err(other)? {
                        hash_path(&mut h, &f)?;
                    }
                }
                if s.format != SourceKind::BuiltinText {
                    hash_emoji(&mut h, &mut emoji_hashed);
                }
            }
            // Templated: the conversations themselves (their text, image names and turns) are
            // the key, so that a change of template is a new folder.
            SourceKind::BuiltinSft => {
                for (doc, group) in open_source(s, config.held_out_every, cache, texts)?.flatten() {
                    h.update((group as u64).to_le_bytes());
                    for seg in &doc.segments {
                        match seg {
                            Segment::Text(t) => h.update(t.as_bytes()),
                            Segment::Image(i) => h.update(i.origin().as_bytes()),
                            Segment::EndOfTurn => h.update(b"\0eot\0"),
                        }
                    }
                }
                hash_emoji(&mut h, &mut emoji_hashed);
            }
            SourceKind::Text | SourceKind::Webdataset => hash_path(&mut h, s.path.as_deref().unwrap_or(Path::new("")))?,
            SourceKind::Caption | SourceKind::Interleaved | SourceKind::Html | SourceKind::Sft => {
                hash_path(&mut h, s.path.as_deref().unwrap_or(Path::new("")))?;
                for (doc, _) in open_source(s, config.held_out_every, cache, texts)?.flatten() {
                    for image in doc.images() {
                        // A missing image is a bad record later; here it is just part of the key.
                        if let ImageRef::File(p) = image
                            && hash_path(&mut h, p).is_err()
                        {
                            h.update(format!("missing {}", p.display()));
                        }
                    }
                }
            }
        }
    }
    Ok(hex(&h.finalize()))
}

/// Whether caption pair `index` of `source` is written caption first.
pub fn caption_first(seed: u64, source: &str, index: usize, share: f64) -> bool {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(source.as_bytes());
    h.update((index as u64).to_le_bytes());
    let d = h.finalize();
    let x = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (x as f64 / u64::MAX as f64) < share
}

/// Encodes images to token ids, caching repeated ones (the built-in corpus reuses emoji).
struct Images<'a> {
    coder: &'a ImageCoder<'a>,
    tokens_of_code: Vec<u32>,
    begin: u32,
    end: u32,
    cache: HashMap<String, Arc<Vec<u32>>>,
}

impl Images<'_> {
    /// Makes sure every image of `docs` has its block in the cache.
    fn encode(&mut self, docs: &[&Document]) -> Result<(), BadRecord> {
        // Bounded memory for sources of unique images; cleared before this chunk's look-ups.
        if self.cache.len() > 200_000 {
            self.cache.clear();
        }
        let side = self.coder.model.config.resolution;
        let mut pending: Vec<(String, img::Pixels)> = Vec::new();
        for doc in docs {
            for image in doc.images() {
                let key = image.origin();
                if self.cache.contains_key(&key) || pending.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let pixels = match image {
                    ImageRef::File(p) => img::load_image(p, side),
                    ImageRef::Bytes { origin, bytes } => img::decode_image(bytes, Path::new(origin), side),
                }
                .map_err(|e| BadRecord::new(doc.location.clone(), e.to_string()))?;
                pending.push((key, pixels));
            }
        }
        let per = self.coder.model.config.codes_per_image();
        for chunk in pending.chunks(IMAGE_BATCH) {
            let flat: Vec<f32> = chunk.iter().flat_map(|(_, p)| p.iter().copied()).collect();
            let x = Tensor::<4>::from_data(TensorData::new(flat, [chunk.len(), 3, side, side]), self.coder.device);
            let failed = |reason: String| BadRecord::new(docs[0].location.clone(), reason);
            let codes: Vec<i64> = self
                .coder
                .model
                .encode(x)
                .into_data_as::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| failed(format!("the image tokenizer returned no codes: {e:?}")))?;
            if codes.len() != per * chunk.len() {
                return Err(failed(format!(
                    "the image tokenizer returned {} codes for {} images of {per}",
                    codes.len(),
                    chunk.len()
                )));
            }
            for (i, (key, _)) in chunk.iter().enumerate() {
                let mut block = Vec::with_capacity(per + 2);
                block.push(self.begin);
                block.extend(codes[i * per..(i + 1) * per].iter().map(|&c| self.tokens_of_code[c as usize]));
                block.push(self.end);
                self.cache.insert(key.clone(), Arc::new(block));
            }
        }
        Ok(())
    }

    fn block(&self, image: &ImageRef) -> Option<&[u32]> {
        self.cache.get(&image.origin()).map(|b| b.as_slice())
    }
}

/// Writes one split of one source into numbered shards.
struct SplitWriter {
    dir: PathBuf,
    stem: String,
    vocab_size: u32,
    writer: Option<ShardWriter>,
    in_current: usize,
    files: Vec<String>,
}

impl SplitWriter {
    fn new(dir: &Path, stem: String, vocab_size: u32) -> Self {
        Self { dir: dir.to_path_buf(), stem, vocab_size, writer: None, in_current: 0, files: Vec::new() }
    }

    fn push(&mut self, kind: DocKind, tokens: &[u32]) -> Result<(), PrepareError> {
        if self.writer.is_none() || self.in_current >= DOCS_PER_SHARD {
            self.close()?;
            let name = format!("{}-{:05}.shard", self.stem, self.files.len());
            self.writer = Some(ShardWriter::create(&self.dir.join(&name), self.vocab_size).map_err(other)?);
            self.files.push(name);
            self.in_current = 0;
        }
        self.in_current += 1;
        self.writer.as_mut().map_or(Ok(()), |w| w.push(kind, tokens).map_err(other))
    }

    fn close(&mut self) -> Result<(), PrepareError> {
        if let Some(w) = self.writer.take() {
            w.finish().map_err(other)?;
        }
        Ok(())
    }

    /// Closes the last shard; a split with no document still gets one empty shard.
    fn finish(mut self) -> Result<Vec<String>, PrepareError> {
        if self.files.is_empty() {
            let name = format!("{}-00000.shard", self.stem);
            ShardWriter::create(&self.dir.join(&name), self.vocab_size).map_err(other)?.finish().map_err(other)?;
            self.files.push(name);
        }
        self.close()?;
        Ok(self.files)
    }
}

/// Tokenizes one document (its images already encoded).
fn tokenize(
    doc: &Document,
    text: &TextTokenizer,
    images: &Images,
    caption_first: bool,
    out: &mut Vec<u32>,
) -> Result<(), BadRecord> {
    out.clear();
    let push = |seg: &Segment, out: &mut Vec<u32>| -> Result<(), BadRecord> {
        match seg {
            Segment::Text(t) => {
                text.encode_into(t, out).map_err(|e| BadRecord::new(doc.location.clone(), e.to_string()))
            }
            Segment::Image(i) => {
                let block = images.block(i).ok_or_else(|| {
                    BadRecord::new(doc.location.clone(), format!("image {} was not encoded", i.origin()))
                })?;
                out.extend_from_slice(block);
                Ok(())
            }
            Segment::EndOfTurn => {
                out.push(text.layout().special().end_of_turn);
                Ok(())
            }
        }
    };
    if doc.kind == DocKind::Caption && caption_first {
        for seg in doc.segments.iter().rev() {
            push(seg, out)?;
        }
    } else {
        for seg in &doc.segments {
            push(seg, out)?;
        }
    }
    Ok(())
}

/// Prepares the shards for `config` under `cache/shards/`, or finds them there.
pub fn prepare(
    config: &DataConfig,
    coder: &ImageCoder,
    cache: &Path,
    skip_bad: bool,
    show_progress: bool,
) -> Result<Prepared, PrepareError> {
    let mut texts: Option<Vec<Document>> = None;
    let model = tokenizer_model(config, cache, &mut texts)?;
    let codebook = coder.model.config.num_embeddings;
    let text = TextTokenizer::from_model(&model, codebook).map_err(other)?;

    let key = cache_key(config, &model, coder.dir, cache, skip_bad, &mut texts)?;
    let dir = cache.join("shards").join(&key[..16]);
    if dir.join(MANIFEST_FILE).is_file()
        && let Ok(found) = Prepared::open(&dir)
        && found.manifest.key == key
    {
        return Ok(found);
    }
    let tmp = partial_dir(&dir);
    std::fs::create_dir_all(&tmp).map_err(|e| other(format!("{}: {e}", tmp.display())))?;
    text.save(&model, &tmp).map_err(other)?;

    let layout = text.layout().clone();
    let special = layout.special();
    let mut images = Images {
        coder,
        tokens_of_code: layout.image_tokens().to_vec(),
        begin: special.begin_image,
        end: special.end_image,
        cache: HashMap::new(),
    };
    let vocab_size = layout.vocab_size() as u32;
    let mut summaries = Vec::new();
    for s in &config.sources {
        let mut summary = SourceSummary { name: s.name.clone(), ..Default::default() };
        let mut train = SplitWriter::new(&tmp, format!("{}.train", s.name), vocab_size);
        let mut held = SplitWriter::new(&tmp, format!("{}.heldout", s.name), vocab_size);
        let bar = if show_progress { indicatif::ProgressBar::new_spinner() } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {pos} documents ({per_sec}) {msg}")
                .map_err(other)?,
        );
        bar.set_prefix(s.name.clone());
        let mut docs = open_source(s, config.held_out_every, cache, &mut texts)?;
        let mut tokens = Vec::new();
        let mut index = 0usize;
        loop {
            // A chunk of documents, so that their images are encoded in batches.
            // A reader error stops prepare only after the documents before it, so that the
            // first bad record in reading order is the one reported.
            let mut chunk: Vec<(Document, usize)> = Vec::new();
            let mut stop: Option<BadRecord> = None;
            while chunk.len() < 256 {
                match docs.next() {
                    None => break,
                    Some(Ok(d)) => chunk.push(d),
                    Some(Err(bad)) if skip_bad => {
                        tracing::warn!("skipping {bad}");
                        summary.skipped_bad += 1;
                    }
                    Some(Err(bad)) => {
                        stop = Some(bad);
                        break;
                    }
                }
            }
            if chunk.is_empty() {
                match stop {
                    Some(bad) => return Err(PrepareError::Bad(bad)),
                    None => break,
                }
            }
            // Encode the chunk's images; with --skip-bad, a document with a bad image is dropped.
            let mut keep: Vec<(Document, usize)> = Vec::with_capacity(chunk.len());
            if let Err(bad) = images.encode(&chunk.iter().map(|(d, _)| d).collect::<Vec<_>>()) {
                if !skip_bad {
                    return Err(PrepareError::Bad(bad));
                }
                for (d, g) in chunk {
                    match images.encode(&[&d]) {
                        Ok(()) => keep.push((d, g)),
                        Err(bad) => {
                            tracing::warn!("skipping {bad}");
                            summary.skipped_bad += 1;
                        }
                    }
                }
            } else {
                keep = chunk;
            }
            for (doc, group) in keep {
                let first = doc.kind == DocKind::Caption
                    && caption_first(config.seed, &s.name, index, config.caption_generation_share);
                index += 1;
                match tokenize(&doc, &text, &images, first, &mut tokens) {
                    Ok(()) => {}
                    Err(bad) if skip_bad => {
                        tracing::warn!("skipping {bad}");
                        summary.skipped_bad += 1;
                        continue;
                    }
                    Err(bad) => return Err(PrepareError::Bad(bad)),
                }
                if tokens.is_empty() {
                    continue;
                }
                if doc.kind == DocKind::Caption {
                    if first { summary.captions_first += 1 } else { summary.images_first += 1 }
                }
                summary.images += doc.images().count() as u64;
                summary.tokens += tokens.len() as u64;
                if is_held_out(group, config.held_out_every) {
                    held.push(doc.kind, &tokens)?;
                    summary.held_out_documents += 1;
                } else {
                    train.push(doc.kind, &tokens)?;
                    summary.documents += 1;
                }
                bar.inc(1);
            }
            if let Some(bad) = stop {
                return Err(PrepareError::Bad(bad));
            }
        }
        bar.finish_and_clear();
        if let (SourceKind::Sft, Some(category)) = (s.format, &s.category)
            && summary.documents + summary.held_out_documents == 0
        {
            return Err(other(format!(
                "{}: source `{}` has no conversation of category `{category}` (a misspelt category?)",
                s.path.as_deref().unwrap_or(Path::new("")).display(),
                s.name
            )));
        }
        summary.train_shards = train.finish()?;
        summary.held_out_shards = held.finish()?;
        tracing::info!(
            "{}: {} documents (+{} held out), {} images, {} tokens{}",
            s.name,
            summary.documents,
            summary.held_out_documents,
            summary.images,
            summary.tokens,
            if summary.skipped_bad > 0 {
                format!(", {} bad records skipped", summary.skipped_bad)
            } else {
                String::new()
            }
        );
        summaries.push(summary);
    }
    let codes_per_image = coder.model.config.codes_per_image();
    let manifest = Manifest {
        version: PREPARED_VERSION,
        key,
        vocab_size: layout.vocab_size(),
        codebook_size: codebook,
        image_resolution: coder.model.config.resolution,
        codes_per_image,
        sources: summaries,
        config: config.clone(),
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(other)?;
    std::fs::write(tmp.join(MANIFEST_FILE), json).map_err(other)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| other(format!("{}: {e}", dir.display())))?;
    Ok(Prepared { dir, manifest, built: true })
}
