//! # chameleon-data
//!
//! Raw files to packed token batches: the sentencepiece BPE tokenizer, image preprocessing,
//! the sources (text-only, image-caption, interleaved), stage-weighted mixtures, packing, SFT
//! masks and the built-in corpus. It builds on the vocabulary layout of
//! [`chameleon_model::VocabLayout`].
//!
//! Today it holds image pre- and postprocessing ([`image`]) and the image side of the built-in
//! corpus ([`emoji`]); the text side, sources and packing land with issue #4.

pub mod emoji;
pub mod image;

pub use chameleon_model::VocabLayout;
