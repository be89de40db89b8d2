//! The text tokenizer (sentencepiece BPE) and the unified vocabulary it lives in.
//!
//! The unified vocabulary is [`VocabLayout::contiguous`]: the seven special tokens at ids 0..7,
//! then the VQ codebook, then the sentencepiece pieces in their own order. So text piece `s` has
//! token id `7 + codebook + s`. `vocab.json` beside the `.model` records the whole map by name
//! (HF's `vocabulary_map` form, image codes named `IMGIMG…Z`), so nothing is assumed on reload.
//!
//! The sentencepiece library has no trainer in its Rust binding, so training runs sentencepiece's
//! own trainer: Debian's `spm_train` when it is on `PATH`, else Python's `sentencepiece` package
//! (installed once into the cache with pip when missing). The `.model` it writes is a plain
//! sentencepiece model that Python's `sentencepiece` loads as it is.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use chameleon_model::{Modality, VocabLayout, vocab::image_token_name};
use sentencepiece::SentencePieceProcessor;
use serde::{Deserialize, Serialize};

/// File name of the sentencepiece model in a tokenizer directory.
pub const MODEL_FILE: &str = "tokenizer.model";
/// File name of the unified vocabulary in a tokenizer directory.
pub const VOCAB_FILE: &str = "vocab.json";
/// The Python sentencepiece release used to train when `spm_train` is absent.
pub const PY_SENTENCEPIECE: &str = "sentencepiece==0.2.1";

/// A tokenizer that cannot be trained, loaded or used; names the file or tool.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read, parsed or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No sentencepiece trainer could be found or installed.
    #[error("{0}")]
    NoTrainer(String),
    /// The trainer ran and failed.
    #[error("sentencepiece training failed: {0}")]
    Training(String),
    /// Text that sentencepiece could not encode, or ids that are not text.
    #[error("{0}")]
    Encode(String),
}

fn file_err(path: &Path, reason: impl ToString) -> TokenizerError {
    TokenizerError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

/// How to train the text tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Number of sentencepiece pieces (the paper: 65,536 in all; small for CPU experiments).
    /// Includes `<unk>` and the 256 byte-fallback pieces.
    #[serde(default = "default_text_pieces")]
    pub text_pieces: usize,
    /// At most this many lines of the corpus are sampled for training (0: all).
    #[serde(default = "default_max_lines")]
    pub max_training_lines: usize,
    /// A trained sentencepiece `.model` to use instead of training one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
}

fn default_text_pieces() -> usize {
    2048
}
fn default_max_lines() -> usize {
    200_000
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self { text_pieces: default_text_pieces(), max_training_lines: default_max_lines(), model: None }
    }
}

/// What `vocab.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VocabFile {
    /// Total token ids.
    vocab_size: usize,
    /// Codebook entries.
    codebook_size: usize,
    /// Token id of sentencepiece piece 0.
    text_offset: u32,
    /// Name -> id for every token, as HF's `vocabulary_map`.
    vocabulary_map: BTreeMap<String, u32>,
}

/// The unified tokenizer for text: sentencepiece pieces placed in a [`VocabLayout`].
pub struct TextTokenizer {
    sp: SentencePieceProcessor,
    layout: VocabLayout,
    text_offset: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.layout.vocab_size())
            .field("text_offset", &self.text_offset)
            .finish()
    }
}

impl TextTokenizer {
    /// Builds the unified vocabulary around a sentencepiece model for a codebook of
    /// `codebook_size` image codes.
    pub fn from_model(model: &Path, codebook_size: usize) -> Result<Self, TokenizerError> {
        let sp = SentencePieceProcessor::open(model)
            .map_err(|e| file_err(model, format!("not a sentencepiece model: {e}")))?;
        let layout = VocabLayout::contiguous(codebook_size, sp.len());
        let text_offset = (layout.vocab_size() - sp.len()) as u32;
        Ok(Self { sp, layout, text_offset })
    }

    /// Loads a tokenizer directory: `tokenizer.model` and `vocab.json`, checking that they agree.
    pub fn load(dir: &Path) -> Result<Self, TokenizerError> {
        let vocab_path = dir.join(VOCAB_FILE);
        let text = std::fs::read_to_string(&vocab_path).map_err(|e| file_err(&vocab_path, e))?;
        let file: VocabFile =
            serde_json::from_str(&text).map_err(|e| file_err(&vocab_path, format!("bad JSON: {e}")))?;
        let tok = Self::from_model(&dir.join(MODEL_FILE), file.codebook_size)?;
        let layout = VocabLayout::from_vocabulary_map(&file.vocabulary_map, file.vocab_size)
            .map_err(|e| file_err(&vocab_path, e))?;
        if layout != tok.layout || file.text_offset != tok.text_offset {
            return Err(file_err(
                &vocab_path,
                format!(
                    "does not match {}: {} text pieces there, vocab_size {} here",
                    MODEL_FILE,
                    tok.sp.len(),
                    file.vocab_size
                ),
            ));
        }
        Ok(tok)
    }

    /// Writes `vocab.json` and copies the `.model` into `dir`.
    pub fn save(&self, model: &Path, dir: &Path) -> Result<(), TokenizerError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let target = dir.join(MODEL_FILE);
        if model != target {
            std::fs::copy(model, &target).map_err(|e| file_err(&target, e))?;
        }
        let file = VocabFile {
            vocab_size: self.layout.vocab_size(),
            codebook_size: self.layout.codebook_size(),
            text_offset: self.text_offset,
            vocabulary_map: self.vocabulary_map(),
        };
        let path = dir.join(VOCAB_FILE);
        let json = serde_json::to_string_pretty(&file).map_err(|e| file_err(&path, e))?;
        std::fs::write(&path, json).map_err(|e| file_err(&path, e))
    }

    /// Name -> id of every token: specials and image codes by their Chameleon names, text
    /// pieces by their sentencepiece names (a piece that collides with a special name is
    /// prefixed with `text:`).
    pub fn vocabulary_map(&self) -> BTreeMap<String, u32> {
        let mut map = BTreeMap::new();
        let s = self.layout.special();
        for (name, id) in [
            (chameleon_model::vocab::names::BOS, s.bos),
            (chameleon_model::vocab::names::EOS, s.eos),
            (chameleon_model::vocab::names::PAD, s.pad),
            (chameleon_model::vocab::names::BEGIN_IMAGE, s.begin_image),
            (chameleon_model::vocab::names::END_IMAGE, s.end_image),
            (chameleon_model::vocab::names::END_OF_TURN, s.end_of_turn),
            (chameleon_model::vocab::names::IMAGE_PLACEHOLDER, s.image_placeholder),
        ] {
            map.insert(name.to_string(), id);
        }
        for (code, &id) in self.layout.image_tokens().iter().enumerate() {
            map.insert(image_token_name(code as u32), id);
        }
        let names = piece_names(&self.sp.to_serialized_proto());
        for piece in 0..self.sp.len() as u32 {
            let mut name = names.get(piece as usize).cloned().unwrap_or_else(|| format!("<piece{piece}>"));
            if map.contains_key(&name) || name.starts_with(chameleon_model::vocab::names::IMAGE_PREFIX) {
                name = format!("text:{name}");
            }
            map.insert(name, self.text_offset + piece);
        }
        map
    }

    /// The unified vocabulary layout.
    pub fn layout(&self) -> &VocabLayout {
        &self.layout
    }

    /// Total number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.layout.vocab_size()
    }

    /// Token ids of a text, appended to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let pieces = self.sp.encode(text).map_err(|e| TokenizerError::Encode(format!("cannot encode text: {e}")))?;
        out.extend(pieces.iter().map(|p| self.text_offset + p.id));
        Ok(())
    }

    /// Token ids of a text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out)?;
        Ok(out)
    }

    /// The text of token ids that are all text pieces.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut pieces = Vec::with_capacity(ids.len());
        for &id in ids {
            if self.layout.modality(id) != Some(Modality::Text) {
                return Err(TokenizerError::Encode(format!("token {id} is not a text piece")));
            }
            pieces.push(id - self.text_offset);
        }
        self.sp.decode_piece_ids(&pieces).map_err(|e| TokenizerError::Encode(format!("cannot decode: {e}")))
    }
}

/// The piece names of a serialized sentencepiece `ModelProto`, in id order: field 1 holds the
/// repeated `SentencePiece` messages, whose field 1 is the piece (the Rust binding has no
/// id-to-piece call).
fn piece_names(proto: &[u8]) -> Vec<String> {
    fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// (field, wire type, payload) of each field of a message.
    fn fields(buf: &[u8]) -> Vec<(u64, &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let Some(key) = varint(buf, &mut at) else { break };
            let payload = match key & 7 {
                0 => varint(buf, &mut at).map(|_| &buf[at..at]),
                1 => buf.get(at..at + 8).inspect(|_| at += 8),
                2 => varint(buf, &mut at).and_then(|n| buf.get(at..at + n as usize)).inspect(|p| at += p.len()),
                5 => buf.get(at..at + 4).inspect(|_| at += 4),
                _ => None,
            };
            let Some(payload) = payload else { break };
            if key & 7 == 2 {
                out.push((key >> 3, payload));
            }
        }
        out
    }
    fields(proto)
        .into_iter()
        .filter(|(f, _)| *f == 1)
        .map(|(_, piece)| {
            fields(piece)
                .into_iter()
                .find(|(f, _)| *f == 1)
                .map(|(_, name)| String::from_utf8_lossy(name).into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// sentencepiece's trainer flags: BPE, byte fallback, and no normalization at all, so that
/// encode then decode gives back the text unchanged (whitespace, case and Unicode forms kept).
fn trainer_flags(corpus: &Path, prefix: &Path, config: &TokenizerConfig) -> Vec<String> {
    let mut flags = vec![
        format!("--input={}", corpus.display()),
        format!("--model_prefix={}", prefix.display()),
        format!("--vocab_size={}", config.text_pieces),
        "--model_type=bpe".into(),
        "--character_coverage=1.0".into(),
        "--byte_fallback=true".into(),
        "--unk_id=0".into(),
        "--bos_id=-1".into(),
        "--eos_id=-1".into(),
        "--pad_id=-1".into(),
        "--normalization_rule_name=identity".into(),
        "--remove_extra_whitespaces=false".into(),
        "--add_dummy_prefix=false".into(),
        "--split_digits=true".into(),
        "--allow_whitespace_only_pieces=true".into(),
        "--max_sentence_length=16384".into(),
        "--num_threads=2".into(),
        "--minloglevel=1".into(),
    ];
    if config.max_training_lines > 0 {
        flags.push(format!("--input_sentence_size={}", config.max_training_lines));
        flags.push("--shuffle_input_sentence=true".into());
    }
    flags
}

/// Which program trains sentencepiece models here.
#[derive(Debug, Clone)]
enum Trainer {
    SpmTrain(PathBuf),
    Python { python: PathBuf, site: Option<PathBuf> },
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn python_has_sentencepiece(python: &Path, site: Option<&Path>) -> bool {
    let mut cmd = Command::new(python);
    cmd.args(["-c", "import sentencepiece"]);
    if let Some(site) = site {
        cmd.env("PYTHONPATH", site);
    }
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Finds `spm_train`, or Python with `sentencepiece` (installing it with pip into
/// `cache/python` when missing).
fn find_trainer(cache: &Path) -> Result<Trainer, TokenizerError> {
    if let Some(spm) = on_path("spm_train") {
        return Ok(Trainer::SpmTrain(spm));
    }
    let Some(python) = on_path("python3").or_else(|| on_path("python")) else {
        return Err(TokenizerError::NoTrainer(
            "training the text tokenizer needs sentencepiece's trainer, and neither `spm_train` nor \
             `python3` is on PATH. Install one (Debian: `apt-get install sentencepiece`, or Python 3 with \
             pip), or give a trained model with `tokenizer.model = \"PATH\"` in the [data] section"
                .into(),
        ));
    };
    if python_has_sentencepiece(&python, None) {
        return Ok(Trainer::Python { python, site: None });
    }
    let site = cache.join("python");
    if python_has_sentencepiece(&python, Some(&site)) {
        return Ok(Trainer::Python { python, site: Some(site) });
    }
    tracing::info!("installing {PY_SENTENCEPIECE} with pip into {}", site.display());
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
        .arg(&site)
        .arg(PY_SENTENCEPIECE)
        .output()
        .map_err(|e| TokenizerError::NoTrainer(format!("cannot run {} -m pip: {e}", python.display())))?;
    if !out.status.success() || !python_has_sentencepiece(&python, Some(&site)) {
        return Err(TokenizerError::NoTrainer(format!(
            "could not install {PY_SENTENCEPIECE} with `{} -m pip` (is pip installed? Debian: \
             `apt-get install python3-pip`, or `apt-get install sentencepiece` for spm_train): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(Trainer::Python { python, site: Some(site) })
}

/// Trains a sentencepiece BPE model on `lines` and writes `out_dir/tokenizer.model`.
/// `cache` is where a pip-installed trainer is kept.
pub fn train_sentencepiece<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    config: &TokenizerConfig,
    out_dir: &Path,
    cache: &Path,
) -> Result<PathBuf, TokenizerError> {
    std::fs::create_dir_all(out_dir).map_err(|e| file_err(out_dir, e))?;
    let corpus = out_dir.join(".sentencepiece-training-lines.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&corpus).map_err(|e| file_err(&corpus, e))?);
        let mut n = 0usize;
        for line in lines.into_iter().filter(|l| !l.trim().is_empty()) {
            writeln!(f, "{line}").map_err(|e| file_err(&corpus, e))?;
            n += 1;
        }
        f.flush().map_err(|e| file_err(&corpus, e))?;
        if n == 0 {
            return Err(TokenizerError::Training("the text corpus is empty".into()));
        }
    }
    let prefix = out_dir.join("tokenizer");
    let flags = trainer_flags(&corpus, &prefix, config);
    let trainer = find_trainer(cache)?;
    let output = match &trainer {
        Trainer::SpmTrain(spm) => Command::new(spm).args(&flags).output(),
        Trainer::Python { python, site } => {
            let mut cmd = Command::new(python);
            // Keyword arguments, so that paths with spaces survive.
            let script = "import sys, sentencepiece as s\n\
                          s.SentencePieceTrainer.train(**dict(a[2:].split('=', 1) for a in sys.argv[1:]))";
            cmd.args(["-c", script]);
            cmd.args(&flags);
            if let Some(site) = site {
                cmd.env("PYTHONPATH", site);
            }
            cmd.output()
        }
    }
    .map_err(|e| TokenizerError::Training(format!("cannot run {trainer:?}: {e}")))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        return Err(TokenizerError::Training(tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    let _ = std::fs::remove_file(&corpus);
    let _ = std::fs::remove_file(prefix.with_extension("vocab"));
    let model = prefix.with_extension("model");
    if !model.is_file() {
        return Err(TokenizerError::Training(format!("the trainer wrote no {}", model.display())));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tokenizer.model")
    }

    #[test]
    fn encode_then_decode_returns_the_text_unchanged() {
        let tok = TextTokenizer::from_model(&fixture(), 64).unwrap();
        for text in [
            "To be, or not to be: that is the question.",
            "  leading and  double  spaces, trailing  ",
            "Lines\nand\ttabs\n\n",
            "Ünïcödé, emoji 🦎 and CJK 变色龙, digits 0123456789",
            "a",
        ] {
            let ids = tok.encode(text).unwrap();
            assert!(!ids.is_empty());
            assert!(ids.iter().all(|&id| tok.layout().modality(id) == Some(Modality::Text)), "{text:?}");
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        assert!(tok.encode("").unwrap().is_empty());
    }

    /// Python's sentencepiece (scripts/tokenizer_golden.py) encodes the same ids, and names
    /// the pieces as `vocab.json` does.
    #[test]
    fn ids_and_piece_names_match_python_sentencepiece() {
        let path = fixture().with_file_name("golden.json");
        let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let tok = TextTokenizer::from_model(&fixture(), 64).unwrap();
        let offset = tok.text_offset;
        for case in golden["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> =
                case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32 + offset).collect();
            assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
        }
        let names = piece_names(&tok.sp.to_serialized_proto());
        let want: Vec<&str> = golden["pieces"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn text_ids_sit_after_the_specials_and_the_codebook() {
        let tok = TextTokenizer::from_model(&fixture(), 64).unwrap();
        let ids = tok.encode("the king").unwrap();
        assert!(ids.iter().all(|&id| id >= 7 + 64));
        assert_eq!(tok.vocab_size(), 7 + 64 + tok.sp.len());
        assert_eq!(tok.layout().image_token(0), Some(7));
        // Image and special ids are not text.
        assert!(tok.decode(&[7]).unwrap_err().to_string().contains("not a text piece"));
    }

    #[test]
    fn vocab_json_round_trips_and_a_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tok = TextTokenizer::from_model(&fixture(), 16).unwrap();
        tok.save(&fixture(), dir.path()).unwrap();
        let back = TextTokenizer::load(dir.path()).unwrap();
        assert_eq!(back.layout(), tok.layout());
        assert_eq!(back.encode("Hamlet").unwrap(), tok.encode("Hamlet").unwrap());
        // The map names real pieces and Chameleon's image names.
        let map = tok.vocabulary_map();
        assert_eq!(map.len(), tok.vocab_size());
        assert_eq!(map["IMGIMGAZ"], 7);
        // A vocab.json written for another codebook does not match the model.
        let other = TextTokenizer::from_model(&fixture(), 32).unwrap();
        other.save(&fixture(), dir.path()).unwrap();
        let mut text = std::fs::read_to_string(dir.path().join(VOCAB_FILE)).unwrap();
        text = text.replacen("\"codebook_size\": 32", "\"codebook_size\": 16", 1);
        std::fs::write(dir.path().join(VOCAB_FILE), text).unwrap();
        let err = TextTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(VOCAB_FILE), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_model_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("junk.model");
        std::fs::write(&bad, b"not a model").unwrap();
        let err = TextTokenizer::from_model(&bad, 8).unwrap_err().to_string();
        assert!(err.contains("junk.model"), "{err}");
    }
}
