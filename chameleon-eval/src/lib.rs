//! # chameleon-eval
//!
//! Mixed-modal generation with modality masking, perplexity by modality, caption and
//! reconstruction metrics, and the ablation report.
//!
//! Today: mixed-modal generation ([`generate`]: the official modality state machine, sampling,
//! image classifier-free guidance, KV cache, batches, streaming events) and the ablation report
//! ([`report`]: `report.md` with PNG plots, the runs table, the learning-rate sensitivity and a
//! verdict on each of the paper's findings), and evaluations on held-out data ([`evaluate`]:
//! perplexity by modality, captioning BLEU-4, caption choice accuracy, image likelihood given
//! its caption, samples).

pub mod evaluate;
pub mod generate;
pub mod report;
pub mod sft_eval;

pub use chameleon_model::KvCache;
