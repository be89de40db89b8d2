//! Stage-weighted mixtures of sources, sampled deterministically into packed batches.
//!
//! Each source is a *stream* of packed rows (see [`crate::pack`]): its documents in a shuffled
//! order that a seed fixes per epoch. For every row, the mixture picks a stream with the weights
//! of the current *stage* (stages start at fractions of training; the paper's stage 2 starts at
//! 80%) and takes that stream's next row. A source may be split into one stream per modality
//! class, each weighted within the source (the SFT recipe balances modalities this way).
//!
//! The whole sampler state (RNG, every stream's epoch, position and cut offset, the realised
//! counts) is a small serde value: a resumed run that restores it sees exactly the batches it
//! would have seen.

use std::collections::BTreeMap;
use std::sync::Arc;

use chameleon_model::{Modality, SpecialTokens, VocabLayout};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::document::DocKind;
use crate::pack::{Framed, PackCursor, PackSpec, Placed, Row};

/// Random access to tokenized documents (a [`crate::shard::ShardSet`], or memory in tests).
pub trait DocumentStore: Send + Sync {
    /// Number of documents.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Kind of document `i`.
    fn kind(&self, i: usize) -> DocKind;
    /// Appends the tokens of document `i` to `out`.
    fn tokens_into(&self, i: usize, out: &mut Vec<u32>);
}

impl DocumentStore for Vec<(DocKind, Vec<u32>)> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn kind(&self, i: usize) -> DocKind {
        self[i].0
    }
    fn tokens_into(&self, i: usize, out: &mut Vec<u32>) {
        out.extend_from_slice(&self[i].1);
    }
}

/// What an SFT pair (or any document) trains: decides its modality class for balancing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModalityClass {
    /// No image anywhere.
    Text,
    /// Images only before the (first) answer: text answers about images.
    ImageUnderstanding,
    /// An image in the answer and no text around it there.
    ImageGeneration,
    /// Text and images together in the answer.
    Interleaved,
}

impl ModalityClass {
    /// The class of a document's tokens. For non-SFT documents "the answer" is the whole
    /// document.
    pub fn of(kind: DocKind, tokens: &[u32], layout: &VocabLayout) -> Self {
        let s = layout.special();
        let answer_start = match kind {
            DocKind::Sft => tokens.iter().position(|&t| t == s.end_of_turn).map_or(tokens.len(), |p| p + 1),
            _ => 0,
        };
        let has_image = |ts: &[u32]| ts.contains(&s.begin_image);
        let (prompt, answer) = tokens.split_at(answer_start);
        let answer_text = answer.iter().any(|&t| layout.modality(t) == Some(Modality::Text));
        match (has_image(prompt), has_image(answer), answer_text) {
            (_, true, true) => Self::Interleaved,
            (_, true, false) => Self::ImageGeneration,
            (true, false, _) => Self::ImageUnderstanding,
            (false, false, _) => Self::Text,
        }
    }

    /// Its name in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::ImageUnderstanding => "image_understanding",
            Self::ImageGeneration => "image_generation",
            Self::Interleaved => "interleaved",
        }
    }
}

/// A stage: from `start` (a fraction of training in [0, 1)) on, sources are drawn with these
/// weights (relative; a source left out has weight 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Fraction of training at which this stage begins.
    pub start: f64,
    /// Source name -> weight.
    pub weights: BTreeMap<String, f64>,
}

/// One stream: a source, or one modality class of a source.
pub struct Stream {
    /// `source` or `source/class`.
    pub name: String,
    /// The source it belongs to (its stage weight).
    pub source: String,
    /// Share of the source's weight.
    pub share: f64,
    store: Arc<dyn DocumentStore>,
    docs: Vec<u32>,
}

impl Stream {
    /// A stream over documents `docs` of `store`.
    pub fn new(name: &str, source: &str, share: f64, store: Arc<dyn DocumentStore>, docs: Vec<u32>) -> Self {
        Self { name: name.into(), source: source.into(), share, store, docs }
    }

    /// Every document of a store as one stream.
    pub fn whole(source: &str, store: Arc<dyn DocumentStore>) -> Self {
        let docs = (0..store.len() as u32).collect();
        Self::new(source, source, 1.0, store, docs)
    }

    /// One stream per modality class present in the store, weighted by `weights` (classes
    /// missing from `weights` get 0 and are dropped).
    pub fn by_modality(
        source: &str,
        store: Arc<dyn DocumentStore>,
        layout: &VocabLayout,
        weights: &BTreeMap<ModalityClass, f64>,
    ) -> Vec<Self> {
        let mut classes: BTreeMap<ModalityClass, Vec<u32>> = BTreeMap::new();
        let mut buf = Vec::new();
        for i in 0..store.len() {
            buf.clear();
            store.tokens_into(i, &mut buf);
            classes.entry(ModalityClass::of(store.kind(i), &buf, layout)).or_default().push(i as u32);
        }
        let total: f64 = classes.keys().map(|c| weights.get(c).copied().unwrap_or(0.0)).sum();
        if total <= 0.0 {
            // Nothing of a weighted class: one empty stream keeps the source known to the stages.
            return vec![Self::new(source, source, 1.0, store, Vec::new())];
        }
        classes
            .into_iter()
            .filter(|(c, _)| weights.get(c).copied().unwrap_or(0.0) > 0.0)
            .map(|(c, docs)| {
                let share = weights[&c] / total;
                Self::new(&format!("{source}/{}", c.name()), source, share, store.clone(), docs)
            })
            .collect()
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether it has no documents.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }
}

/// Where one stream stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// Passes completed over the stream's documents.
    pub epoch: u64,
    /// Position in this epoch's order.
    pub position: usize,
    /// Tokens of the current document already placed.
    pub cursor: PackCursor,
    /// Documents skipped because they never fit a row.
    pub skipped: u64,
}

/// The sampler's whole state; restore it to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureState {
    /// Seed of every random choice.
    pub seed: u64,
    /// Tokens per row (checked on restore).
    pub row_len: usize,
    /// Documents per stream (checked on restore: the same shards).
    pub stream_docs: Vec<usize>,
    /// Rows produced so far.
    pub rows: u64,
    /// Stream names, in order (checked on restore).
    pub streams: Vec<String>,
    /// Per stream.
    pub stream_states: Vec<StreamState>,
    /// Rows drawn per stage, per stream.
    pub realised: Vec<Vec<u64>>,
}

/// A batch of packed rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Rows.
    pub batch_size: usize,
    /// Tokens per row (`seq_len + 1`).
    pub row_len: usize,
    /// `[batch_size * row_len]` token ids, row-major.
    pub tokens: Vec<u32>,
    /// Loss flags, same shape. The trainer predicts `tokens[t + 1]` from `tokens[..=t]`, so the
    /// flags of targets are `loss[1..]` of each row (a row's first token is never a target).
    pub loss: Vec<u8>,
    /// The source of each row, an index into [`Mixture::sources`] (a row packs documents of one
    /// stream, so of one source).
    pub sources: Vec<usize>,
}

/// A mixture that cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MixtureError(pub String);

/// Realised proportions of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageProportions {
    /// When it starts.
    pub start: f64,
    /// Stream name -> (rows drawn, share drawn, share intended).
    pub streams: BTreeMap<String, (u64, f64, f64)>,
}

/// Deterministic, resumable, stage-weighted sampling of packed rows.
pub struct Mixture {
    spec: PackSpec,
    streams: Vec<Stream>,
    stages: Vec<Stage>,
    /// Per stage, per stream: the probability of drawing it.
    probs: Vec<Vec<f64>>,
    state: MixtureState,
    /// Source names in first-seen stream order, and each stream's index into them.
    sources: Vec<String>,
    source_of_stream: Vec<usize>,
    /// The current epoch's order and the framed current document, per stream.
    orders: Vec<Option<(u64, Vec<u32>)>>,
    current: Vec<Option<CurrentDoc>>,
}

struct CurrentDoc {
    doc: u32,
    framed: Framed,
}

/// Checks stages against the known source names.
pub fn validate_stages(stages: &[Stage], sources: &[&str]) -> Result<(), MixtureError> {
    let err = |m: String| Err(MixtureError(m));
    if stages.is_empty() {
        return err("no stages: give at least one [[data.stages]] with start = 0".into());
    }
    if stages[0].start != 0.0 {
        return err(format!("the first stage must start at 0, not {}", stages[0].start));
    }
    for (i, pair) in stages.windows(2).enumerate() {
        if !(pair[1].start > pair[0].start && pair[1].start < 1.0) {
            return err(format!("stage {} starts at {}: starts must increase and stay below 1", i + 1, pair[1].start));
        }
    }
    for (i, stage) in stages.iter().enumerate() {
        for (name, &w) in &stage.weights {
            if !sources.contains(&name.as_str()) {
                return err(format!("stage {i} weights unknown source `{name}`; sources: {}", sources.join(", ")));
            }
            if !(w.is_finite() && w >= 0.0) {
                return err(format!("stage {i}: weight of `{name}` = {w} must be finite and non-negative"));
            }
        }
        if stage.weights.values().sum::<f64>() <= 0.0 {
            return err(format!("stage {i} (start {}) gives every source weight 0", stage.start));
        }
    }
    for source in sources {
        if stages.iter().all(|s| s.weights.get(*source).copied().unwrap_or(0.0) == 0.0) {
            return err(format!("source `{source}` has weight 0 in every stage; drop it or weight it"));
        }
    }
    Ok(())
}

impl Mixture {
    /// A mixture of `streams` with `stages`, packing rows of `seq_len + 1` tokens.
    pub fn new(
        seq_len: usize,
        special: SpecialTokens,
        streams: Vec<Stream>,
        stages: Vec<Stage>,
        seed: u64,
    ) -> Result<Self, MixtureError> {
        let mut names: Vec<String> = Vec::new();
        let mut source_of_stream = Vec::with_capacity(streams.len());
        for s in &streams {
            let i = names.iter().position(|n| *n == s.source).unwrap_or_else(|| {
                names.push(s.source.clone());
                names.len() - 1
            });
            source_of_stream.push(i);
        }
        validate_stages(&stages, &names.iter().map(String::as_str).collect::<Vec<_>>())?;
        let mut probs = Vec::new();
        for (i, stage) in stages.iter().enumerate() {
            let raw: Vec<f64> = streams
                .iter()
                .map(
                    |s| if s.is_empty() { 0.0 } else { stage.weights.get(&s.source).copied().unwrap_or(0.0) * s.share },
                )
                .collect();
            let total: f64 = raw.iter().sum();
            if total <= 0.0 {
                return Err(MixtureError(format!("stage {i} weights only sources without documents")));
            }
            probs.push(raw.iter().map(|w| w / total).collect());
        }
        let n = streams.len();
        let state = MixtureState {
            seed,
            row_len: seq_len + 1,
            stream_docs: streams.iter().map(Stream::len).collect(),
            rows: 0,
            streams: streams.iter().map(|s| s.name.clone()).collect(),
            stream_states: vec![StreamState::default(); n],
            realised: vec![vec![0; n]; stages.len()],
        };
        Ok(Self {
            spec: PackSpec { seq_len, special },
            streams,
            stages,
            probs,
            state,
            sources: names,
            source_of_stream,
            orders: (0..n).map(|_| None).collect(),
            current: (0..n).map(|_| None).collect(),
        })
    }

    /// The state to save with a checkpoint.
    pub fn state(&self) -> &MixtureState {
        &self.state
    }

    /// Continues from a saved state (of a mixture with the same streams).
    pub fn restore(&mut self, state: MixtureState) -> Result<(), MixtureError> {
        let n = self.streams.len();
        let same_shape = state.streams == self.state.streams
            && state.stream_docs == self.state.stream_docs
            && state.row_len == self.state.row_len
            && state.stream_states.len() == n
            && state.realised.len() == self.stages.len()
            && state.realised.iter().all(|r| r.len() == n)
            && state.stream_states.iter().zip(&state.stream_docs).all(|(st, &docs)| st.position < docs.max(1));
        if !same_shape {
            return Err(MixtureError(format!(
                "the saved sampler state is for streams {:?} of {:?} documents, rows of {} tokens and {} stages; \
                 this mixture has streams {:?} of {:?} documents, rows of {} and {} stages",
                state.streams,
                state.stream_docs,
                state.row_len,
                state.realised.len(),
                self.state.streams,
                self.state.stream_docs,
                self.state.row_len,
                self.stages.len()
            )));
        }
        self.state = state;
        self.orders.iter_mut().for_each(|o| *o = None);
        self.current.iter_mut().for_each(|c| *c = None);
        Ok(())
    }

    fn stage_at(&self, progress: f64) -> usize {
        self.stages.iter().rposition(|s| s.start <= progress).unwrap_or(0)
    }

    /// A per-row generator: the row index and the seed fix every draw, so restoring the state
    /// restores the draws without replaying them.
    fn row_rng(&self, salt: u64, a: u64) -> StdRng {
        let mut x = self.state.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ a.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
        StdRng::seed_from_u64(x)
    }

    /// The next packed row; `progress` is the fraction of training done, which picks the stage.
    pub fn next_row(&mut self, progress: f64) -> Row {
        self.draw(progress).1
    }

    /// The sources, in the order of [`Batch::sources`]' indices.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The next row and the index of its source.
    fn draw(&mut self, progress: f64) -> (usize, Row) {
        let stage = self.stage_at(progress);
        let u: f64 = rand::Rng::random(&mut self.row_rng(1, self.state.rows));
        let probs = &self.probs[stage];
        let mut acc = 0.0;
        let mut pick = probs.iter().rposition(|&p| p > 0.0).unwrap_or(0);
        for (i, &p) in probs.iter().enumerate() {
            acc += p;
            if u < acc && p > 0.0 {
                pick = i;
                break;
            }
        }
        self.state.rows += 1;
        self.state.realised[stage][pick] += 1;
        (self.source_of_stream[pick], self.fill_row(pick))
    }

    /// `batch_size` rows.
    pub fn next_batch(&mut self, progress: f64, batch_size: usize) -> Batch {
        let row_len = self.spec.row_len();
        let mut batch = Batch {
            batch_size,
            row_len,
            tokens: Vec::with_capacity(batch_size * row_len),
            loss: Vec::with_capacity(batch_size * row_len),
            sources: Vec::with_capacity(batch_size),
        };
        for _ in 0..batch_size {
            let (source, row) = self.draw(progress);
            batch.tokens.extend_from_slice(&row.tokens);
            batch.loss.extend_from_slice(&row.loss);
            batch.sources.push(source);
        }
        batch
    }

    fn order(&mut self, s: usize) -> &[u32] {
        let epoch = self.state.stream_states[s].epoch;
        if self.orders[s].as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order = self.streams[s].docs.clone();
            order.shuffle(&mut self.row_rng(2 + s as u64, epoch));
            self.orders[s] = Some((epoch, order));
        }
        self.orders[s].as_ref().map(|(_, o)| o.as_slice()).unwrap_or(&[])
    }

    fn load_current(&mut self, s: usize) {
        let position = self.state.stream_states[s].position;
        let doc = self.order(s)[position];
        if self.current[s].as_ref().is_some_and(|c| c.doc == doc) {
            return;
        }
        let stream = &self.streams[s];
        let mut tokens = Vec::new();
        stream.store.tokens_into(doc as usize, &mut tokens);
        let framed = Framed::new(stream.store.kind(doc as usize), &tokens, &self.spec.special);
        self.current[s] = Some(CurrentDoc { doc, framed });
    }

    fn advance(&mut self, s: usize) {
        let st = &mut self.state.stream_states[s];
        st.position += 1;
        st.cursor = PackCursor::default();
        if st.position >= self.streams[s].docs.len() {
            st.position = 0;
            st.epoch += 1;
        }
    }

    fn fill_row(&mut self, s: usize) -> Row {
        let spec = self.spec;
        let mut row = Row::with_capacity(&spec);
        // A stream whose every document is too long would loop forever: give up after a full
        // pass of skips and pad.
        let mut skips_in_a_row = 0usize;
        while !row.is_full(&spec) {
            self.load_current(s);
            let Some(cur) = self.current[s].as_ref() else { break };
            let cursor = &mut self.state.stream_states[s].cursor;
            match row.place(&spec, &cur.framed, cursor) {
                Placed::Finished => {
                    skips_in_a_row = 0;
                    self.advance(s);
                }
                Placed::RowFull => skips_in_a_row = 0,
                Placed::TooLong => {
                    self.state.stream_states[s].skipped += 1;
                    self.advance(s);
                    skips_in_a_row += 1;
                    if skips_in_a_row > self.streams[s].len() {
                        row.pad(&spec);
                    }
                }
            }
        }
        row
    }

    /// Rows drawn per stream in each stage, as shares next to the intended ones.
    pub fn proportions(&self) -> Vec<StageProportions> {
        self.stages
            .iter()
            .enumerate()
            .map(|(i, stage)| {
                let counts = &self.state.realised[i];
                let total: u64 = counts.iter().sum();
                let streams = self
                    .streams
                    .iter()
                    .enumerate()
                    .map(|(j, s)| {
                        let share = if total == 0 { 0.0 } else { counts[j] as f64 / total as f64 };
                        (s.name.clone(), (counts[j], share, self.probs[i][j]))
                    })
                    .collect();
                StageProportions { start: stage.start, streams }
            })
            .collect()
    }

    /// Tokens per row.
    pub fn row_len(&self) -> usize {
        self.spec.row_len()
    }

    /// Per source (in [`Mixture::sources`] order), the documents drawn so far, wholly or in part,
    /// as indices into the source's store, in the order they were drawn (each once; a document
    /// skipped as too long for a row counts as drawn).
    pub fn drawn(&mut self) -> Vec<Vec<u32>> {
        let mut out = vec![Vec::new(); self.sources.len()];
        for s in 0..self.streams.len() {
            let st = self.state.stream_states[s].clone();
            let docs = if st.epoch > 0 {
                self.order(s).to_vec()
            } else {
                let started = (st.position + usize::from(st.cursor.offset > 0)).min(self.streams[s].len());
                self.order(s)[..started].to_vec()
            };
            out[self.source_of_stream[s]].extend(docs);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> VocabLayout {
        VocabLayout::contiguous(8, 200)
    }

    fn store(kind: DocKind, n: usize, base: u32, len: usize) -> Arc<dyn DocumentStore> {
        let docs: Vec<(DocKind, Vec<u32>)> =
            (0..n).map(|i| (kind, (0..len as u32).map(|t| base + (i as u32 * 7 + t) % 50).collect())).collect();
        Arc::new(docs)
    }

    fn stages(w: &[(&str, f64)], w2: &[(&str, f64)]) -> Vec<Stage> {
        let map = |w: &[(&str, f64)]| w.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        vec![Stage { start: 0.0, weights: map(w) }, Stage { start: 0.8, weights: map(w2) }]
    }

    fn mixture(seed: u64) -> Mixture {
        let streams = vec![
            Stream::whole("text", store(DocKind::Text, 30, 100, 13)),
            Stream::whole("caption", store(DocKind::Caption, 20, 150, 5)),
        ];
        Mixture::new(
            15,
            layout().special(),
            streams,
            stages(&[("text", 3.0), ("caption", 1.0)], &[("text", 1.5), ("caption", 4.0)]),
            seed,
        )
        .unwrap()
    }

    #[test]
    fn sampling_is_deterministic_for_a_seed() {
        let (mut a, mut b, mut c) = (mixture(7), mixture(7), mixture(8));
        let ra: Vec<Batch> = (0..20).map(|i| a.next_batch(i as f64 / 20.0, 4)).collect();
        let rb: Vec<Batch> = (0..20).map(|i| b.next_batch(i as f64 / 20.0, 4)).collect();
        let rc: Vec<Batch> = (0..20).map(|i| c.next_batch(i as f64 / 20.0, 4)).collect();
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
        assert!(ra.iter().all(|b| b.tokens.len() == 4 * 16 && b.loss.len() == 4 * 16));
    }

    #[test]
    fn a_restored_state_continues_exactly() {
        let mut full = mixture(3);
        let mut first = mixture(3);
        for i in 0..37 {
            full.next_batch(i as f64 / 100.0, 3);
            first.next_batch(i as f64 / 100.0, 3);
        }
        // Save through JSON, as a checkpoint does, into a fresh mixture.
        let saved = serde_json::to_string(first.state()).unwrap();
        let mut resumed = mixture(3);
        resumed.restore(serde_json::from_str(&saved).unwrap()).unwrap();
        for i in 37..100 {
            let p = i as f64 / 100.0;
            assert_eq!(full.next_batch(p, 3), resumed.next_batch(p, 3), "batch {i}");
        }
        assert_eq!(full.state(), resumed.state());
    }

    #[test]
    fn a_state_from_other_shards_or_rows_is_refused() {
        let mut m = mixture(3);
        for _ in 0..10 {
            m.next_row(0.0);
        }
        let saved = m.state().clone();
        // Other sequence length.
        let streams = vec![
            Stream::whole("text", store(DocKind::Text, 30, 100, 13)),
            Stream::whole("caption", store(DocKind::Caption, 20, 150, 5)),
        ];
        let st = stages(&[("text", 3.0), ("caption", 1.0)], &[("text", 1.5), ("caption", 4.0)]);
        let mut longer = Mixture::new(31, layout().special(), streams, st.clone(), 3).unwrap();
        assert!(longer.restore(saved.clone()).unwrap_err().0.contains("rows of 16"));
        // Fewer documents (re-prepared shards).
        let streams = vec![
            Stream::whole("text", store(DocKind::Text, 12, 100, 13)),
            Stream::whole("caption", store(DocKind::Caption, 20, 150, 5)),
        ];
        let mut fewer = Mixture::new(15, layout().special(), streams, st, 3).unwrap();
        assert!(fewer.restore(saved).is_err());
    }

    #[test]
    fn stage_weights_are_honoured_and_reported() {
        let mut m = mixture(11);
        for i in 0..4000 {
            m.next_row(if i < 2000 { 0.1 } else { 0.9 });
        }
        let p = m.proportions();
        let (rows, share, intended) = p[0].streams["text"];
        assert_eq!(rows + p[0].streams["caption"].0, 2000);
        assert!((intended - 0.75).abs() < 1e-12);
        assert!((share - 0.75).abs() < 0.03, "stage 1 text share {share}");
        // Stage 2 halves text and raises captions.
        let (_, share2, intended2) = p[1].streams["caption"];
        assert!((intended2 - 4.0 / 5.5).abs() < 1e-12);
        assert!((share2 - intended2).abs() < 0.03, "stage 2 caption share {share2}");
    }

    #[test]
    fn every_document_is_seen_once_per_epoch() {
        let docs: Vec<(DocKind, Vec<u32>)> = (0..10).map(|i| (DocKind::Text, vec![100 + i; 3])).collect();
        let streams = vec![Stream::whole("t", Arc::new(docs))];
        let stage = vec![Stage { start: 0.0, weights: [("t".to_string(), 1.0)].into() }];
        let mut m = Mixture::new(4, layout().special(), streams, stage, 0).unwrap();
        // Each framed doc is bos + 3 + eos = 5 tokens = one row of seq_len 4.
        let mut seen: Vec<u32> = (0..10).map(|_| m.next_row(0.0).tokens[1]).collect();
        seen.sort_unstable();
        assert_eq!(seen, (100..110).collect::<Vec<_>>());
        assert_eq!(m.state().stream_states[0].epoch, 1);
    }

    #[test]
    fn bad_stages_are_refused_with_the_reason() {
        let s = |w: &[(&str, f64)], w2: &[(&str, f64)]| validate_stages(&stages(w, w2), &["a", "b"]);
        assert!(s(&[("a", 1.0), ("b", 1.0)], &[("a", 1.0)]).is_ok());
        assert!(s(&[("a", 0.0), ("b", 0.0)], &[("a", 1.0)]).unwrap_err().0.contains("every source weight 0"));
        assert!(s(&[("a", 1.0)], &[("a", 1.0)]).unwrap_err().0.contains("`b` has weight 0 in every stage"));
        assert!(s(&[("a", 1.0), ("c", 1.0)], &[("b", 1.0)]).unwrap_err().0.contains("unknown source `c`"));
        assert!(s(&[("a", -1.0), ("b", 1.0)], &[("b", 1.0)]).unwrap_err().0.contains("non-negative"));
        let mut late = stages(&[("a", 1.0), ("b", 1.0)], &[("a", 1.0)]);
        late[0].start = 0.1;
        assert!(validate_stages(&late, &["a", "b"]).unwrap_err().0.contains("first stage must start at 0"));
    }

    #[test]
    fn modality_classes_split_and_weight_an_sft_source() {
        let l = layout();
        let s = l.special();
        let img = |v: &mut Vec<u32>| v.extend([s.begin_image, 7, 8, s.end_image]);
        let mut docs = Vec::new();
        for i in 0..40u32 {
            let mut d = vec![100 + i % 9];
            match i % 4 {
                0 => d.extend([s.end_of_turn, 120]),
                1 => {
                    img(&mut d);
                    d.extend([s.end_of_turn, 121]);
                }
                2 => {
                    d.push(s.end_of_turn);
                    img(&mut d);
                }
                _ => {
                    d.extend([s.end_of_turn, 122]);
                    img(&mut d);
                }
            }
            docs.push((DocKind::Sft, d));
        }
        let classes: Vec<ModalityClass> = docs.iter().take(4).map(|(k, t)| ModalityClass::of(*k, t, &l)).collect();
        assert_eq!(
            classes,
            vec![
                ModalityClass::Text,
                ModalityClass::ImageUnderstanding,
                ModalityClass::ImageGeneration,
                ModalityClass::Interleaved
            ]
        );
        let weights: BTreeMap<ModalityClass, f64> =
            [(ModalityClass::Text, 1.0), (ModalityClass::ImageGeneration, 3.0)].into();
        let streams = Stream::by_modality("sft", Arc::new(docs), &l, &weights);
        assert_eq!(streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["sft/text", "sft/image_generation"]);
        let stage = vec![Stage { start: 0.0, weights: [("sft".to_string(), 1.0)].into() }];
        let mut m = Mixture::new(40, s, streams, stage, 5).unwrap();
        for _ in 0..2000 {
            m.next_row(0.0);
        }
        let (_, share, intended) = m.proportions()[0].streams["sft/image_generation"];
        assert!((intended - 0.75).abs() < 1e-12);
        assert!((share - 0.75).abs() < 0.03, "{share}");
    }

    /// SFT documents of one category: `prompt end-of-turn answer`, lengths varying with `i`, and
    /// a marker token `tag` first so that a row's documents can be traced to their category.
    fn sft_store(tag: u32, n: usize, special: &SpecialTokens) -> Arc<dyn DocumentStore> {
        let docs: Vec<(DocKind, Vec<u32>)> = (0..n as u32)
            .map(|i| {
                let mut d = vec![tag];
                d.extend((0..1 + i * 7 % 9).map(|k| 100 + k));
                d.push(special.end_of_turn);
                d.extend((0..1 + i * 5 % 11).map(|k| 150 + k));
                (DocKind::Sft, d)
            })
            .collect();
        Arc::new(docs)
    }

    #[test]
    fn sft_category_weights_are_honoured_and_rows_name_their_category() {
        let s = layout().special();
        let names = ["visual-chat", "image-generation", "text", "safety"];
        let streams: Vec<Stream> =
            names.iter().enumerate().map(|(i, n)| Stream::whole(n, sft_store(10 + i as u32, 50, &s))).collect();
        let weights = [("visual-chat", 1.0), ("image-generation", 2.0), ("text", 1.0), ("safety", 0.25)];
        let stage = vec![Stage { start: 0.0, weights: weights.iter().map(|(n, w)| (n.to_string(), *w)).collect() }];
        let mut m = Mixture::new(31, s, streams, stage, 9).unwrap();
        assert_eq!(m.sources(), names.map(String::from));
        for _ in 0..500 {
            let batch = m.next_batch(0.0, 8);
            // Every row's documents carry the tag of the source the batch names for it.
            for (r, &source) in batch.sources.iter().enumerate() {
                let row = &batch.tokens[r * 32..(r + 1) * 32];
                let tags: Vec<u32> = row.windows(2).filter(|w| w[0] == s.bos).map(|w| w[1]).collect();
                assert!(!tags.is_empty() && tags.iter().all(|&t| t == 10 + source as u32), "{row:?}");
            }
        }
        // 4000 rows of at most 2 pairs: the safety stream's 50 conversations are all drawn, and
        // `drawn` names each document once.
        let drawn = m.drawn();
        let mut safety = drawn[3].clone();
        safety.sort_unstable();
        assert_eq!(safety, (0..50).collect::<Vec<u32>>());
        assert!(drawn.iter().all(|d| d.len() <= 50));
        let p = &m.proportions()[0];
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        for (name, w) in weights {
            let (_, share, intended) = p.streams[name];
            assert!((intended - w / total).abs() < 1e-12);
            assert!((share - intended).abs() < 0.025, "{name}: drew {share}, intended {intended}");
        }
    }

    #[test]
    fn sft_rows_hold_whole_pairs_only() {
        let s = layout().special();
        let store = sft_store(10, 200, &s);
        let mut originals: Vec<Vec<u32>> = (0..store.len())
            .map(|i| {
                let mut t = Vec::new();
                store.tokens_into(i, &mut t);
                t
            })
            .collect();
        originals.sort();
        let stage = vec![Stage { start: 0.0, weights: [("sft".to_string(), 1.0)].into() }];
        let mut m = Mixture::new(40, s, vec![Stream::whole("sft", store)], stage, 2).unwrap();
        let mut pairs = 0;
        for _ in 0..300 {
            let row = m.next_row(0.0);
            assert_eq!(row.tokens[0], s.bos, "a row starts with a whole pair, not the rest of one");
            let mut i = 0;
            while i < row.tokens.len() && row.tokens[i] == s.bos {
                let end = i + row.tokens[i..].iter().position(|&t| t == s.eos).expect("a pair cut at the row end");
                let doc = row.tokens[i + 1..end].to_vec();
                assert!(originals.binary_search(&doc).is_ok(), "not a whole pair: {doc:?}");
                // Loss on the answer only: after the end-of-turn, up to and with the eos.
                let eot = i + row.tokens[i..].iter().position(|&t| t == s.end_of_turn).unwrap();
                assert!(row.loss[i..=eot].iter().all(|&l| l == 0));
                assert!(row.loss[eot + 1..=end].iter().all(|&l| l == 1));
                pairs += 1;
                i = end + 1;
            }
            assert!(row.tokens[i..].iter().all(|&t| t == s.pad) && row.loss[i..].iter().all(|&l| l == 0));
        }
        assert!(pairs > 300, "rows should pack several pairs: {pairs}");
    }
}
