//! # chameleon-model
//!
//! The Chameleon early-fusion transformer as backend-agnostic burn modules, the unified
//! vocabulary layout, and import/export of HF-format safetensors checkpoints.
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use chameleon_model::{ChameleonConfig, NormPlacement};
//!
//! let device = Device::flex();
//! let config = ChameleonConfig::new(4096, 256, 4, 4).with_norm_placement(NormPlacement::Reordered);
//! let model = config.init(&device);
//! let tokens = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
//! let (logits, diagnostics) = model.forward_diagnosed(tokens);
//! ```

mod attention;
pub mod checkpoint;
mod config;
pub mod host_memory;
mod layer;
mod mlp;
mod model;
mod norm;
mod precision;
mod rope;
pub mod vocab;
pub mod vq;

pub use config::{ChameleonConfig, NormPlacement};
pub use model::{Chameleon, Diagnostics, KvCache, log_sum_exp};
pub use precision::{Precision, cast_params};
pub use vocab::{Modality, SpecialTokens, VocabLayout};
