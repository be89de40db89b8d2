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

    /// The model to run a step with: the model itself for f32; for bf16 a copy whose `Linear`
    /// weights are casts of the f32 ones (same ids, attached to the graph, so the gradients
    /// computed through the copy land on the originals). The rest stays f32, as under PyTorch's
    /// autocast: the embedding table (its gradient is a scatter-add of one row per token, which
    /// in bf16 stops growing once a frequent token's row holds 256 times one position's share),
    /// the residual stream it starts (see `DecoderLayer::forward`) and the norms.
    pub fn compute_copy(self, model: &Chameleon) -> Chameleon {
        match self {
            Self::F32 => model.clone(),
            Self::Bf16 => {
                let mut copy = model.clone().map(&mut CastParams::linear_only(FloatDType::BF16));
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
    let mut cast = model.map(&mut CastParams { dtype, linear_only: false, parents: Vec::new() });
    cast.compute_dtype = None;
    cast
}

/// `t` in `dtype` when one is given (mixed precision), else unchanged.
pub(crate) fn cast_to<const D: usize>(t: Tensor<D>, dtype: Option<FloatDType>) -> Tensor<D> {
    match dtype {
        Some(dtype) => t.cast(dtype),
        None => t,
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// Casts float parameters to `dtype`: all of them, or with `linear_only` those of `Linear`
/// modules alone.
struct CastParams {
    dtype: FloatDType,
    linear_only: bool,
    /// The struct holding each field being mapped, innermost last ("Struct:Linear", ...).
    parents: Vec<String>,
}

impl CastParams {
    fn linear_only(dtype: FloatDType) -> Self {
        Self { dtype, linear_only: true, parents: Vec::new() }
    }
}

impl ModuleMapper for CastParams {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.parents.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.parents.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.linear_only || self.parents.last().is_some_and(|p| p == "Struct:Linear") {
            let dtype = self.dtype;
            param.map(|t| t.cast(dtype))
        } else {
            // Kept, but initialised here as a cast would be: lazily initialised parameters take
            // their seeded values in this (field) order, so a fresh model's values do not
            // depend on the precision.
            let _ = param.val();
            param
        }
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
            g.slice([5..6]).into_data().try_to_vec::<f32>().unwrap()
        };
        let (exact, mixed) = (row(&model), row(&Precision::Bf16.compute_copy(&model)));
        let scale = exact.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let diff = exact.iter().zip(&mixed).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(diff < 0.05 * scale, "bf16 row gradient differs by {diff} (largest {scale})");
    }
}
