//! One decoder layer, in either norm placement.

use burn::module::Module;
use burn::nn::Dropout;
use burn::tensor::{Bool, FloatDType, Tensor};

use crate::attention::{Attention, LayerKv};
use crate::config::NormPlacement;
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
use crate::precision::cast_to;
use crate::rope::RopeTable;

/// A decoder layer; field names follow the HF checkpoint (`model.layers.N.*`).
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Self-attention.
    pub self_attn: Attention,
    /// SwiGLU feed-forward.
    pub mlp: Mlp,
    /// Before attention (pre-norm) or on its output (reordered).
    pub input_layernorm: RmsNorm,
    /// Before the FFN (pre-norm) or on its output (reordered).
    pub post_attention_layernorm: RmsNorm,
    /// Dropout on each residual branch.
    pub resid_dropout: Dropout,
    /// Norm placement.
    #[module(skip)]
    pub norm_placement: NormPlacement,
}

/// What the layers report to the stability probes, one entry per layer.
#[derive(Debug, Default)]
pub struct Probe {
    /// Largest pre-softmax attention logit.
    pub max_attn_logit: Vec<Tensor<1>>,
    /// Attention entropy of the least spread-out head.
    pub attn_entropy: Vec<Tensor<1>>,
    /// RMS of the layer's output.
    pub output_rms: Vec<Tensor<1>>,
}

impl DecoderLayer {
    /// `x`: `[batch, seq, d_model]`, the residual stream. With `compute` (mixed precision) the
    /// attention and the FFN run in that dtype and their outputs return to the stream's dtype
    /// before the norms and the residual adds, as under PyTorch's autocast.
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTable,
        compute: Option<FloatDType>,
        cache: Option<&mut LayerKv>,
        mut probe: Option<&mut Probe>,
        blocked: Option<&Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let stream = x.dtype();
        let c = |t: Tensor<3>| cast_to(t, compute);
        let out = match self.norm_placement {
            NormPlacement::PreNorm => {
                let normed = c(self.input_layernorm.forward(x.clone()));
                let a = self.self_attn.forward(normed, rope, cache, probe.as_deref_mut(), blocked).cast(stream);
                let h = x + self.resid_dropout.forward(a);
                let f = self.mlp.forward(c(self.post_attention_layernorm.forward(h.clone()))).cast(stream);
                h + self.resid_dropout.forward(f)
            }
            NormPlacement::Reordered => {
                let a = self.self_attn.forward(c(x.clone()), rope, cache, probe.as_deref_mut(), blocked).cast(stream);
                let h = x + self.resid_dropout.forward(self.input_layernorm.forward(a));
                let f = self.mlp.forward(c(h.clone())).cast(stream);
                h + self.resid_dropout.forward(self.post_attention_layernorm.forward(f))
            }
        };
        if let Some(p) = probe {
            p.output_rms.push(out.clone().detach().square().mean().sqrt());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChameleonConfig, Precision};
    use burn::tensor::{DType, Device, Distribution};

    #[test]
    fn under_bf16_compute_the_residual_stream_keeps_f32_updates() {
        // A stream of magnitude up to 1000: bf16 spaces values above 256 2 to 4 apart, far more
        // than a layer's update at init. Kept in f32, the update survives with bf16 compute's
        // error alone.
        let device = Device::flex();
        device.seed(11);
        let config = ChameleonConfig::new(64, 32, 1, 2).with_norm_placement(NormPlacement::PreNorm);
        let model = config.init(&device);
        let copy = Precision::Bf16.compute_copy(&model);
        let rope = RopeTable::new(config.rope_theta, config.head_dim(), 0, 16, &device);
        let x = Tensor::<3>::random([2, 16, 32], Distribution::Uniform(-1000.0, 1000.0), &device);
        let exact = model.layers[0].forward(x.clone(), &rope, None, None, None, None) - x.clone();
        let out = copy.layers[0].forward(x.clone(), &rope, Some(FloatDType::BF16), None, None, None);
        assert_eq!(out.dtype(), DType::F32, "the stream stays f32");
        let mixed = out - x;
        let scale = exact.clone().abs().max().into_scalar::<f32>();
        let diff = (mixed - exact).abs().max().into_scalar::<f32>();
        assert!(diff < 0.05 * scale, "the layer's update differs by {diff} (largest {scale})");
    }
}
