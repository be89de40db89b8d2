//! # chameleon-train
//!
//! Training loops, the optimizer, stability diagnostics, checkpoints, the ablation grid and the
//! live ratatui monitor. The model's probes ([`chameleon_model::Diagnostics`]) are what the
//! stability metrics are made from.
//!
//! Today: the VQ-VAE image tokenizer's training ([`vq_train`]); the language model's experiment
//! files ([`experiment`]), optimizer recipe ([`optim`]: AdamW as in the paper, the global
//! gradient-norm clip, the schedules) and training loop with exact resume ([`trainer`]); the
//! ablation grid ([`ablation`]) and the live monitor ([`monitor`]); FLOPs, device peaks and MFU
//! ([`speed`]) and the benchmark workloads of `cargo xtask bench` ([`bench`]); data parallelism
//! across devices ([`data_parallel`]); a tiny experiment with generated data ([`fixtures`]).

pub mod ablation;
pub mod bench;
mod config_file;
pub mod data_parallel;
pub mod experiment;
pub mod fixtures;
pub mod monitor;
pub mod optim;
pub mod run_dir;
pub mod run_lock;
pub mod speed;
pub mod trainer;
pub mod vq_train;

pub use chameleon_model::Diagnostics;
pub use config_file::ConfigError;
