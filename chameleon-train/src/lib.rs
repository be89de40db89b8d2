//! # chameleon-train
//!
//! The training loop and optimizer, stability diagnostics, checkpoints, the ablation grid and
//! the live ratatui monitor. The model's probes ([`chameleon_model::Diagnostics`]) are what
//! the stability metrics are made from.
//!
//! This crate is empty until issue #5 lands; the workspace already has its place.

pub use chameleon_model::Diagnostics;
