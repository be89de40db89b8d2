//! One decoder layer, in either norm placement.

use burn::module::Module;
use burn::nn::Dropout;
use burn::tensor::{Bool, Tensor};

use crate::attention::{Attention, LayerKv};
use crate::config::NormPlacement;
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
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

/// What one layer reports to the stability probes.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    pub max_attn_logit: Vec<Tensor<1>>,
    pub output_rms: Vec<Tensor<1>>,
}

impl DecoderLayer {
    /// `x`: `[batch, seq, d_model]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTable,
        cache: Option<&mut LayerKv>,
        probe: Option<&mut Probe>,
        blocked: Option<&Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let (max_logit, rms) = match probe {
            Some(p) => (Some(&mut p.max_attn_logit), Some(&mut p.output_rms)),
            None => (None, None),
        };
        let out = match self.norm_placement {
            NormPlacement::PreNorm => {
                let a =
                    self.self_attn.forward(self.input_layernorm.forward(x.clone()), rope, cache, max_logit, blocked);
                let h = x + self.resid_dropout.forward(a);
                let f = self.mlp.forward(self.post_attention_layernorm.forward(h.clone()));
                h + self.resid_dropout.forward(f)
            }
            NormPlacement::Reordered => {
                let a =
                    self.input_layernorm.forward(self.self_attn.forward(x.clone(), rope, cache, max_logit, blocked));
                let h = x + self.resid_dropout.forward(a);
                let f = self.post_attention_layernorm.forward(self.mlp.forward(h.clone()));
                h + self.resid_dropout.forward(f)
            }
        };
        if let Some(rms) = rms {
            rms.push(out.clone().detach().square().mean().sqrt());
        }
        out
    }
}
