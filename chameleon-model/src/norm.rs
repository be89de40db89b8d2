//! The two normalisations: RMSNorm on the residual stream, and the per-head LayerNorm of QK-norm.

use burn::module::{Module, Param};
use burn::tensor::{Device, FloatDType, Tensor};

/// RMSNorm: `weight * x / sqrt(mean(x²) + eps)`, statistics in f32 (as HF Chameleon).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Gain, `[d_model]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// A norm with unit gain.
    pub fn new(d_model: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::ones([d_model], device)), eps }
    }

    /// Normalises over the last dimension. Under bf16 compute the statistics and the product
    /// are taken in f32 and the result cast back.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let inv_rms = x.clone().square().mean_dim(D - 1).add_scalar(self.eps).sqrt().recip();
        let weight = self.weight.val().cast(FloatDType::F32).unsqueeze::<D>();
        (x * inv_rms * weight).cast(dtype)
    }
}

/// QK-norm as Chameleon computes it: LayerNorm statistics over `head_dim` only, then a separate
/// affine for every head: `weight[h] * norm(x[h]) + bias[h]`, with `weight`, `bias` of shape
/// `[heads, head_dim]`.
#[derive(Module, Debug)]
pub struct HeadLayerNorm {
    /// Per-head gain, `[heads, head_dim]`.
    pub weight: Param<Tensor<2>>,
    /// Per-head shift, `[heads, head_dim]`.
    pub bias: Param<Tensor<2>>,
    /// Added to the variance.
    pub eps: f64,
}

impl HeadLayerNorm {
    /// Identity affine (gain 1, shift 0).
    pub fn new(heads: usize, head_dim: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([heads, head_dim], device)),
            bias: Param::from_tensor(Tensor::zeros([heads, head_dim], device)),
            eps,
        }
    }

    /// `x`: `[batch, seq, heads, head_dim]`.
    /// Statistics in f32, as [`RmsNorm::forward`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let (var, mean) = x.clone().var_mean_bias(3);
        let normed = (x - mean) / var.add_scalar(self.eps).sqrt();
        let wide = |p: &burn::module::Param<Tensor<2>>| p.val().cast(FloatDType::F32).unsqueeze::<4>();
        (normed * wide(&self.weight) + wide(&self.bias)).cast(dtype)
    }
}
