//! # chameleon-eval
//!
//! Mixed-modal generation with modality masking, perplexity by modality, caption and
//! reconstruction metrics, and the ablation report.
//!
//! Today: mixed-modal generation ([`generate`]: the official modality state machine, sampling,
//! image classifier-free guidance, KV cache, batches, streaming events) and the ablation report
//! ([`report`]: `report.md` with PNG plots, the runs table, the learning-rate sensitivity and a
//! verdict on each of the paper's findings). The evaluations are the rest of issue #6.

pub mod generate;
pub mod report;

pub use chameleon_model::KvCache;
