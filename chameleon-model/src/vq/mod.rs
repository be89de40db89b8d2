//! The VQ-VAE image tokenizer in the VQGAN layout of taming-transformers, as Chameleon uses it:
//! a 512×512 image becomes 1024 codes from a codebook of 8192.

mod blocks;
mod config;
mod decoder;
mod encoder;
mod model;
mod quantizer;

pub use blocks::{AttnBlock, Downsample, ResnetBlock, Upsample};
pub use config::VqConfig;
pub use decoder::{Decoder, UpLevel};
pub use encoder::{DownLevel, Encoder, Mid};
pub use model::{VqOutput, VqVae};
pub use quantizer::{Quantized, VectorQuantizer};
