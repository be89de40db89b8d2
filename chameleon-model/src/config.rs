//! The transformer's shape and every stability switch of the Chameleon paper, in one struct.

use burn::config::Config;

/// Where the RMSNorms of a decoder layer sit.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// Llama / Chameleon-7B: `h = x + attn(norm(x)); out = h + ffn(norm(h))`.
    PreNorm,
    /// Chameleon-34B ("swin" norm in HF): `h = x + norm(attn(x)); out = h + norm(ffn(h))`.
    /// Bounds the growth of the block-output norm.
    Reordered,
}

/// Dimensions and stability switches of a Chameleon decoder-only transformer.
///
/// The switches (`qk_norm`, `norm_placement`, the two dropouts) are exactly the ones the paper
/// ablates; z-loss is a loss term and lives in the training config.
#[derive(Config, Debug, PartialEq)]
pub struct ChameleonConfig {
    /// Tokens in the unified vocabulary: text pieces, image codes and special tokens.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Number of query heads; must divide `d_model`.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention). `None` means `n_heads` (plain MHA).
    #[config(default = "None")]
    pub n_kv_heads: Option<usize>,
    /// Hidden width of the SwiGLU feed-forward. `None` applies the Llama rule:
    /// `2/3 · 4 · d_model`, rounded up to a multiple of `ffn_multiple_of`.
    #[config(default = "None")]
    pub ffn_dim: Option<usize>,
    /// Rounding of the Llama FFN rule.
    #[config(default = 256)]
    pub ffn_multiple_of: usize,
    /// RoPE base frequency.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Longest sequence (prompt plus generation) the model is used with.
    #[config(default = 4096)]
    pub max_seq_len: usize,
    /// Epsilon of the RMSNorms.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// QK-norm: a LayerNorm over head_dim, with a per-head affine of shape [heads, head_dim],
    /// applied to queries and keys before RoPE.
    #[config(default = true)]
    pub qk_norm: bool,
    /// Epsilon of the QK-norm LayerNorm (PyTorch's LayerNorm default, as in HF Chameleon).
    #[config(default = 1e-5)]
    pub qk_norm_eps: f64,
    /// Placement of the RMSNorms in each layer.
    #[config(default = "NormPlacement::PreNorm")]
    pub norm_placement: NormPlacement,
    /// Dropout on each residual branch (attention output and FFN output). No-op at eval.
    #[config(default = 0.0)]
    pub residual_dropout: f64,
    /// Dropout on the attention probabilities. No-op at eval.
    #[config(default = 0.0)]
    pub attention_dropout: f64,
    /// Biases on q/k/v/o projections (HF `attention_bias`; false in the released models).
    #[config(default = false)]
    pub attention_bias: bool,
    /// Biases on the FFN projections (HF `mlp_bias`; false in the released models).
    #[config(default = false)]
    pub mlp_bias: bool,
    /// Standard deviation of the normal initialisation of linear and embedding weights.
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl ChameleonConfig {
    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Hidden width of the feed-forward, explicit or from the Llama rule.
    pub fn ffn_hidden(&self) -> usize {
        self.ffn_dim.unwrap_or_else(|| {
            let hidden = 2 * (4 * self.d_model) / 3;
            let m = self.ffn_multiple_of.max(1);
            hidden.div_ceil(m) * m
        })
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        let (d, hd) = (self.d_model, self.head_dim());
        let kv = self.kv_heads() * hd;
        let ffn = self.ffn_hidden();
        let attn_bias = if self.attention_bias { 2 * d + 2 * kv } else { 0 };
        let mlp_bias = if self.mlp_bias { 2 * ffn + d } else { 0 };
        let qk_norm = if self.qk_norm { 2 * (self.n_heads + self.kv_heads()) * hd } else { 0 };
        let layer = 2 * d * d + 2 * d * kv + 3 * d * ffn + 2 * d + attn_bias + mlp_bias + qk_norm;
        2 * self.vocab_size * d + self.n_layers * layer + d
    }

    /// The largest value each size may take (about 16× Chameleon-34B's), and the most
    /// parameters a model may have: a corrupt or hostile config is refused before anything is
    /// allocated, and no size arithmetic can overflow.
    pub const LIMITS: [(&'static str, usize); 7] = [
        ("vocab_size", 1 << 24),
        ("d_model", 1 << 17),
        ("n_layers", 1 << 10),
        ("ffn_dim", 1 << 19),
        ("ffn_multiple_of", 1 << 19),
        ("max_seq_len", 1 << 22),
        ("parameters", 1 << 40),
    ];

    /// Refuses a model whose weights, plus `extra_copies` more of the same size (gradients and
    /// optimizer moments in training), cannot fit in the host's memory on a CPU device.
    pub fn check_fits(&self, extra_copies: usize, device: &burn::tensor::Device) -> Result<(), String> {
        let bytes = self.num_params() as u128 * 4 * (1 + extra_copies as u128);
        let what = format!("a model of {:.3e} parameters", self.num_params() as f64);
        crate::host_memory::check_fits(bytes, &what, device)
    }

    /// Checks the config for values that cannot build a model, or are beyond
    /// [`ChameleonConfig::LIMITS`]. The message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let limit = |name: &str| Self::LIMITS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).expect("listed");
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("ffn_dim", self.ffn_dim.unwrap_or(0)),
            ("ffn_multiple_of", self.ffn_multiple_of),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v > limit(name) {
                return Err(format!("`{name}` = {v} is beyond this toolkit's limit of {}", limit(name)));
            }
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("max_seq_len", self.max_seq_len),
            ("ffn_multiple_of", self.ffn_multiple_of),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("`{name}` must be at least 1"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(format!("`n_heads` = {} does not divide `d_model` = {}", self.n_heads, self.d_model));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            return Err(format!("`n_kv_heads` = {kv} must be at least 1 and divide `n_heads` = {}", self.n_heads));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!("head_dim = d_model / n_heads = {} must be even for RoPE", self.head_dim()));
        }
        if self.ffn_dim == Some(0) {
            return Err("`ffn_dim` must be at least 1".into());
        }
        if self.num_params() > limit("parameters") {
            return Err(format!(
                "the model would have {:.3e} parameters, beyond this toolkit's limit of {:.3e}",
                self.num_params() as f64,
                limit("parameters") as f64
            ));
        }
        for (name, p) in [("residual_dropout", self.residual_dropout), ("attention_dropout", self.attention_dropout)] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("`{name}` = {p} must lie in [0, 1)"));
            }
        }
        for (name, v) in [
            ("rope_theta", self.rope_theta),
            ("norm_eps", self.norm_eps),
            ("qk_norm_eps", self.qk_norm_eps),
            ("init_std", self.init_std),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("`{name}` = {v} must be a positive number"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_ffn_rule_rounds_up() {
        // 2/3 * 4 * 4096 = 10922.67 -> 11008 with multiple_of 256 (the Llama-7B / Chameleon-7B width).
        let c = ChameleonConfig::new(65536, 4096, 32, 32);
        assert_eq!(c.ffn_hidden(), 11008);
        let c = ChameleonConfig::new(100, 64, 2, 4).with_ffn_multiple_of(16);
        assert_eq!(c.ffn_hidden(), 176);
    }

    #[test]
    fn validate_names_the_field() {
        let c = ChameleonConfig::new(100, 64, 2, 5);
        assert!(c.validate().unwrap_err().contains("n_heads"));
        let c = ChameleonConfig::new(100, 64, 2, 4).with_n_kv_heads(Some(3));
        assert!(c.validate().unwrap_err().contains("n_kv_heads"));
        let c = ChameleonConfig::new(100, 64, 2, 4).with_residual_dropout(1.5);
        assert!(c.validate().unwrap_err().contains("residual_dropout"));
        assert!(ChameleonConfig::new(100, 64, 2, 4).validate().is_ok());
    }

    #[test]
    fn sizes_that_would_exhaust_memory_are_refused_before_allocation() {
        // Each of these aborted on allocation (config.json, or an experiment's [model]).
        let cases = [
            (ChameleonConfig::new(100, 1_000_000_000, 2, 4), "d_model"),
            (ChameleonConfig::new(100, 64, 1_000_000_000, 4), "n_layers"),
            (ChameleonConfig::new(100, 64, 1_000_000_000_000, 4), "n_layers"),
            (ChameleonConfig::new(1 << 40, 64, 2, 4), "vocab_size"),
            (ChameleonConfig::new(100, 64, 2, 4).with_ffn_dim(Some(usize::MAX)), "ffn_dim"),
            (ChameleonConfig::new(100, 64, 2, 4).with_ffn_multiple_of(usize::MAX / 2), "ffn_multiple_of"),
            (ChameleonConfig::new(1 << 24, 1 << 17, 1 << 10, 1 << 10), "parameters"),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(field) && err.contains("limit"), "{field}: {err}");
        }
    }

    #[test]
    fn param_count_of_7b_shape() {
        // Chameleon-7B: 65536 vocab, 4096 wide, 32 layers, QK-norm. About 7.0e9 parameters.
        let c = ChameleonConfig::new(65536, 4096, 32, 32);
        let n = c.num_params() as f64;
        assert!((6.9e9..7.2e9).contains(&n), "{n}");
    }
}
