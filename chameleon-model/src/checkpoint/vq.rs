//! Import and export of the VQ-VAE tokenizer in HF's and Meta's naming.
//!
//! The module tree of [`VqVae`] mirrors the state-dict names, so loading walks the module and
//! asks the files for each parameter by its path (burn's GroupNorm `gamma`/`beta` are
//! `weight`/`bias` in PyTorch):
//! - HF Chameleon checkpoint: `config.json` (`vq_config`) + `model.vqmodel.{encoder, quant_conv,
//!   quantize, post_quant_conv}.*`; HF has no decoder.
//! - A decoder file in Meta's naming: `decoder.*`, with or without the `model.vqmodel.` prefix
//!   (e.g. Meta's `vqgan.ckpt` converted to safetensors, see the README).
//! - Our own tokenizers: `vq_config.json` + `vqgan.safetensors` with every tensor, unprefixed.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Tensor};
use serde_json::{Value, json};

use super::CheckpointError;
use super::safetensors_files::{NamedTensor, SafetensorsFiles, WeightDtype, write_atomic, write_checkpoint_weights};
use crate::vq::{VqConfig, VqVae};

/// File of our own tokenizer's config.
pub const VQ_CONFIG_FILE: &str = "vq_config.json";
/// File of our own tokenizer's weights.
pub const VQ_WEIGHTS_FILE: &str = "vqgan.safetensors";
const HF_PREFIX: &str = "model.vqmodel.";

/// Reads a VQ config in HF's `vq_config` naming (used by config.json and `vq_config.json`).
fn parse_vq_config(json: &Value, path: &Path) -> Result<VqConfig, CheckpointError> {
    let bad = |m: String| CheckpointError::invalid(path, m);
    let uint = |key: &str| -> Result<usize, CheckpointError> {
        json.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("vq_config `{key}` is missing or not a non-negative integer")))
    };
    let list = |key: &str| -> Result<Vec<usize>, CheckpointError> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| bad(format!("vq_config `{key}` is not a list of non-negative integers"))),
        }
    };
    if json.get("double_latent").and_then(Value::as_bool) == Some(true) {
        return Err(bad("vq_config `double_latent` = true is not supported (Chameleon uses false)".into()));
    }
    if let Some(t) = json.get("attn_type").and_then(Value::as_str)
        && t != "vanilla"
    {
        return Err(bad(format!("vq_config `attn_type` = {t:?}; only \"vanilla\" is supported")));
    }
    let config = VqConfig::new()
        .with_resolution(uint("resolution")?)
        .with_in_channels(uint("in_channels")?)
        .with_base_channels(uint("base_channels")?)
        .with_channel_multiplier(list("channel_multiplier")?)
        .with_num_res_blocks(uint("num_res_blocks")?)
        .with_attn_resolutions(list("attn_resolutions")?)
        .with_latent_channels(uint("latent_channels")?)
        .with_embed_dim(uint("embed_dim")?)
        .with_num_embeddings(uint("num_embeddings")?)
        .with_beta(json.get("beta").and_then(Value::as_f64).unwrap_or(0.25));
    config.validate().map_err(|m| bad(format!("vq_config does not describe a valid tokenizer: {m}")))?;
    Ok(config)
}

/// A tokenizer's config in HF's `vq_config` naming, as config.json and `vq_config.json` hold it.
pub fn vq_config_json(c: &VqConfig) -> Value {
    json!({
        "resolution": c.resolution,
        "in_channels": c.in_channels,
        "base_channels": c.base_channels,
        "channel_multiplier": c.channel_multiplier,
        "num_res_blocks": c.num_res_blocks,
        "attn_resolutions": c.attn_resolutions,
        "latent_channels": c.latent_channels,
        "embed_dim": c.embed_dim,
        "num_embeddings": c.num_embeddings,
        "double_latent": false,
        "attn_type": "vanilla",
        "dropout": 0.0,
        "beta": c.beta,
    })
}

/// Loads a VQ-VAE tokenizer from a directory: our own (`vq_config.json` + `vqgan.safetensors`)
/// or an HF Chameleon checkpoint (`config.json` with `vq_config`, `model.vqmodel.*`). A decoder
/// in Meta's naming can come from `decoder_file`; it replaces any decoder in the directory.
pub fn load_vq_checkpoint(dir: &Path, decoder_file: Option<&Path>, device: &Device) -> Result<VqVae, CheckpointError> {
    let ours = dir.join(VQ_CONFIG_FILE);
    let (config, files, prefix) = if ours.is_file() {
        super::checksums::verify(dir).map_err(|d| CheckpointError::invalid(&d.file, d.reason))?;
        let json = read_json(&ours)?;
        let config = parse_vq_config(&json, &ours)?;
        (config, SafetensorsFiles::open_file(&dir.join(VQ_WEIGHTS_FILE))?, "")
    } else {
        let path = dir.join("config.json");
        let json = read_json(&path)?;
        let vq = json.get("vq_config").ok_or_else(|| {
            CheckpointError::invalid(&path, format!("no `vq_config` here, and no {VQ_CONFIG_FILE} beside it"))
        })?;
        (parse_vq_config(vq, &path)?, SafetensorsFiles::open_dir(dir)?, HF_PREFIX)
    };
    let needed = config.params_bound() * 4;
    crate::host_memory::check_fits(needed, "this tokenizer (by its parameter bound)", device)
        .map_err(|m| CheckpointError::invalid(dir, m))?;
    let mut model = config.init(device);
    let fresh_decoder = model.decoder.take().expect("init builds a decoder");
    let (mut model, mut used) = load_into(model, &files, prefix, device)?;
    let inline_decoder = format!("{prefix}decoder.");
    model.decoder = match decoder_file {
        Some(file) => {
            let files = SafetensorsFiles::open_file(file)?;
            let prefix = ["decoder.", "model.vqmodel.decoder."]
                .into_iter()
                .find(|p| files.contains(&format!("{p}conv_in.weight")))
                .ok_or_else(|| {
                    CheckpointError::invalid(
                        file,
                        "holds no `decoder.conv_in.weight` (with or without `model.vqmodel.`)",
                    )
                })?;
            let (decoder, used) = load_into(fresh_decoder, &files, prefix, device)?;
            refuse_unused(&files, prefix, &used)?;
            Some(decoder)
        }
        None if files.contains(&format!("{inline_decoder}conv_in.weight")) => {
            let (decoder, used_by_decoder) = load_into(fresh_decoder, &files, &inline_decoder, device)?;
            used.extend(used_by_decoder);
            Some(decoder)
        }
        None => None,
    };
    if decoder_file.is_some() {
        // A decoder file replaces any decoder in the directory; those tensors are left on purpose.
        used.extend(files.names().into_iter().filter(|n| n.starts_with(&inline_decoder)).map(String::from));
    }
    refuse_unused(&files, prefix, &used)?;
    Ok(model)
}

/// Tensors under `prefix` that the config has no place for mean the config and weights disagree.
fn refuse_unused(files: &SafetensorsFiles, prefix: &str, used: &HashSet<String>) -> Result<(), CheckpointError> {
    let unused: Vec<&str> = files.names().into_iter().filter(|n| n.starts_with(prefix) && !used.contains(*n)).collect();
    if unused.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = unused.iter().take(5).copied().collect();
    Err(CheckpointError::invalid(
        files.origin(),
        format!(
            "{} tensor(s) have no place in the tokenizer that the config describes, e.g. {shown:?}; \
             do num_res_blocks, channel_multiplier or attn_resolutions disagree with the weights?",
            unused.len()
        ),
    ))
}

/// Writes a tokenizer as `vq_config.json` + `vqgan.safetensors` (Meta's naming, unprefixed).
pub fn save_vq_checkpoint(model: &VqVae, dir: &Path) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
    let mut collector = Collector { path: Vec::new(), out: Vec::new() };
    model.visit(&mut collector);
    let weights = dir.join(VQ_WEIGHTS_FILE);
    let tmp_dir = dir.join(".vq-write");
    std::fs::create_dir_all(&tmp_dir).map_err(|e| CheckpointError::io(&tmp_dir, e))?;
    write_checkpoint_weights(&tmp_dir, &collector.out, WeightDtype::F32, None)?;
    std::fs::rename(tmp_dir.join(super::SINGLE_FILE), &weights).map_err(|e| CheckpointError::io(&weights, e))?;
    let _ = std::fs::remove_dir(&tmp_dir);
    let text = serde_json::to_string_pretty(&vq_config_json(&model.config)).expect("JSON");
    write_atomic(&dir.join(VQ_CONFIG_FILE), |tmp| std::fs::write(tmp, &text))?;
    super::checksums::write(dir).map_err(|m| CheckpointError::invalid(dir, m))
}

/// Every tensor of a tokenizer under HF's names (`model.vqmodel.*`), for an HF checkpoint's
/// weights. The decoder, which HF's Chameleon lacks, is included; this toolkit's loader reads it
/// back, and transformers reports it as unused.
pub fn hf_vq_tensors(model: &VqVae) -> Vec<NamedTensor> {
    let mut collector = Collector { path: Vec::new(), out: Vec::new() };
    model.visit(&mut collector);
    for t in &mut collector.out {
        t.name = format!("{HF_PREFIX}{}", t.name);
    }
    collector.out
}

fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::invalid(path, format!("not valid JSON: {e}")))
}

/// PyTorch name of a parameter at a module path.
fn torch_name(path: &[String]) -> String {
    let mut parts: Vec<&str> = path.iter().map(String::as_str).collect();
    if let Some(last) = parts.last_mut() {
        *last = match *last {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        };
    }
    parts.join(".")
}

/// Replaces every parameter of `module` with the tensor of the same name under `prefix`.
fn load_into<M: Module>(
    module: M,
    files: &SafetensorsFiles,
    prefix: &str,
    device: &Device,
) -> Result<(M, HashSet<String>), CheckpointError> {
    let mut loader = Loader { files, prefix, device, path: Vec::new(), error: None, used: RefCell::default() };
    let module = module.map(&mut loader);
    match loader.error {
        Some(e) => Err(e),
        None => Ok((module, loader.used.into_inner())),
    }
}

struct Loader<'a> {
    files: &'a SafetensorsFiles,
    prefix: &'a str,
    device: &'a Device,
    path: Vec<String>,
    error: Option<CheckpointError>,
    used: RefCell<HashSet<String>>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let name = format!("{}{}", self.prefix, torch_name(&self.path));
        let shape: [usize; D] = param.lazy_shape().dims();
        match self.files.tensor::<D>(&name, shape, self.device) {
            Ok(t) => {
                self.used.borrow_mut().insert(name);
                Param::initialized(ParamId::new(), t)
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

struct Collector {
    path: Vec<String>,
    out: Vec<NamedTensor>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let values = t.into_data().try_to_vec::<f32>().expect("f32 weights");
        self.out.push(NamedTensor { name: torch_name(&self.path), shape, values });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_tokenizer_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::flex();
        let config = VqConfig::new()
            .with_resolution(8)
            .with_base_channels(32)
            .with_channel_multiplier(vec![1, 1])
            .with_num_res_blocks(1)
            .with_latent_channels(32)
            .with_embed_dim(8)
            .with_num_embeddings(16);
        save_vq_checkpoint(&config.init(&device), dir.path()).unwrap();
        assert!(load_vq_checkpoint(dir.path(), None, &device).is_ok());
        let weights = dir.path().join(VQ_WEIGHTS_FILE);
        let mut bytes = std::fs::read(&weights).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0x40;
        std::fs::write(&weights, &bytes).unwrap();
        let err = load_vq_checkpoint(dir.path(), None, &device).unwrap_err().to_string();
        assert!(err.contains(VQ_WEIGHTS_FILE) && err.contains("CRC-32"), "{err}");
    }
}
