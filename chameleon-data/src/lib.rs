//! # chameleon-data
//!
//! Raw files to packed token batches: the sentencepiece BPE tokenizer, image preprocessing,
//! the sources (text-only, image-caption, interleaved), stage-weighted mixtures, packing, SFT
//! masks and the built-in corpus. It builds on the vocabulary layout of
//! [`chameleon_model::VocabLayout`].
//!
//! This crate is empty until issue #4 lands; the workspace already has its place.

pub use chameleon_model::VocabLayout;
