//! The HF Chameleon layout: `config.json` (transformers 4.x and 5.x) and the state-dict key map.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use burn::module::Param;
use burn::nn::{DropoutConfig, Embedding, Linear};
use burn::tensor::{Device, Tensor};
use serde_json::{Value, json};

use super::CheckpointError;
use super::safetensors_files::{NamedTensor, SafetensorsFiles, WeightDtype, write_atomic, write_checkpoint_weights};
use crate::attention::Attention;
use crate::config::{ChameleonConfig, NormPlacement};
use crate::layer::DecoderLayer;
use crate::mlp::Mlp;
use crate::model::Chameleon;
use crate::norm::{HeadLayerNorm, RmsNorm};
use crate::vocab::{VocabLayout, names};

/// A loaded HF checkpoint.
#[derive(Debug)]
pub struct HfCheckpoint {
    /// The language model.
    pub model: Chameleon,
    /// The vocabulary layout from `vocabulary_map`, when config.json has one.
    pub vocab: Option<VocabLayout>,
    /// config.json as read; export carries its other fields (such as `vq_config`) through.
    pub hf_config: Value,
    /// The image tokenizer's tensors (`model.vqmodel.*`), kept as stored so that an export
    /// carries them through unchanged.
    pub vq_tensors: Vec<NamedTensor>,
}

/// How to write a checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Element type of the weights.
    pub dtype: WeightDtype,
    /// Shard the weights into files of at most this many bytes (`None`: one file).
    pub max_shard_bytes: Option<usize>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self { dtype: WeightDtype::F32, max_shard_bytes: None }
    }
}

/// Reads `config.json` of an HF Chameleon checkpoint (transformers 4.x or 5.x).
pub fn read_hf_config(path: &Path) -> Result<(ChameleonConfig, Option<VocabLayout>, Value), CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::io(path, e))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::invalid(path, format!("not valid JSON: {e}")))?;
    let bad = |m: String| CheckpointError::invalid(path, m);
    let uint = |key: &str| -> Result<usize, CheckpointError> {
        json.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("`{key}` is missing or not a non-negative integer")))
    };
    let float_or = |key: &str, default: f64| -> Result<f64, CheckpointError> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| bad(format!("`{key}` is not a number"))),
        }
    };
    let bool_or = |key: &str, default: bool| -> Result<bool, CheckpointError> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| bad(format!("`{key}` is not a boolean"))),
        }
    };
    if let Some(t) = json.get("model_type").and_then(Value::as_str)
        && t != "chameleon"
    {
        return Err(bad(format!("`model_type` is {t:?}, not \"chameleon\"")));
    }
    if let Some(act) = json.get("hidden_act").and_then(Value::as_str)
        && act != "silu"
    {
        return Err(bad(format!("`hidden_act` is {act:?}; Chameleon uses \"silu\"")));
    }
    // transformers 5.x: rope_parameters {rope_type, rope_theta}; 4.x: rope_theta + rope_scaling.
    let rope_theta = match json.get("rope_parameters") {
        Some(Value::Object(p)) => {
            if let Some(kind) = p.get("rope_type").and_then(Value::as_str)
                && kind != "default"
            {
                return Err(bad(format!(
                    "`rope_parameters.rope_type` is {kind:?}; only \"default\" RoPE is supported"
                )));
            }
            p.get("rope_theta")
                .and_then(Value::as_f64)
                .ok_or_else(|| bad("`rope_parameters.rope_theta` is missing or not a number".into()))?
        }
        _ => {
            if let Some(s) = json.get("rope_scaling")
                && !s.is_null()
            {
                return Err(bad(format!("`rope_scaling` is {s}; only unscaled RoPE is supported")));
            }
            float_or("rope_theta", 10000.0)?
        }
    };
    let heads = uint("num_attention_heads")?;
    let kv_heads = match json.get("num_key_value_heads") {
        None | Some(Value::Null) => heads,
        Some(_) => uint("num_key_value_heads")?,
    };
    let config = ChameleonConfig::new(uint("vocab_size")?, uint("hidden_size")?, uint("num_hidden_layers")?, heads)
        .with_n_kv_heads(Some(kv_heads))
        .with_ffn_dim(Some(uint("intermediate_size")?))
        .with_rope_theta(rope_theta)
        .with_max_seq_len(json.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(4096) as usize)
        .with_norm_eps(float_or("rms_norm_eps", 1e-5)?)
        .with_qk_norm(bool_or("qk_norm", true)?)
        .with_norm_placement(if bool_or("swin_norm", false)? {
            NormPlacement::Reordered
        } else {
            NormPlacement::PreNorm
        })
        .with_attention_dropout(float_or("attention_dropout", 0.0)?)
        .with_attention_bias(bool_or("attention_bias", false)?)
        .with_mlp_bias(bool_or("mlp_bias", false)?)
        .with_init_std(float_or("initializer_range", 0.02)?);
    config.validate().map_err(|m| bad(format!("config does not describe a valid model: {m}")))?;
    let vocab = match json.get("vocabulary_map") {
        None | Some(Value::Null) => None,
        Some(map) => {
            let mut map: BTreeMap<String, u32> = serde_json::from_value(map.clone())
                .map_err(|e| bad(format!("`vocabulary_map` is not a map of names to token ids: {e}")))?;
            // Where the map does not name them, bos, eos and pad are config.json's token ids.
            for (name, key) in
                [(names::BOS, "bos_token_id"), (names::EOS, "eos_token_id"), (names::PAD, "pad_token_id")]
            {
                if let Some(id) = json.get(key).and_then(Value::as_u64).and_then(|id| u32::try_from(id).ok())
                    && !map.contains_key(name)
                    && !map.iter().any(|(n, &v)| v == id && (n.starts_with(names::IMAGE_PREFIX) || n.starts_with('<')))
                {
                    map.insert(name.to_string(), id);
                }
            }
            Some(
                VocabLayout::from_vocabulary_map(&map, config.vocab_size)
                    .map_err(|m| bad(format!("vocabulary_map: {m}")))?,
            )
        }
    };
    Ok((config, vocab, json))
}

/// Loads an HF-format Chameleon checkpoint directory: `config.json` plus `model.safetensors` or
/// a sharded `model.safetensors.index.json`, in f32, f16 or bf16 (converted to f32).
///
/// The VQ-VAE tensors (`model.vqmodel.*`) are left for the image tokenizer to load.
pub fn load_hf_checkpoint(dir: &Path, device: &Device) -> Result<HfCheckpoint, CheckpointError> {
    let (config, vocab, hf_config) = read_hf_config(&dir.join("config.json"))?;
    let files = SafetensorsFiles::open_dir(dir)?;
    check_sizes_against_weights(&config, &files, &dir.join("config.json"))?;
    config.check_fits(0, device).map_err(|m| CheckpointError::invalid(dir, m))?;
    let tie = hf_config.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false);
    let loader = Loader { files: &files, device, used: RefCell::new(HashSet::new()) };
    let model = loader.model(&config, tie)?;
    let used = loader.used.into_inner();
    let unexpected: Vec<&str> = files
        .names()
        .into_iter()
        .filter(|n| !used.contains(*n) && !n.starts_with("model.vqmodel.") && !n.ends_with("rotary_emb.inv_freq"))
        .collect();
    if !unexpected.is_empty() {
        let shown: Vec<&str> = unexpected.iter().take(5).copied().collect();
        return Err(CheckpointError::invalid(
            files.origin(),
            format!(
                "{} tensor(s) have no place in the model that config.json describes, e.g. {shown:?}; \
                 does config.json (num_hidden_layers, qk_norm, biases) disagree with the weights?",
                unexpected.len()
            ),
        ));
    }
    let mut vq_tensors = Vec::new();
    for name in files.names().into_iter().filter(|n| n.starts_with("model.vqmodel.")) {
        let shape = files.shape(name).expect("listed").to_vec();
        vq_tensors.push(NamedTensor { name: name.to_string(), values: files.read_f32(name, &shape)?, shape });
    }
    Ok(HfCheckpoint { model, vocab, hf_config, vq_tensors })
}

/// Compares the sizes config.json declares with the weights present, before anything the size
/// of the model is allocated: the number of layers and the embedding table's shape.
fn check_sizes_against_weights(
    config: &ChameleonConfig,
    files: &SafetensorsFiles,
    config_path: &Path,
) -> Result<(), CheckpointError> {
    let layers = files
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |last| last.saturating_add(1));
    if layers != config.n_layers {
        return Err(CheckpointError::invalid(
            config_path,
            format!("`num_hidden_layers` = {}, but the weights hold {layers} layer(s)", config.n_layers),
        ));
    }
    let embed = "model.embed_tokens.weight";
    let want = [config.vocab_size, config.d_model];
    match files.shape(embed) {
        Some(shape) if shape != want => Err(CheckpointError::invalid(
            config_path,
            format!(
                "`vocab_size` = {} and `hidden_size` = {} ask for `{embed}` of shape {want:?}, but the weights hold {shape:?}",
                config.vocab_size, config.d_model
            ),
        )),
        _ => Ok(()),
    }
}

struct Loader<'a> {
    files: &'a SafetensorsFiles,
    device: &'a Device,
    used: RefCell<HashSet<String>>,
}

impl Loader<'_> {
    fn get<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>, CheckpointError> {
        let t = self.files.tensor(name, shape, self.device)?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>, CheckpointError> {
        self.get(name, shape).map(Param::from_tensor)
    }

    /// PyTorch `[out, in]` -> burn `[in, out]`.
    fn linear(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear, CheckpointError> {
        let weight = self.get(&format!("{prefix}.weight"), [d_out, d_in])?.transpose();
        let bias = match bias {
            true => Some(self.param(&format!("{prefix}.bias"), [d_out])?),
            false => None,
        };
        Ok(Linear { weight: Param::from_tensor(weight), bias })
    }

    fn rms(&self, prefix: &str, d: usize, eps: f64) -> Result<RmsNorm, CheckpointError> {
        Ok(RmsNorm { weight: self.param(&format!("{prefix}.weight"), [d])?, eps })
    }

    fn head_norm(&self, prefix: &str, heads: usize, hd: usize, eps: f64) -> Result<HeadLayerNorm, CheckpointError> {
        Ok(HeadLayerNorm {
            weight: self.param(&format!("{prefix}.weight"), [heads, hd])?,
            bias: self.param(&format!("{prefix}.bias"), [heads, hd])?,
            eps,
        })
    }

    fn model(&self, c: &ChameleonConfig, tie: bool) -> Result<Chameleon, CheckpointError> {
        let (d, hd, h, kvh, ffn) = (c.d_model, c.head_dim(), c.n_heads, c.kv_heads(), c.ffn_hidden());
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj: self.linear(&format!("{a}.q_proj"), d, h * hd, c.attention_bias)?,
                    k_proj: self.linear(&format!("{a}.k_proj"), d, kvh * hd, c.attention_bias)?,
                    v_proj: self.linear(&format!("{a}.v_proj"), d, kvh * hd, c.attention_bias)?,
                    o_proj: self.linear(&format!("{a}.o_proj"), h * hd, d, c.attention_bias)?,
                    q_norm: c
                        .qk_norm
                        .then(|| self.head_norm(&format!("{a}.q_norm"), h, hd, c.qk_norm_eps))
                        .transpose()?,
                    k_norm: c
                        .qk_norm
                        .then(|| self.head_norm(&format!("{a}.k_norm"), kvh, hd, c.qk_norm_eps))
                        .transpose()?,
                    attn_dropout: DropoutConfig::new(c.attention_dropout).init(),
                    n_heads: h,
                    n_kv_heads: kvh,
                },
                mlp: Mlp {
                    gate_proj: self.linear(&format!("{p}.mlp.gate_proj"), d, ffn, c.mlp_bias)?,
                    up_proj: self.linear(&format!("{p}.mlp.up_proj"), d, ffn, c.mlp_bias)?,
                    down_proj: self.linear(&format!("{p}.mlp.down_proj"), ffn, d, c.mlp_bias)?,
                },
                input_layernorm: self.rms(&format!("{p}.input_layernorm"), d, c.norm_eps)?,
                post_attention_layernorm: self.rms(&format!("{p}.post_attention_layernorm"), d, c.norm_eps)?,
                resid_dropout: DropoutConfig::new(c.residual_dropout).init(),
                norm_placement: c.norm_placement,
            });
        }
        let embedding = self.get("model.embed_tokens.weight", [c.vocab_size, d])?;
        let lm_head = if tie && !self.files.contains("lm_head.weight") {
            Linear { weight: Param::from_tensor(embedding.clone().transpose()), bias: None }
        } else {
            self.linear("lm_head", d, c.vocab_size, false)?
        };
        Ok(Chameleon {
            embed_tokens: Embedding { weight: Param::from_tensor(embedding) },
            layers,
            norm: self.rms("model.norm", d, c.norm_eps)?,
            lm_head,
            config: c.clone(),
            compute_dtype: None,
        })
    }
}

fn named<const D: usize>(name: String, t: Tensor<D>) -> NamedTensor {
    let shape = t.dims().to_vec();
    NamedTensor { name, shape, values: t.into_data().try_to_vec::<f32>().expect("f32 weights") }
}

/// PyTorch `[out, in]` from burn `[in, out]`.
fn push_linear(out: &mut Vec<NamedTensor>, prefix: &str, l: &Linear) {
    out.push(named(format!("{prefix}.weight"), l.weight.val().transpose()));
    if let Some(b) = &l.bias {
        out.push(named(format!("{prefix}.bias"), b.val()));
    }
}

/// The state dict of a model under HF names, in PyTorch layout.
fn state_dict(model: &Chameleon) -> Vec<NamedTensor> {
    let mut out = vec![named("model.embed_tokens.weight".into(), model.embed_tokens.weight.val())];
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &layer.self_attn;
        for (name, l) in [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("o_proj", &a.o_proj)] {
            push_linear(&mut out, &format!("{p}.self_attn.{name}"), l);
        }
        for (name, norm) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
            if let Some(norm) = norm {
                out.push(named(format!("{p}.self_attn.{name}.weight"), norm.weight.val()));
                out.push(named(format!("{p}.self_attn.{name}.bias"), norm.bias.val()));
            }
        }
        let m = &layer.mlp;
        for (name, l) in [("gate_proj", &m.gate_proj), ("up_proj", &m.up_proj), ("down_proj", &m.down_proj)] {
            push_linear(&mut out, &format!("{p}.mlp.{name}"), l);
        }
        out.push(named(format!("{p}.input_layernorm.weight"), layer.input_layernorm.weight.val()));
        out.push(named(format!("{p}.post_attention_layernorm.weight"), layer.post_attention_layernorm.weight.val()));
    }
    out.push(named("model.norm.weight".into(), model.norm.weight.val()));
    push_linear(&mut out, "lm_head", &model.lm_head);
    out
}

/// Writes `model` as an HF Chameleon checkpoint directory that transformers loads with
/// `ChameleonForConditionalGeneration.from_pretrained`. `base_config` (the imported config.json)
/// supplies fields this toolkit does not own, such as `vq_config`; `extra` tensors (such as the
/// imported `vq_tensors`) are written beside the model's.
pub fn save_hf_checkpoint(
    model: &Chameleon,
    vocab: &VocabLayout,
    base_config: Option<&Value>,
    extra: &[NamedTensor],
    dir: &Path,
    options: ExportOptions,
) -> Result<(), CheckpointError> {
    let c = &model.config;
    if vocab.vocab_size() != c.vocab_size {
        return Err(CheckpointError::invalid(
            dir,
            format!("vocabulary layout has {} ids but the model has {}", vocab.vocab_size(), c.vocab_size),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
    let mut config = match base_config {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let dtype = match options.dtype {
        WeightDtype::F32 => "float32",
        WeightDtype::F16 => "float16",
        WeightDtype::BF16 => "bfloat16",
    };
    let s = vocab.special();
    let id = |t: u32| if t == crate::vocab::SpecialTokens::ABSENT { Value::Null } else { json!(t) };
    // The base config's vocabulary_map keeps its real token names when it describes this very
    // layout; otherwise names are made from the layout.
    let names = match config.get("vocabulary_map").map(|m| serde_json::from_value::<BTreeMap<String, u32>>(m.clone())) {
        Some(Ok(map)) if VocabLayout::from_vocabulary_map(&map, c.vocab_size).as_ref() == Ok(vocab) => json!(map),
        _ => json!(vocab.to_vocabulary_map()),
    };
    let fields = json!({
        "architectures": ["ChameleonForConditionalGeneration"],
        "model_type": "chameleon",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_hidden(),
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads(),
        "hidden_act": "silu",
        "max_position_embeddings": c.max_seq_len,
        "initializer_range": c.init_std,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": { "rope_type": "default", "rope_theta": c.rope_theta },
        "attention_bias": c.attention_bias,
        "mlp_bias": c.mlp_bias,
        "attention_dropout": c.attention_dropout,
        "swin_norm": c.norm_placement == NormPlacement::Reordered,
        "qk_norm": c.qk_norm,
        "tie_word_embeddings": false,
        "bos_token_id": id(s.bos),
        "eos_token_id": id(s.eos),
        "pad_token_id": id(s.pad),
        "dtype": dtype,
        "torch_dtype": dtype,
        "vocabulary_map": names,
    });
    let obj = config.as_object_mut().expect("object");
    obj.remove("rope_scaling");
    for (k, v) in fields.as_object().expect("object") {
        obj.insert(k.clone(), v.clone());
    }
    if c.qk_norm {
        obj.remove("qk_norm");
    } else {
        tracing::warn!(
            "exporting a model without QK-norm: HF transformers always applies QK-norm and cannot load it faithfully"
        );
    }
    let mut tensors = state_dict(model);
    tensors.extend(extra.iter().cloned());
    write_checkpoint_weights(dir, &tensors, options.dtype, options.max_shard_bytes)?;
    let text = serde_json::to_string_pretty(&config).expect("JSON");
    write_atomic(&dir.join("config.json"), |tmp| std::fs::write(tmp, &text))
}
