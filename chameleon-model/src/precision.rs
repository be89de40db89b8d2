//! Compute precision. Parameters (and so AdamW's moments) stay f32; under `bf16` each step
//! runs on a bf16 copy made by a differentiable cast, so gradients flow back to the f32
//! masters. The matmuls, attention and the FFN compute in bf16; as under PyTorch's autocast, the
//! embedding table, the residual stream, the norms, softmax cross-entropy and `log Z` are f32.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::Chameleon;

/// The dtype of matmuls and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 compute on f32 master weights (mixed precision).
    Bf16,
}

impl Precision {
    /// The compute dtype.
    pub fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
        }
    }

    /// Whether `device` can compute in this precision.
    pub fn supported_on(self, device: &Device) -> bool {
        device.supports_dtype(DType::from(self.dtype()))
    }

    /// The model to run a step with: the model itself for f32; for bf16 a copy whose parameters
    /// are casts of the f32 ones (same ids, attached to the graph, so the gradients computed
    /// through the copy land on the originals). The embedding table stays f32, as under
    /// PyTorch's autocast: its gradient is a scatter-add of one row per token, which in bf16
    /// stops growing once a frequent token's row holds 256 times one position's share. So does
    /// the residual stream it starts (see `DecoderLayer::forward`).
    pub fn compute_copy(self, model: &Chameleon) -> Chameleon {
        match self {
            Self::F32 => model.clone(),
            Self::Bf16 => {
                // Cast everything (in field order, which is also the order lazily initialised
                // parameters take their seeded values), then put back what autocast keeps f32:
                // the embedding table and the norms' gains and shifts.
                let mut copy = cast_params(model.clone(), FloatDType::BF16);
                copy.embed_tokens = model.embed_tokens.clone();
                copy.norm = model.norm.clone();
                for (c, m) in copy.layers.iter_mut().zip(&model.layers) {
                    c.input_layernorm = m.input_layernorm.clone();
                    c.post_attention_layernorm = m.post_attention_layernorm.clone();
                    c.self_attn.q_norm = m.self_attn.q_norm.clone();
                    c.self_attn.k_norm = m.self_attn.k_norm.clone();
                }
                copy.compute_dtype = Some(FloatDType::BF16);
                copy
            }
        }
    }
}

/// The model with every parameter cast to `dtype` (differentiably; ids kept), computing in
/// `dtype` throughout. Norm statistics, `log Z` and the losses stay f32 whatever the
/// parameters' dtype.
pub fn cast_params(model: Chameleon, dtype: FloatDType) -> Chameleon {
    let mut cast = model.map(&mut CastParams(dtype));
    cast.compute_dtype = None;
    cast
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

struct CastParams(FloatDType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

#[cfg(test)]
mod tests {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::{Int, Tensor, TensorData};

    use super::*;
    use crate::{ChameleonConfig, NormPlacement};

    /// Collects every parameter's gradient dtype (or `None` when it has no gradient).
    struct GradDtypes<'a>(&'a burn::tensor::Gradients, Vec<Option<DType>>);

    impl ModuleVisitor for GradDtypes<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.1.push(param.grad(self.0).map(|g| g.dtype()));
        }
    }

    #[test]
    fn bf16_compute_tracks_f32_and_its_gradients_reach_the_f32_masters() {
        let device = Device::flex().autodiff();
        assert!(Precision::Bf16.supported_on(&device));
        device.seed(3);
        let config =
            ChameleonConfig::new(64, 32, 2, 2).with_qk_norm(true).with_norm_placement(NormPlacement::Reordered);
        let model = config.init(&device);
        let tokens = Tensor::<2, Int>::from_ints([[1, 5, 9, 2, 7, 3]], &device);

        let exact = model.forward(tokens.clone());
        let copy = Precision::Bf16.compute_copy(&model);
        assert_eq!(copy.lm_head.weight.val().dtype(), DType::BF16);
        assert_eq!(model.lm_head.weight.val().dtype(), DType::F32, "the masters stay f32");
        let mixed = copy.forward(tokens).cast(FloatDType::F32);
        let diff = (mixed.clone() - exact.clone()).abs().max().into_scalar::<f32>();
        let scale = exact.abs().max().into_scalar::<f32>();
        assert!(diff < 0.05 * scale.max(1.0), "bf16 logits differ by {diff} (scale {scale})");

        let grads = mixed.square().mean().backward();
        let mut seen = GradDtypes(&grads, Vec::new());
        model.visit(&mut seen);
        assert!(!seen.1.is_empty());
        assert!(seen.1.iter().all(|g| *g == Some(DType::F32)), "{:?}", seen.1);
    }

    #[test]
    fn bf16_embedding_gradient_of_a_frequent_token_is_summed_in_f32() {
        // One token at all 1024 positions: its embedding row's gradient sums 1024 terms.
        let device = Device::flex().autodiff();
        device.seed(5);
        let model = ChameleonConfig::new(64, 32, 2, 2).with_max_seq_len(1024).init(&device);
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(vec![5i64; 1024], [1, 1024]), &device);
        let row = |m: &Chameleon| -> Vec<f32> {
            let grads = m.forward(tokens.clone()).cast(FloatDType::F32).sum().backward();
            let g = model.embed_tokens.weight.grad(&grads).expect("the master gets the gradient");
            assert_eq!(g.dtype(), DType::F32);
            g.slice([5..6]).into_data().to_vec::<f32>().unwrap()
        };
        let (exact, mixed) = (row(&model), row(&Precision::Bf16.compute_copy(&model)));
        let scale = exact.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let diff = exact.iter().zip(&mixed).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(diff < 0.05 * scale, "bf16 row gradient differs by {diff} (largest {scale})");
    }
}
