//! The VQ-VAE image tokenizer: encoder, quant_conv, quantize, post_quant_conv, decoder.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Int, Tensor};

use super::VqConfig;
use super::blocks::conv;
use super::decoder::Decoder;
use super::encoder::Encoder;
use super::quantizer::{Quantized, VectorQuantizer};

/// The image tokenizer; field names follow HF / Meta (`encoder`, `quant_conv`, `quantize`,
/// `post_quant_conv`, `decoder`). The decoder is optional: HF checkpoints carry none.
#[derive(Module, Debug)]
pub struct VqVae {
    /// Image to latent.
    pub encoder: Encoder,
    /// Latent to codebook width (1×1).
    pub quant_conv: Conv2d,
    /// The codebook.
    pub quantize: VectorQuantizer,
    /// Codebook width back to latent (1×1).
    pub post_quant_conv: Conv2d,
    /// Latent to image.
    pub decoder: Option<Decoder>,
    /// The config the tokenizer was built from.
    #[module(skip)]
    pub config: VqConfig,
}

/// What a training forward pass gives.
#[derive(Debug, Clone)]
pub struct VqOutput {
    /// Reconstruction in pixel space, `[batch, channels, R, R]`.
    pub reconstruction: Tensor<4>,
    /// Codebook + commitment loss.
    pub vq_loss: Tensor<1>,
    /// Codes, `[batch, codes_per_image]`.
    pub codes: Tensor<2, Int>,
    /// Encoder output after `quant_conv`, before quantization, `[batch, embed, r, r]`.
    pub latent: Tensor<4>,
}

impl VqConfig {
    /// A fresh tokenizer with a decoder. Panics on an invalid config; validate user input first.
    pub fn init(&self, device: &Device) -> VqVae {
        if let Err(e) = self.validate() {
            panic!("invalid VqConfig: {e}");
        }
        VqVae {
            encoder: Encoder::new(self, device),
            quant_conv: conv(self.latent_channels, self.embed_dim, 1, device),
            quantize: VectorQuantizer::new(self.num_embeddings, self.embed_dim, self.beta, device),
            post_quant_conv: conv(self.embed_dim, self.latent_channels, 1, device),
            decoder: Some(Decoder::new(self, device)),
            config: self.clone(),
        }
    }
}

impl VqVae {
    /// Encoder output after `quant_conv`: `[batch, embed, r, r]`.
    pub fn latent(&self, pixels: Tensor<4>) -> Tensor<4> {
        self.quant_conv.forward(self.encoder.forward(pixels))
    }

    /// Codes of images in [-1, 1]: `[batch, 3, R, R]` -> `[batch, r·r]`, row-major `(y, x)`.
    pub fn encode(&self, pixels: Tensor<4>) -> Tensor<2, Int> {
        self.quantize.codes(self.latent(pixels))
    }

    /// Images (unclamped, nominally [-1, 1]) of codes `[batch, r·r]`. `None` without a decoder.
    pub fn decode(&self, codes: Tensor<2, Int>) -> Option<Tensor<4>> {
        let r = self.config.latent_size();
        let z_q = self.quantize.lookup(codes, r, r);
        self.decode_latent(z_q)
    }

    /// Decoder applied to a quantized latent `[batch, embed, r, r]`.
    pub fn decode_latent(&self, z_q: Tensor<4>) -> Option<Tensor<4>> {
        let decoder = self.decoder.as_ref()?;
        Some(decoder.forward(self.post_quant_conv.forward(z_q)))
    }

    /// Encode, quantize (straight-through) and decode, for training. Panics without a decoder.
    pub fn forward(&self, pixels: Tensor<4>) -> VqOutput {
        let latent = self.latent(pixels);
        let Quantized { z_q, loss, indices } = self.quantize.forward(latent.clone());
        let reconstruction = self.decode_latent(z_q).expect("training a VQ-VAE needs its decoder");
        VqOutput { reconstruction, vq_loss: loss, codes: indices, latent }
    }
}
