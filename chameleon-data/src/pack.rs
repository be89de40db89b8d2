//! Packing documents into fixed-length rows.
//!
//! A row holds `seq_len + 1` tokens: the model reads the first `seq_len` and predicts the last
//! `seq_len`. Each document is framed as `bos … eos`, so EOS separates packed documents.
//! Pre-training documents are cut across rows where they do not fit, but never inside an image:
//! a `begin-image … end-image` block always stays whole in one row (the rest of the row is padded
//! when the next image does not fit). SFT documents (prompt/answer pairs) are never cut at all.
//!
//! Every token carries a loss flag: 0 for padding and, in SFT documents, for prompt tokens.

use chameleon_model::SpecialTokens;
use serde::{Deserialize, Serialize};

use crate::document::DocKind;

/// How the packer frames and cuts documents.
#[derive(Debug, Clone, Copy)]
pub struct PackSpec {
    /// Tokens the model reads per row; a row holds one more.
    pub seq_len: usize,
    /// The special token ids.
    pub special: SpecialTokens,
}

/// The longest `seq_len` this toolkit packs: 2^20 tokens per row (Chameleon trained at 4,096).
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// Checks a `seq_len` against the packer's range, `8..=MAX_SEQ_LEN`.
pub fn check_seq_len(seq_len: usize) -> Result<(), String> {
    if !(8..=MAX_SEQ_LEN).contains(&seq_len) {
        return Err(format!("`seq_len` = {seq_len} is out of range: it must lie in 8..={MAX_SEQ_LEN}"));
    }
    Ok(())
}

impl PackSpec {
    /// Tokens per row.
    pub fn row_len(&self) -> usize {
        self.seq_len + 1
    }
}

/// Loss flags of one framed document (`bos … eos`). Pre-training documents train on every token
/// but the leading bos (nothing predicts it in a fresh row); SFT documents train only on their
/// answers. In an SFT document, `end-of-turn` closes each turn: the prompt turn, then the answer
/// turn, alternating, and the tokens of an answer turn (its closing `end-of-turn` or the final
/// eos included) carry loss.
pub fn loss_flags(kind: DocKind, framed: &[u32], special: &SpecialTokens) -> Vec<u8> {
    let mut flags = vec![1u8; framed.len()];
    if let Some(first) = flags.first_mut() {
        *first = 0;
    }
    if kind == DocKind::Sft {
        let mut answer = false;
        for (flag, &token) in flags.iter_mut().zip(framed).skip(1) {
            *flag = answer as u8;
            if token == special.end_of_turn {
                answer = !answer;
            }
        }
    }
    flags
}

/// For each position `p` of `tokens`, whether a row may end just before `p` (`cuts[p]`): false
/// inside an image block, i.e. after a `begin-image` and up to its `end-image`.
pub fn cut_points(tokens: &[u32], special: &SpecialTokens) -> Vec<bool> {
    let mut cuts = Vec::with_capacity(tokens.len() + 1);
    let mut inside = false;
    for &t in tokens {
        cuts.push(!inside);
        if t == special.begin_image {
            inside = true;
        } else if t == special.end_image {
            inside = false;
        }
    }
    cuts.push(true);
    cuts
}

/// The longest image block (`begin-image` to `end-image`, both included) in `tokens`.
pub fn longest_image_block(tokens: &[u32], special: &SpecialTokens) -> usize {
    let (mut longest, mut start) = (0, None);
    for (i, &t) in tokens.iter().enumerate() {
        if t == special.begin_image {
            start = Some(i);
        } else if t == special.end_image
            && let Some(s) = start.take()
        {
            longest = longest.max(i - s + 1);
        }
    }
    longest
}

/// A document framed `bos … eos`, with the loss flag of each token and where it may be cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    /// What kind of document it is (SFT documents are never cut).
    pub kind: DocKind,
    /// `bos`, the document's tokens, `eos`.
    pub tokens: Vec<u32>,
    /// [`loss_flags`] of `tokens`.
    pub loss: Vec<u8>,
    /// [`cut_points`] of `tokens`.
    pub cuts: Vec<bool>,
}

impl Framed {
    /// Frames a document's tokens.
    pub fn new(kind: DocKind, doc: &[u32], special: &SpecialTokens) -> Self {
        let mut tokens = Vec::with_capacity(doc.len() + 2);
        tokens.push(special.bos);
        tokens.extend_from_slice(doc);
        tokens.push(special.eos);
        let loss = loss_flags(kind, &tokens, special);
        let cuts = cut_points(&tokens, special);
        Self { kind, tokens, loss, cuts }
    }
}

/// Rows being filled from a stream of documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackCursor {
    /// Tokens of the current document already placed in earlier rows.
    pub offset: usize,
}

/// One packed row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// `seq_len + 1` token ids.
    pub tokens: Vec<u32>,
    /// Loss flag per token (1: predict this token).
    pub loss: Vec<u8>,
}

/// What happened to the current document while filling a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// It was placed to its end; move to the next document.
    Finished,
    /// Part of it was placed; the row is full and the rest waits for the next row.
    RowFull,
    /// It cannot ever be placed (an SFT pair or an image longer than a row); skip it.
    TooLong,
}

impl Row {
    /// An empty row with room for `spec.row_len()` tokens.
    pub fn with_capacity(spec: &PackSpec) -> Self {
        Self { tokens: Vec::with_capacity(spec.row_len()), loss: Vec::with_capacity(spec.row_len()) }
    }

    /// Free slots.
    pub fn space(&self, spec: &PackSpec) -> usize {
        spec.row_len() - self.tokens.len()
    }

    /// Places as much of a framed document as the rules allow, from `cursor.offset` on.
    pub fn place(&mut self, spec: &PackSpec, doc: &Framed, cursor: &mut PackCursor) -> Placed {
        let (kind, framed, flags, cuts) = (doc.kind, &doc.tokens, &doc.loss, &doc.cuts);
        let space = self.space(spec);
        let rest = framed.len() - cursor.offset;
        if rest <= space {
            self.tokens.extend_from_slice(&framed[cursor.offset..]);
            self.loss.extend_from_slice(&flags[cursor.offset..]);
            cursor.offset = 0;
            return Placed::Finished;
        }
        if kind == DocKind::Sft {
            if framed.len() > spec.row_len() {
                return Placed::TooLong;
            }
            self.pad(spec);
            return Placed::RowFull;
        }
        // The furthest allowed cut that fits.
        let start = cursor.offset;
        let cut = (start + 1..=start + space).rev().find(|&p| cuts[p]).unwrap_or(start);
        if cut == start && self.tokens.is_empty() {
            // Not even an empty row holds the block that starts here.
            return Placed::TooLong;
        }
        self.tokens.extend_from_slice(&framed[start..cut]);
        self.loss.extend_from_slice(&flags[start..cut]);
        cursor.offset = cut;
        self.pad(spec);
        Placed::RowFull
    }

    /// Fills the rest of the row with padding that carries no loss.
    pub fn pad(&mut self, spec: &PackSpec) {
        let space = self.space(spec);
        self.tokens.extend(std::iter::repeat_n(spec.special.pad, space));
        self.loss.extend(std::iter::repeat_n(0, space));
    }

    /// Whether the row is full.
    pub fn is_full(&self, spec: &PackSpec) -> bool {
        self.tokens.len() == spec.row_len()
    }
}

/// Packs documents one after another into rows, as one stream does, handing each full row to
/// `emit` (the last one padded); returns how many documents never fit a row.
pub fn pack_in_order(spec: &PackSpec, docs: impl IntoIterator<Item = Framed>, mut emit: impl FnMut(Row)) -> u64 {
    let mut row = Row::with_capacity(spec);
    let mut skipped = 0;
    for doc in docs {
        let mut cursor = PackCursor::default();
        loop {
            let placed = row.place(spec, &doc, &mut cursor);
            if row.is_full(spec) {
                emit(std::mem::replace(&mut row, Row::with_capacity(spec)));
            }
            match placed {
                Placed::Finished => break,
                Placed::RowFull => {}
                Placed::TooLong => {
                    skipped += 1;
                    break;
                }
            }
        }
    }
    if !row.tokens.is_empty() {
        row.pad(spec);
        emit(row);
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use chameleon_model::VocabLayout;

    fn special() -> SpecialTokens {
        VocabLayout::contiguous(8, 100).special()
    }

    /// Packs documents one after another into rows, as a stream does.
    fn pack_all(spec: &PackSpec, docs: &[(DocKind, Vec<u32>)]) -> (Vec<Row>, u64) {
        let mut rows = Vec::new();
        let framed = docs.iter().map(|(k, d)| Framed::new(*k, d, &spec.special));
        let skipped = pack_in_order(spec, framed, |r| rows.push(r));
        (rows, skipped)
    }

    fn image(s: &SpecialTokens, codes: usize) -> Vec<u32> {
        let mut v = vec![s.begin_image];
        v.extend((0..codes as u32).map(|c| 7 + c % 8));
        v.push(s.end_image);
        v
    }

    #[test]
    fn documents_are_framed_and_separated_by_eos() {
        let spec = PackSpec { seq_len: 10, special: special() };
        let s = spec.special;
        let (rows, _) = pack_all(&spec, &[(DocKind::Text, vec![20, 21, 22]), (DocKind::Text, vec![30, 31, 32, 33])]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].tokens, vec![s.bos, 20, 21, 22, s.eos, s.bos, 30, 31, 32, 33, s.eos]);
        assert_eq!(rows[0].loss, vec![0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1]);
        // One more token and the second document's eos moves to the next row.
        let (rows, _) =
            pack_all(&spec, &[(DocKind::Text, vec![20, 21, 22, 23]), (DocKind::Text, vec![30, 31, 32, 33])]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].tokens[0], s.eos);
    }

    #[test]
    fn long_text_is_cut_but_image_blocks_stay_whole() {
        let spec = PackSpec { seq_len: 11, special: special() };
        let s = spec.special;
        // Many documents of text with 4-code images (blocks of 6) at awkward places.
        let mut docs = Vec::new();
        for k in 0..40u32 {
            let mut d: Vec<u32> = (0..(k % 5)).map(|i| 50 + i).collect();
            d.extend(image(&s, 4));
            d.extend((0..(k % 3)).map(|i| 60 + i));
            if k % 4 == 0 {
                d.extend(image(&s, 4));
            }
            docs.push((DocKind::Interleaved, d));
        }
        let (rows, skipped) = pack_all(&spec, &docs);
        assert_eq!(skipped, 0);
        let mut images = 0;
        for row in &rows {
            assert_eq!(row.tokens.len(), 12);
            // Every begin-image in a row is followed by exactly 4 codes and its end-image.
            let mut i = 0;
            while i < row.tokens.len() {
                if row.tokens[i] == s.begin_image {
                    assert!(i + 5 < row.tokens.len(), "image cut at the row end: {:?}", row.tokens);
                    assert!(row.tokens[i + 1..i + 5].iter().all(|&t| (7..15).contains(&t)));
                    assert_eq!(row.tokens[i + 5], s.end_image);
                    images += 1;
                    i += 6;
                } else {
                    // No stray codes or end-image outside a block (the row never starts mid-image).
                    assert!(!(7..15).contains(&row.tokens[i]) && row.tokens[i] != s.end_image, "{:?}", row.tokens);
                    i += 1;
                }
            }
        }
        assert_eq!(images, 40 + 10);
    }

    #[test]
    fn an_image_longer_than_a_row_is_refused_not_split() {
        let spec = PackSpec { seq_len: 5, special: special() };
        let s = spec.special;
        let (rows, skipped) = pack_all(&spec, &[(DocKind::Caption, image(&s, 8))]);
        assert_eq!(skipped, 1);
        assert!(rows.iter().all(|r| !r.tokens.contains(&s.begin_image)));
        assert_eq!(longest_image_block(&image(&s, 8), &s), 10);
    }

    #[test]
    fn sft_loss_covers_answers_only_and_pairs_are_never_cut() {
        let spec = PackSpec { seq_len: 15, special: special() };
        let s = spec.special;
        // prompt 20 21 <eot> answer 30 31 <eos>
        let pair = vec![20, 21, s.end_of_turn, 30, 31];
        assert_eq!(Framed::new(DocKind::Sft, &pair, &s).loss, vec![0, 0, 0, 0, 1, 1, 1]);
        // Two turns: prompt, answer, prompt, answer.
        let two = vec![20, s.end_of_turn, 30, s.end_of_turn, 21, s.end_of_turn, 31];
        assert_eq!(Framed::new(DocKind::Sft, &two, &s).loss, vec![0, 0, 0, 1, 1, 0, 0, 1, 1]);
        // Pairs of 7 framed tokens in rows of 16: two fit, the third starts a new row.
        let docs: Vec<(DocKind, Vec<u32>)> = (0..5).map(|_| (DocKind::Sft, pair.clone())).collect();
        let (rows, skipped) = pack_all(&spec, &docs);
        assert_eq!(skipped, 0);
        assert_eq!(rows.len(), 3);
        for row in &rows[..2] {
            assert_eq!(row.tokens.iter().filter(|&&t| t == s.bos).count(), 2);
            assert_eq!(&row.tokens[14..], &[s.pad, s.pad]);
            assert_eq!(&row.loss[14..], &[0, 0]);
            // Each pair begins at a bos and ends at an eos inside the row.
            assert_eq!(row.tokens[0], s.bos);
            assert_eq!(row.tokens[6], s.eos);
        }
        // A pair longer than a row is skipped, never cut.
        let (_, skipped) = pack_all(&spec, &[(DocKind::Sft, (0..20).map(|i| 40 + i).collect())]);
        assert_eq!(skipped, 1);
    }
}
