//! Import and export of HF-format Chameleon checkpoints (`config.json` plus safetensors).
//!
//! The module tree of [`Chameleon`](crate::Chameleon) mirrors HF's state-dict names, so the key
//! map is the `model.` prefix plus a transpose of every linear weight (burn stores `[in, out]`,
//! PyTorch `[out, in]`). No pickle is ever read.

pub mod checksums;
mod error;
mod hf;
mod safetensors_files;
mod vq;

pub use error::CheckpointError;
pub use hf::{ExportOptions, HfCheckpoint, load_hf_checkpoint, read_hf_config, save_hf_checkpoint};
pub use safetensors_files::{
    INDEX_FILE, NamedTensor, SINGLE_FILE, SafetensorsFiles, WeightDtype, write_checkpoint_weights,
};
pub use vq::{VQ_CONFIG_FILE, VQ_WEIGHTS_FILE, hf_vq_tensors, load_vq_checkpoint, save_vq_checkpoint, vq_config_json};
