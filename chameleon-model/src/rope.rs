//! Rotary position embedding in the half-split ("rotate_half") layout of HF checkpoints:
//! the first and second halves of each head form the rotated pairs.

use burn::tensor::{Device, Int, Tensor};

/// Cosines and sines for a run of positions, each `[seq, head_dim]`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl RopeTable {
    /// The table for positions `start..start + len`.
    pub fn new(theta: f64, head_dim: usize, start: usize, len: usize, device: &Device) -> Self {
        let half = head_dim / 2;
        // As HF: inv_freq = 1 / theta^(2i / head_dim), in f32.
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        let inv_freq = Tensor::<1>::from_floats(inv_freq.as_slice(), device).reshape([1, half]);
        let pos = Tensor::<1, Int>::arange(start as i64..(start + len) as i64, device).float().reshape([len, 1]);
        let freqs = pos.matmul(inv_freq);
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 1);
        Self { cos: emb.clone().cos(), sin: emb.sin() }
    }

    /// Rotates `x`: `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let dtype = x.dtype();
        x * self.cos.clone().cast(dtype).unsqueeze::<4>() + rotated * self.sin.clone().cast(dtype).unsqueeze::<4>()
    }
}
