//! The unified vocabulary: where special tokens, image codes and text pieces live.
//!
//! Chameleon's released vocabulary puts the 8192 image codes at token ids 4..8195, but nothing
//! guarantees a fixed offset: the code of an image token comes from its name in the checkpoint's
//! `vocabulary_map` (`IMGIMG<digits as letters A-J>Z`). So this type keeps a dense table from
//! codebook index to token id and never assumes an offset.

use std::collections::BTreeMap;

/// What a token id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    /// A text piece of the BPE tokenizer.
    Text,
    /// One code of the VQ image tokenizer.
    Image,
    /// bos, eos, pad, begin/end image, end of turn, image placeholder.
    Special,
}

/// Names of the special tokens in Chameleon's released vocabulary.
pub mod names {
    /// Begin of sequence.
    pub const BOS: &str = "<s>";
    /// End of sequence.
    pub const EOS: &str = "</s>";
    /// Padding.
    pub const PAD: &str = "<pad>";
    /// Begin of an image block.
    pub const BEGIN_IMAGE: &str = "<racm3:break>";
    /// End of an image block.
    pub const END_IMAGE: &str = "<eoss>";
    /// End of a conversation turn (separates prompt from answer).
    pub const END_OF_TURN: &str = "<reserved08706>";
    /// Placeholder for an image in a prompt, replaced by its codes before the model sees it.
    pub const IMAGE_PLACEHOLDER: &str = "<image>";
    /// Prefix of the names of image-code tokens.
    pub const IMAGE_PREFIX: &str = "IMGIMG";
}

/// Token ids of the special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Begin of sequence.
    pub bos: u32,
    /// End of sequence (also the separator between packed documents).
    pub eos: u32,
    /// Padding.
    pub pad: u32,
    /// Begin of an image block.
    pub begin_image: u32,
    /// End of an image block.
    pub end_image: u32,
    /// End of a conversation turn.
    pub end_of_turn: u32,
    /// Image placeholder in prompts.
    pub image_placeholder: u32,
}

impl SpecialTokens {
    /// The id of a special token the vocabulary does not have (see
    /// [`VocabLayout::require_special`]); it matches no token, so it is never detected either.
    pub const ABSENT: u32 = u32::MAX;

    fn all(&self) -> [(&'static str, u32); 7] {
        [
            (names::BOS, self.bos),
            (names::EOS, self.eos),
            (names::PAD, self.pad),
            (names::BEGIN_IMAGE, self.begin_image),
            (names::END_IMAGE, self.end_image),
            (names::END_OF_TURN, self.end_of_turn),
            (names::IMAGE_PLACEHOLDER, self.image_placeholder),
        ]
    }
}

/// Layout of the unified vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct VocabLayout {
    special: SpecialTokens,
    /// Codebook index -> token id.
    image_tokens: Vec<u32>,
    /// Token id -> modality.
    modality: Vec<Modality>,
    /// Token id -> codebook index, for image tokens.
    image_code: Vec<Option<u32>>,
    /// Names of the special tokens this vocabulary lacks (their ids are `SpecialTokens::ABSENT`).
    missing_special: Vec<&'static str>,
    /// Why a `vocabulary_map`'s image tokens are unusable (then there are none).
    image_problem: Option<String>,
}

/// Token ids of the `IMGIMG…Z` names of a `vocabulary_map`, in codebook order; an error unless
/// their codes are exactly 0..n.
fn image_codes(map: &BTreeMap<String, u32>) -> Result<Vec<u32>, String> {
    let mut codes: Vec<(u32, u32)> = Vec::new();
    for (name, &id) in map.iter().filter(|(n, _)| n.starts_with(names::IMAGE_PREFIX)) {
        let code = image_code_from_name(name)
            .ok_or_else(|| format!("image token name {name:?} does not spell a codebook index"))?;
        codes.push((code, id));
    }
    codes.sort_unstable();
    for (i, &(code, _)) in codes.iter().enumerate() {
        if code != i as u32 {
            return Err(format!("image codes are not dense: expected code {i}, found {code}"));
        }
    }
    Ok(codes.into_iter().map(|(_, id)| id).collect())
}

impl VocabLayout {
    /// Builds a layout from the special tokens and the token id of every codebook entry, in
    /// codebook order. Every other id below `vocab_size` is text.
    pub fn new(vocab_size: usize, special: SpecialTokens, image_tokens: Vec<u32>) -> Result<Self, String> {
        let mut modality = vec![Modality::Text; vocab_size];
        let mut image_code = vec![None; vocab_size];
        let mut missing_special = Vec::new();
        for (name, id) in special.all() {
            if id == SpecialTokens::ABSENT {
                missing_special.push(name);
                continue;
            }
            let slot = modality
                .get_mut(id as usize)
                .ok_or_else(|| format!("special token {name} has id {id}, outside the vocabulary of {vocab_size}"))?;
            if *slot == Modality::Special {
                return Err(format!("special token {name} shares id {id} with another special token"));
            }
            *slot = Modality::Special;
        }
        for (code, &id) in image_tokens.iter().enumerate() {
            let slot = modality.get_mut(id as usize).ok_or_else(|| {
                format!("image code {code} has token id {id}, outside the vocabulary of {vocab_size}")
            })?;
            if *slot != Modality::Text {
                return Err(format!("image code {code} has token id {id}, which is already taken"));
            }
            *slot = Modality::Image;
            image_code[id as usize] = Some(code as u32);
        }
        Ok(Self { special, image_tokens, modality, image_code, missing_special, image_problem: None })
    }

    /// Refuses `feature` when the vocabulary lacks any of the special tokens `names` (from
    /// [`names`]) it needs. An HF checkpoint's `vocabulary_map` may leave out tokens that only
    /// some features use (transformers' own test configs have no end-of-turn token).
    pub fn require_special(&self, needed: &[&str], feature: &str) -> Result<(), String> {
        let lacking: Vec<&str> = needed.iter().copied().filter(|n| self.missing_special.contains(n)).collect();
        if lacking.is_empty() {
            return Ok(());
        }
        Err(format!("{feature} needs the special token(s) {lacking:?}, which this checkpoint's vocabulary_map lacks"))
    }

    /// Names of the special tokens this vocabulary lacks.
    pub fn missing_special(&self) -> &[&'static str] {
        &self.missing_special
    }

    /// The layout this toolkit gives models it creates: the seven specials at 0..7, then the
    /// codebook, then `text_pieces` text tokens.
    pub fn contiguous(codebook_size: usize, text_pieces: usize) -> Self {
        let special = SpecialTokens {
            bos: 0,
            eos: 1,
            pad: 2,
            begin_image: 3,
            end_image: 4,
            end_of_turn: 5,
            image_placeholder: 6,
        };
        let image_tokens = (0..codebook_size as u32).map(|c| 7 + c).collect();
        Self::new(7 + codebook_size + text_pieces, special, image_tokens).expect("contiguous layout is valid")
    }

    /// Reads the layout from an HF Chameleon `vocabulary_map` (token name -> id). A special
    /// token the map lacks is recorded as missing (see [`VocabLayout::require_special`]); only
    /// the features that use it are refused.
    /// Image tokens are the names starting with `IMGIMG`; their codebook index is spelled in the
    /// name with the letters A-J for the digits 0-9.
    pub fn from_vocabulary_map(map: &BTreeMap<String, u32>, vocab_size: usize) -> Result<Self, String> {
        let get = |name: &str| map.get(name).copied().unwrap_or(SpecialTokens::ABSENT);
        let special = SpecialTokens {
            bos: get(names::BOS),
            eos: get(names::EOS),
            pad: get(names::PAD),
            begin_image: get(names::BEGIN_IMAGE),
            end_image: get(names::END_IMAGE),
            end_of_turn: get(names::END_OF_TURN),
            image_placeholder: get(names::IMAGE_PLACEHOLDER),
        };
        match image_codes(map) {
            Ok(image_tokens) => Self::new(vocab_size, special, image_tokens),
            // Text still works (transformers' own test configs name image tokens by token id,
            // not by code); the features that read or write images are refused.
            Err(problem) => {
                let mut layout = Self::new(vocab_size, special, Vec::new())?;
                layout.image_problem = Some(format!("vocabulary_map: {problem}"));
                Ok(layout)
            }
        }
    }

    /// Refuses `feature` when the vocabulary's image tokens do not spell a dense codebook.
    pub fn require_images(&self, feature: &str) -> Result<(), String> {
        match &self.image_problem {
            Some(problem) => Err(format!("{feature} needs image tokens, and this checkpoint's {problem}")),
            None => Ok(()),
        }
    }

    /// A `vocabulary_map` for this layout, as HF Chameleon reads it. Text pieces have no names
    /// here, so they get placeholders; a tokenizer supplies the real ones.
    pub fn to_vocabulary_map(&self) -> BTreeMap<String, u32> {
        let mut map = BTreeMap::new();
        for (id, m) in self.modality.iter().enumerate() {
            if *m == Modality::Text {
                map.insert(format!("<text{id:06}>"), id as u32);
            }
        }
        for (code, &id) in self.image_tokens.iter().enumerate() {
            map.insert(image_token_name(code as u32), id);
        }
        for (name, id) in self.special.all().into_iter().filter(|&(_, id)| id != SpecialTokens::ABSENT) {
            map.insert(name.to_string(), id);
        }
        map
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.modality.len()
    }

    /// The special tokens.
    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// Number of codebook entries.
    pub fn codebook_size(&self) -> usize {
        self.image_tokens.len()
    }

    /// Token ids of all image codes, in codebook order.
    pub fn image_tokens(&self) -> &[u32] {
        &self.image_tokens
    }

    /// Token id of a codebook index.
    pub fn image_token(&self, code: u32) -> Option<u32> {
        self.image_tokens.get(code as usize).copied()
    }

    /// Codebook index of a token id, if it is an image token.
    pub fn image_code(&self, token: u32) -> Option<u32> {
        self.image_code.get(token as usize).copied().flatten()
    }

    /// Modality of a token id; `None` outside the vocabulary.
    pub fn modality(&self, token: u32) -> Option<Modality> {
        self.modality.get(token as usize).copied()
    }

    /// Token ids of one modality, ascending.
    pub fn ids_of(&self, modality: Modality) -> Vec<u32> {
        (0..self.modality.len() as u32).filter(|&id| self.modality[id as usize] == modality).collect()
    }
}

/// `IMGIMG` + the decimal digits of `code` written with A-J + `Z`, as in Chameleon's vocabulary.
pub fn image_token_name(code: u32) -> String {
    let letters: String = code.to_string().bytes().map(|d| (b'A' + (d - b'0')) as char).collect();
    format!("{}{letters}Z", names::IMAGE_PREFIX)
}

fn image_code_from_name(name: &str) -> Option<u32> {
    let body = name.strip_prefix(names::IMAGE_PREFIX)?.strip_suffix('Z')?;
    if body.is_empty() || !body.bytes().all(|b| (b'A'..=b'J').contains(&b)) {
        return None;
    }
    body.bytes().map(|b| (b - b'A') as char).try_fold(0u32, |acc, d| acc.checked_mul(10)?.checked_add(d as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_round_trip() {
        assert_eq!(image_token_name(0), "IMGIMGAZ");
        assert_eq!(image_token_name(8191), "IMGIMGIBJBZ");
        for code in [0, 7, 10, 123, 8191] {
            assert_eq!(image_code_from_name(&image_token_name(code)), Some(code));
        }
        assert_eq!(image_code_from_name("IMGIMGZ"), None);
        assert_eq!(image_code_from_name("IMGIMGAKZ"), None);
    }

    #[test]
    fn layout_from_a_shuffled_map_never_assumes_an_offset() {
        // Image codes at ids 20, 11, 15 (not contiguous, not in code order).
        let mut map: BTreeMap<String, u32> = [
            ("<s>", 0),
            ("<pad>", 1),
            ("</s>", 2),
            ("<racm3:break>", 3),
            ("<eoss>", 4),
            ("<reserved08706>", 5),
            ("<image>", 6),
        ]
        .into_iter()
        .map(|(n, i)| (n.to_string(), i))
        .collect();
        map.insert(image_token_name(0), 20);
        map.insert(image_token_name(1), 11);
        map.insert(image_token_name(2), 15);
        let v = VocabLayout::from_vocabulary_map(&map, 24).unwrap();
        assert_eq!(v.image_tokens(), &[20, 11, 15]);
        assert_eq!(v.image_code(11), Some(1));
        assert_eq!(v.modality(15), Some(Modality::Image));
        assert_eq!(v.modality(5), Some(Modality::Special));
        assert_eq!(v.modality(7), Some(Modality::Text));
        assert_eq!(v.modality(24), None);
        let back = VocabLayout::from_vocabulary_map(&v.to_vocabulary_map(), 24).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_missing_special_token_refuses_only_the_features_that_need_it() {
        let mut map = VocabLayout::contiguous(3, 2).to_vocabulary_map();
        map.remove(names::END_OF_TURN);
        let v = VocabLayout::from_vocabulary_map(&map, 12).unwrap();
        assert_eq!(v.missing_special(), &[names::END_OF_TURN]);
        assert_eq!(v.special().end_of_turn, SpecialTokens::ABSENT);
        // Its old id is plain text now, and matches no special token.
        assert_eq!(v.modality(5), Some(Modality::Text));
        assert!(v.require_special(&[names::BOS, names::BEGIN_IMAGE], "generation").is_ok());
        let err = v.require_special(&[names::BOS, names::END_OF_TURN], "chat").unwrap_err();
        assert!(err.contains("chat") && err.contains(names::END_OF_TURN), "{err}");
        // Export writes back what there is, and reads back the same.
        assert!(!v.to_vocabulary_map().contains_key(names::END_OF_TURN));
        assert_eq!(VocabLayout::from_vocabulary_map(&v.to_vocabulary_map(), 12).unwrap(), v);
    }

    #[test]
    fn bad_maps_are_refused() {
        // Image names that do not spell codes 0..n leave text usable and refuse images.
        let mut map = VocabLayout::contiguous(3, 2).to_vocabulary_map();
        map.remove(&image_token_name(1));
        let v = VocabLayout::from_vocabulary_map(&map, 12).unwrap();
        assert_eq!(v.codebook_size(), 0);
        assert!(v.require_images("generation").unwrap_err().contains("not dense"));
        assert!(VocabLayout::contiguous(3, 2).require_images("generation").is_ok());
        let map = VocabLayout::contiguous(3, 2).to_vocabulary_map();
        assert!(VocabLayout::from_vocabulary_map(&map, 8).unwrap_err().contains("outside"));
    }
}
