//! The text tokenizer of an HF Chameleon checkpoint (`tokenizer.json`, read with HF's
//! `tokenizers`). Its ids are the checkpoint's unified vocabulary ids already: text pieces,
//! image tokens and special tokens all live in one table, which `vocabulary_map` in config.json
//! mirrors.

use std::path::Path;

use chameleon_model::{Modality, VocabLayout};

use crate::tokenizer::TokenizerError;

/// An HF `tokenizer.json` over a checkpoint's vocabulary.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    layout: VocabLayout,
    path: std::path::PathBuf,
}

impl HfTokenizer {
    /// Loads `path`, checking that its ids fit the checkpoint's vocabulary.
    pub fn load(path: &Path, layout: VocabLayout) -> Result<Self, TokenizerError> {
        let err = |reason: String| TokenizerError::File { path: path.to_path_buf(), reason };
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| err(format!("not a tokenizer.json: {e}")))?;
        let top = inner.get_vocab(true).into_values().max().unwrap_or(0) as usize;
        if top >= layout.vocab_size() {
            return Err(err(format!(
                "ids up to {top}, beyond the checkpoint's vocabulary of {}: not this checkpoint's tokenizer",
                layout.vocab_size()
            )));
        }
        Ok(Self { inner, layout, path: path.to_path_buf() })
    }

    /// The vocabulary layout.
    pub fn layout(&self) -> &VocabLayout {
        &self.layout
    }

    /// Token ids of a text (no special tokens added), appended to `out`. Ids that are not text
    /// pieces in the layout are refused: the tokenizer and the checkpoint disagree.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let err = |reason: String| TokenizerError::File { path: self.path.clone(), reason };
        let enc = self.inner.encode(text, false).map_err(|e| err(format!("cannot encode: {e}")))?;
        for &id in enc.get_ids() {
            if self.layout.modality(id) != Some(Modality::Text) {
                return Err(err(format!("encoding {text:?} gave id {id}, not a text piece of the checkpoint")));
            }
            out.push(id);
        }
        Ok(())
    }

    /// The text of ids that are text pieces.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::File { path: self.path.clone(), reason: format!("cannot decode: {e}") })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A word-level tokenizer.json over the text entries of a vocabulary map.
    fn write_word_level(map: &BTreeMap<String, u32>, path: &Path) {
        let vocab: serde_json::Map<String, serde_json::Value> =
            map.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": { "type": "Whitespace" },
            "post_processor": null,
            "decoder": null,
            "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<pad>" }
        });
        std::fs::write(path, json.to_string()).unwrap();
    }

    #[test]
    fn a_tokenizer_json_encodes_into_the_checkpoint_vocabulary() {
        let layout = VocabLayout::contiguous(4, 6);
        let map = layout.to_vocabulary_map();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let text: Vec<(&String, &u32)> =
            map.iter().filter(|(_, id)| layout.modality(**id) == Some(Modality::Text)).collect();
        let words: BTreeMap<String, u32> =
            text.iter().map(|(k, v)| (format!("w{}", k.len() + **v as usize), **v)).collect();
        let mut all = words.clone();
        all.insert("<pad>".into(), layout.special().pad);
        write_word_level(&all, &path);
        let tok = HfTokenizer::load(&path, layout.clone()).unwrap();
        let (w, id): (Vec<&String>, Vec<u32>) = words.iter().take(3).unzip();
        let line = w.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
        let mut ids = Vec::new();
        tok.encode_into(&line, &mut ids).unwrap();
        assert_eq!(ids, id);
        assert_eq!(tok.decode(&ids).unwrap().split_whitespace().collect::<Vec<_>>(), w);
        // A word the vocabulary lacks maps to <pad>: not a text piece, refused.
        let e = tok.encode_into("nope", &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("not a text piece") && e.contains("tokenizer.json"), "{e}");
        // A tokenizer bigger than the checkpoint's vocabulary is someone else's.
        let mut big = all.clone();
        big.insert("extra".into(), layout.vocab_size() as u32 + 5);
        write_word_level(&big, &path);
        let e = HfTokenizer::load(&path, layout).err().unwrap().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("not this checkpoint's"), "{e}");
    }
}
