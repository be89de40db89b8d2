//! Causal self-attention with grouped-query heads, optional QK-norm, RoPE, a KV cache and the
//! attention probes (max logit, entropy).

use burn::module::Module;
use burn::nn::{Dropout, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Tensor};

use crate::layer::Probe;
use crate::norm::HeadLayerNorm;
use crate::rope::RopeTable;

/// Keys and values of one layer for all positions decoded so far, `[batch, kv_heads, seq, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

/// Self-attention; field names follow the HF checkpoint (`self_attn.q_proj`, `self_attn.q_norm`, ...).
#[derive(Module, Debug)]
pub struct Attention {
    /// `d_model -> heads * head_dim`.
    pub q_proj: Linear,
    /// `d_model -> kv_heads * head_dim`.
    pub k_proj: Linear,
    /// `d_model -> kv_heads * head_dim`.
    pub v_proj: Linear,
    /// `heads * head_dim -> d_model`.
    pub o_proj: Linear,
    /// QK-norm of the queries (absent when the switch is off).
    pub q_norm: Option<HeadLayerNorm>,
    /// QK-norm of the keys.
    pub k_norm: Option<HeadLayerNorm>,
    /// Dropout on the attention probabilities.
    pub attn_dropout: Dropout,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
}

impl Attention {
    /// `x`: `[batch, seq, d_model]`. With `cache`, `x` continues the cached positions. With
    /// `probe`, the largest pre-softmax logit (scaled, causal positions only) and the attention
    /// entropy (see [`Probe`]) are pushed to it.
    /// `blocked` (`[batch, 1, seq, keys]`, true: masked) takes away more than the causal mask:
    /// keys of other packed documents.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTable,
        cache: Option<&mut LayerKv>,
        probe: Option<&mut Probe>,
        blocked: Option<&Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh) = (self.n_heads, self.n_kv_heads);
        let q = self.q_proj.forward(x.clone());
        let hd = q.dims()[2] / h;
        let q = q.reshape([b, t, h, hd]);
        let k = self.k_proj.forward(x.clone()).reshape([b, t, kvh, hd]);
        let v = self.v_proj.forward(x).reshape([b, t, kvh, hd]).swap_dims(1, 2);
        let q = match &self.q_norm {
            Some(norm) => norm.forward(q),
            None => q,
        };
        let k = match &self.k_norm {
            Some(norm) => norm.forward(k),
            None => k,
        };
        let q = rope.apply(q.swap_dims(1, 2));
        let k = rope.apply(k.swap_dims(1, 2));

        let (k, v) = match cache {
            Some(cache) => {
                let (k, v) = match cache.kv.take() {
                    Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
                    None => (k, v),
                };
                cache.kv = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let (k, v) = (repeat_kv(k, h / kvh), repeat_kv(v, h / kvh));

        let dropout_active = self.attn_dropout.prob > 0.0 && q.device().is_autodiff();
        let context = if probe.is_none() && !dropout_active && fused_keeps_precision(&q) {
            let options = AttentionModuleOptions { is_causal: true, ..Default::default() };
            let s = k.dims()[2];
            attention(q, k, v, blocked.map(|m| m.clone().expand([b, h, t, s])), None, options)
        } else {
            let s = k.dims()[2];
            let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((hd as f64).powf(-0.5));
            // Query i sits at position s - t + i and sees keys 0..=s - t + i.
            let mask = Tensor::<2, Bool>::tril_mask([t, s], (s - t) as i64, &scores.device());
            let scores = scores.mask_fill(mask.unsqueeze::<4>().expand([b, h, t, s]), f32::NEG_INFINITY);
            let scores = match blocked {
                Some(m) => scores.mask_fill(m.clone().expand([b, h, t, s]), f32::NEG_INFINITY),
                None => scores,
            };
            let max_logit = probe.is_some().then(|| scores.clone().detach().max());
            let probs = softmax(scores, 3);
            if let (Some(probe), Some(max_logit)) = (probe, max_logit) {
                probe.max_attn_logit.push(max_logit);
                probe.attn_entropy.push(entropy(probs.clone().detach()));
            }
            self.attn_dropout.forward(probs).matmul(v)
        };
        self.o_proj.forward(context.swap_dims(1, 2).reshape([b, t, h * hd]))
    }
}

impl LayerKv {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.kv.is_none()
    }
}

/// Whether burn's fused `attention` keeps the precision of `q`'s dtype on `q`'s device. Flex
/// computes it in the tensor's dtype. burn-cubecl (CUDA) autotunes it, for all but short
/// queries, to flash kernels that multiply on f16 fragments whatever the dtype (burn-cubecl
/// 0.22.1 `kernel/attention/tune.rs`), or whose unit variant caps f64 at f32 (cubek-attention
/// 0.3.1 `AttentionElems`). For f32 that costs little: its
/// matmuls run on TF32 there anyway, with f16's 10-bit mantissa; f16's narrower range (±65504)
/// is the difference, and q, k, v and the probabilities sit far inside it. For f64 it would be
/// a silent downgrade, so f64 there takes the materialised path (exact, at O(seq²) memory).
fn fused_keeps_precision(q: &Tensor<4>) -> bool {
    q.dtype() != DType::F64 || q.device() == Device::flex()
}

/// The attention entropy of the least spread-out head: per head, the mean over queries (and the
/// batch) of `−Σ p log p` over the keys a query sees, in nats; then the minimum over heads, `[1]`.
/// Uniform attention over `n` keys has entropy `ln n`; attention on one key has 0. Its collapse
/// towards 0 is the instability Dehghani et al. (2023) and Zhai et al. (2023) describe: the
/// attention logits grow until each query reads a single key.
/// It reads the probabilities the forward pass computed anyway.
fn entropy(probs: Tensor<4>) -> Tensor<1> {
    // Masked keys have p = 0, and 0 · log 0 is NaN: log takes p at least the smallest normal
    // f32, so that they add 0 (a p below 1e-38 adds less than 1e-36).
    let p_log_p = probs.clone() * probs.clamp_min(f32::MIN_POSITIVE).log();
    let per_query = p_log_p.sum_dim(3).neg();
    let [b, h, t, _] = per_query.dims();
    per_query.reshape([b, h, t]).swap_dims(0, 1).reshape([h, b * t]).mean_dim(1).min()
}

/// Query head `i` reads key/value head `i / rep`, as HF's `repeat_kv`.
fn repeat_kv(x: Tensor<4>, rep: usize) -> Tensor<4> {
    if rep == 1 {
        return x;
    }
    let [b, kvh, s, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kvh, rep, s, hd]).reshape([b, kvh * rep, s, hd])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn gqa_maps_query_head_to_kv_head_by_integer_division() {
        let device = Device::flex();
        // 2 kv heads with distinct constant values, 6 query heads -> rep 3.
        let kv = Tensor::<1>::from_floats([10.0, 20.0], &device).reshape([1, 2, 1, 1]).expand([1, 2, 4, 3]);
        let out = repeat_kv(kv, 3);
        let heads: Vec<f32> = out.narrow(2, 0, 1).narrow(3, 0, 1).into_data().try_to_vec().unwrap();
        let expected: Vec<f32> = (0..6).map(|h| [10.0, 20.0][h / 3]).collect();
        assert_eq!(heads, expected);
    }
}
