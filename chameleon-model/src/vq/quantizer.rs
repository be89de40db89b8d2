//! Nearest-codebook-entry vector quantization with a straight-through gradient.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor};

/// The codebook (`quantize.embedding.weight`, `[num_embeddings, embed_dim]`).
#[derive(Module, Debug)]
pub struct VectorQuantizer {
    /// Codebook vectors.
    pub embedding: Embedding,
    /// Commitment weight of the legacy loss.
    pub beta: f64,
}

/// What quantizing a latent gives.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// Quantized latent with the straight-through gradient, `[batch, embed, h, w]`.
    pub z_q: Tensor<4>,
    /// `mean((z_q.detach() - z)²) + β·mean((z_q - z.detach())²)` (taming's "legacy" order).
    pub loss: Tensor<1>,
    /// Code of every position, row-major `(y, x)`: `[batch, h·w]`.
    pub indices: Tensor<2, Int>,
}

impl VectorQuantizer {
    /// A codebook initialised uniformly in ±1/n, as taming does.
    pub fn new(num_embeddings: usize, embed_dim: usize, beta: f64, device: &Device) -> Self {
        let bound = 1.0 / num_embeddings as f64;
        let embedding = EmbeddingConfig::new(num_embeddings, embed_dim)
            .with_initializer(Initializer::Uniform { min: -bound, max: bound })
            .init(device);
        Self { embedding, beta }
    }

    /// Codes of the latent `z`: `[batch, embed, h, w]` -> `[batch, h·w]`. Distances are
    /// `|z|² + |e|² − 2 z·e`, as in the reference.
    pub fn codes(&self, z: Tensor<4>) -> Tensor<2, Int> {
        let [b, c, h, w] = z.dims();
        let flat = z.permute([0, 2, 3, 1]).reshape([b * h * w, c]);
        let codebook = self.embedding.weight.val();
        let distances = flat.clone().square().sum_dim(1) + codebook.clone().square().sum_dim(1).reshape([1, -1])
            - flat.matmul(codebook.transpose()).mul_scalar(2.0);
        distances.argmin(1).reshape([b, h * w])
    }

    /// Codebook vectors of codes `[batch, h·w]` as a latent `[batch, embed, h, w]`.
    pub fn lookup(&self, codes: Tensor<2, Int>, h: usize, w: usize) -> Tensor<4> {
        let [b, _] = codes.dims();
        let c = self.embedding.weight.dims()[1];
        self.embedding.forward(codes).reshape([b, h, w, c]).permute([0, 3, 1, 2])
    }

    /// Quantizes `z` with the loss and straight-through gradient of training.
    pub fn forward(&self, z: Tensor<4>) -> Quantized {
        let [_, _, h, w] = z.dims();
        let indices = self.codes(z.clone().detach());
        let z_q = self.lookup(indices.clone(), h, w);
        let codebook = (z_q.clone() - z.clone().detach()).square().mean();
        let commitment = (z_q.clone().detach() - z.clone()).square().mean();
        // Legacy order as in taming / HF: mean((zq.detach - z)²) + β·mean((zq - z.detach)²).
        let loss = commitment + codebook.mul_scalar(self.beta);
        let z_q = z.clone() + (z_q - z).detach();
        Quantized { z_q, loss, indices }
    }
}
