//! From a prepared folder to batches: one stream per source (or per modality class of a
//! source), mixed by the config's stages.

use std::sync::Arc;

use crate::config::DataConfig;
use crate::document::DocKind;
use crate::mixture::{DocumentStore, Mixture, Stream};
use crate::prepare::{PrepareError, Prepared};
use crate::shard::{Shard, ShardSet};

/// Which documents to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training documents.
    Train,
    /// The held-out documents.
    HeldOut,
}

impl DocumentStore for ShardSet {
    fn len(&self) -> usize {
        ShardSet::len(self)
    }
    fn kind(&self, i: usize) -> DocKind {
        ShardSet::kind(self, i)
    }
    fn tokens_into(&self, i: usize, out: &mut Vec<u32>) {
        ShardSet::tokens_into(self, i, out)
    }
}

/// Opens the shards of one source and split. Checksums are verified once, here.
pub fn open_source(prepared: &Prepared, source: &str, split: Split) -> Result<ShardSet, PrepareError> {
    let summary = prepared
        .manifest
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| PrepareError::Other(format!("{}: no source `{source}`", prepared.dir.display())))?;
    let files = match split {
        Split::Train => &summary.train_shards,
        Split::HeldOut => &summary.held_out_shards,
    };
    let shards = files
        .iter()
        .map(|f| Shard::open(&prepared.dir.join(f)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PrepareError::Other(e.to_string()))?;
    ShardSet::from_shards(shards).map_err(|e| PrepareError::Other(e.to_string()))
}

/// The mixture of `config`'s sources over a prepared folder, rows of `config.seq_len + 1`.
/// `config` may differ from the one the folder was prepared with in its stages and sequence
/// length, not in its sources.
pub fn open_mixture(prepared: &Prepared, config: &DataConfig, split: Split) -> Result<Mixture, PrepareError> {
    let tokenizer = prepared.tokenizer()?;
    let layout = tokenizer.layout();
    let mut streams = Vec::new();
    for s in &config.sources {
        let store: Arc<dyn DocumentStore> = Arc::new(open_source(prepared, &s.name, split)?);
        match &s.modality_weights {
            Some(w) => streams.extend(Stream::by_modality(&s.name, store, layout, w)),
            None => streams.push(Stream::whole(&s.name, store)),
        }
    }
    let longest_image = prepared.manifest.codes_per_image + 2;
    if longest_image > config.seq_len + 1 {
        return Err(PrepareError::Other(format!(
            "seq_len = {} cannot hold one image block of {longest_image} tokens; raise [data] seq_len",
            config.seq_len
        )));
    }
    Mixture::new(config.seq_len, layout.special(), streams, config.stages.clone(), config.seed)
        .map_err(|e| PrepareError::Other(e.to_string()))
}
