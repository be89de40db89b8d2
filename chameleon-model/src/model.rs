//! The Chameleon decoder-only transformer over the unified token stream.

use burn::module::Module;
use burn::nn::{DropoutConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor};

use crate::attention::{Attention, LayerKv};
use crate::config::ChameleonConfig;
use crate::layer::{DecoderLayer, Probe};
use crate::mlp::Mlp;
use crate::norm::{HeadLayerNorm, RmsNorm};
use crate::precision::cast_to;
use crate::rope::RopeTable;

/// The transformer. Field names follow the HF checkpoint, so import is a prefix away:
/// `model.embed_tokens`, `model.layers.N`, `model.norm`, `lm_head`.
#[derive(Module, Debug)]
pub struct Chameleon {
    /// Token embedding, `[vocab, d_model]`.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
    /// Output projection to the vocabulary (untied).
    pub lm_head: Linear,
    /// The config the model was built from.
    #[module(skip)]
    pub config: ChameleonConfig,
    /// The dtype of the matmuls where it is not the residual stream's: mixed precision keeps the
    /// embedding table and the residual stream f32 (see `Precision::compute_copy`).
    #[module(skip)]
    pub compute_dtype: Option<FloatDType>,
}

/// Stability probes of one forward pass (see [`Chameleon::forward_diagnosed`]).
#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// Largest pre-softmax attention logit of each layer, `[layers]` (detached).
    pub max_attn_logit: Tensor<1>,
    /// Attention entropy of each layer's least spread-out head (nats; the mean over queries),
    /// `[layers]` (detached). It collapses towards 0 as the attention logits grow.
    pub attn_entropy: Tensor<1>,
    /// Root mean square of each layer's output, `[layers]` (detached).
    pub output_rms: Tensor<1>,
    /// `log Z = logsumexp(logits)` at every position, `[batch, seq]` (attached, for z-loss).
    pub log_z: Tensor<2>,
}

/// Keys and values of every layer, for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
}

impl KvCache {
    /// An empty cache for a model.
    pub fn new(model: &Chameleon) -> Self {
        Self { layers: vec![LayerKv::default(); model.layers.len()] }
    }

    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ChameleonConfig {
    /// A freshly initialised model: normal(0, `init_std`) weights, unit norms. Panics on an
    /// invalid config; call [`ChameleonConfig::validate`] first on user input.
    pub fn init(&self, device: &Device) -> Chameleon {
        if let Err(e) = self.validate() {
            panic!("invalid ChameleonConfig: {e}");
        }
        let init = Initializer::Normal { mean: 0.0, std: self.init_std };
        let (d, hd, h, kvh) = (self.d_model, self.head_dim(), self.n_heads, self.kv_heads());
        let linear = |i: usize, o: usize, bias: bool| {
            LinearConfig::new(i, o).with_bias(bias).with_initializer(init.clone()).init(device)
        };
        let layers = (0..self.n_layers)
            .map(|_| DecoderLayer {
                self_attn: Attention {
                    q_proj: linear(d, h * hd, self.attention_bias),
                    k_proj: linear(d, kvh * hd, self.attention_bias),
                    v_proj: linear(d, kvh * hd, self.attention_bias),
                    o_proj: linear(h * hd, d, self.attention_bias),
                    q_norm: self.qk_norm.then(|| HeadLayerNorm::new(h, hd, self.qk_norm_eps, device)),
                    k_norm: self.qk_norm.then(|| HeadLayerNorm::new(kvh, hd, self.qk_norm_eps, device)),
                    attn_dropout: DropoutConfig::new(self.attention_dropout).init(),
                    n_heads: h,
                    n_kv_heads: kvh,
                },
                mlp: Mlp {
                    gate_proj: linear(d, self.ffn_hidden(), self.mlp_bias),
                    up_proj: linear(d, self.ffn_hidden(), self.mlp_bias),
                    down_proj: linear(self.ffn_hidden(), d, self.mlp_bias),
                },
                input_layernorm: RmsNorm::new(d, self.norm_eps, device),
                post_attention_layernorm: RmsNorm::new(d, self.norm_eps, device),
                resid_dropout: DropoutConfig::new(self.residual_dropout).init(),
                norm_placement: self.norm_placement,
            })
            .collect();
        Chameleon {
            embed_tokens: EmbeddingConfig::new(self.vocab_size, d).with_initializer(init.clone()).init(device),
            layers,
            norm: RmsNorm::new(d, self.norm_eps, device),
            lm_head: linear(d, self.vocab_size, false),
            config: self.clone(),
            compute_dtype: None,
        }
    }
}

impl Chameleon {
    /// Logits `[batch, seq, vocab]` for tokens `[batch, seq]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.run(tokens, None, None, None)
    }

    /// Logits plus the stability probes. Costs one extra reduction per layer and the explicit
    /// (unfused) attention path.
    pub fn forward_diagnosed(&self, tokens: Tensor<2, Int>) -> (Tensor<3>, Diagnostics) {
        self.diagnosed(tokens, None)
    }

    /// Logits of packed rows, and with `probe` the stability probes. With `documents`
    /// (`[batch, seq]`, an id per token, equal within one packed document), a token attends
    /// only to earlier tokens of its own document, so packed documents never see each other.
    /// RoPE is relative, so a document's logits do not depend on where in the row it sits.
    pub fn forward_packed(
        &self,
        tokens: Tensor<2, Int>,
        documents: Option<Tensor<2, Int>>,
        probe: bool,
    ) -> (Tensor<3>, Option<Diagnostics>) {
        let blocked = documents.map(|d| {
            let [b, t] = d.dims();
            let queries = d.clone().unsqueeze_dim::<3>(2).expand([b, t, t]);
            let keys = d.unsqueeze_dim::<3>(1).expand([b, t, t]);
            queries.not_equal(keys).unsqueeze_dim::<4>(1)
        });
        if probe {
            let (logits, diagnostics) = self.diagnosed(tokens, blocked.as_ref());
            (logits, Some(diagnostics))
        } else {
            (self.run(tokens, None, None, blocked.as_ref()), None)
        }
    }

    fn diagnosed(&self, tokens: Tensor<2, Int>, blocked: Option<&Tensor<4, Bool>>) -> (Tensor<3>, Diagnostics) {
        let mut probe = Probe::default();
        let logits = self.run(tokens, None, Some(&mut probe), blocked);
        let diagnostics = Diagnostics {
            max_attn_logit: Tensor::cat(probe.max_attn_logit, 0),
            attn_entropy: Tensor::cat(probe.attn_entropy, 0),
            output_rms: Tensor::cat(probe.output_rms, 0),
            log_z: log_sum_exp(logits.clone().cast(FloatDType::F32)),
        };
        (logits, diagnostics)
    }

    /// Logits for `tokens`, which continue the positions already in `cache`; the cache grows.
    pub fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        self.run(tokens, Some(cache), None, None)
    }

    fn run(
        &self,
        tokens: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
        mut probe: Option<&mut Probe>,
        blocked: Option<&Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let rope = RopeTable::new(self.config.rope_theta, self.config.head_dim(), start, t, &tokens.device());
        // The residual stream takes the embedding table's dtype (f32 under mixed precision).
        let mut x = self.embed_tokens.forward(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &rope, self.compute_dtype, layer_cache, probe.as_deref_mut(), blocked);
        }
        self.lm_head.forward(cast_to(self.norm.forward(x), self.compute_dtype))
    }
}

/// `log Σ exp(x)` over the last dimension, computed stably: `m + log Σ exp(x − m)`.
pub fn log_sum_exp(logits: Tensor<3>) -> Tensor<2> {
    let max = logits.clone().max_dim(2).detach();
    let sum = (logits - max.clone()).exp().sum_dim(2);
    (max + sum.log()).squeeze_dim(2)
}
