//! # chameleon-train
//!
//! Training loops, the optimizer, stability diagnostics, checkpoints, the ablation grid and the
//! live ratatui monitor. The model's probes ([`chameleon_model::Diagnostics`]) are what the
//! stability metrics are made from.
//!
//! Today it trains the VQ-VAE image tokenizer ([`vq_train`]) and holds the optimizer recipe of
//! the language model ([`optim`]: AdamW as in the paper, the global gradient-norm clip, the
//! learning-rate schedules); the loop, the ablation grid and the monitor land with issue #5.

mod config_file;
pub mod optim;
pub mod vq_train;

pub use chameleon_model::Diagnostics;
pub use config_file::ConfigError;
