//! # chameleon-eval
//!
//! Mixed-modal generation with modality masking, perplexity by modality, caption and
//! reconstruction metrics, and the ablation report.
//!
//! Today: mixed-modal generation ([`generate`]: the official modality state machine, sampling,
//! image classifier-free guidance, KV cache, batches, streaming events), the analysis of an
//! ablation grid ([`ablation`]: seeds grouped into cells, one verdict rule for every finding, the
//! learning-rate sensitivity, the summary and the plotted report), and evaluations on held-out
//! data ([`evaluate`]:
//! perplexity by modality, captioning BLEU-4, caption choice accuracy, image likelihood given
//! its caption, samples).

pub mod ablation;
pub mod evaluate;
pub mod generate;
pub mod sft_eval;

pub use chameleon_model::KvCache;
