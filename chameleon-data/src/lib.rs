//! # chameleon-data
//!
//! Raw files to packed token batches, in one direction:
//! sources ([`source`], the built-in [`corpus`]) → [`Document`]s → tokens (the sentencepiece
//! [`tokenizer`] for text, the VQ tokenizer for [`image`]s) → memory-mapped [`shard`]s
//! ([`prepare`], cached by content) → a stage-weighted [`mixture`] of [`pack`]ed rows
//! ([`loader`]). The experiment's `[data]` section is [`DataConfig`].

pub mod config;
pub mod corpus;
pub mod document;
pub mod emoji;
pub mod fixtures;
pub mod hf_tokenizer;
pub mod image;
pub mod loader;
pub mod mixture;
pub mod pack;
pub mod prepare;
pub mod sft_set;
pub mod shard;
pub mod source;
pub mod tokenizer;

pub use chameleon_model::{Modality, VocabLayout};
pub use config::DataConfig;
pub use document::{BadRecord, DocKind, Document, ImageRef, Location, Segment};
pub use mixture::{Batch, Mixture, MixtureState};
pub use prepare::{Manifest, Prepared, prepare};
pub use tokenizer::TextTokenizer;
