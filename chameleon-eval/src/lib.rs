//! # chameleon-eval
//!
//! Mixed-modal generation with modality masking, perplexity by modality, caption and
//! reconstruction metrics, and the ablation report. Generation decodes with
//! [`chameleon_model::KvCache`].
//!
//! This crate is empty until issue #6 lands; the workspace already has its place.

pub use chameleon_model::KvCache;
