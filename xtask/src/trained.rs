//! A run of `cargo xtask train`, loaded for generation and evaluation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_data::hf_tokenizer::HfTokenizer;
use chameleon_data::image::{load_image, postprocess, save_png};
use chameleon_data::prepare::Prepared;
use chameleon_data::tokenizer::{MODEL_FILE, TextTokenizer, TokenizerError, VOCAB_FILE};
use chameleon_model::checkpoint::{load_hf_checkpoint, load_vq_checkpoint};
use chameleon_model::vq::VqVae;
use chameleon_model::{Chameleon, VocabLayout};
use chameleon_train::experiment::Experiment;
use chameleon_train::trainer::{CONFIG_FILE, latest_checkpoint, verify_checkpoint};

use crate::data::{image_tokenizer, prepare_data};

/// The text tokenizer of a loaded model: a run's sentencepiece model, or an HF checkpoint's
/// tokenizer.json.
pub enum Text {
    /// Ours.
    Ours(TextTokenizer),
    /// An HF checkpoint's.
    Hf(Box<HfTokenizer>),
}

impl Text {
    /// The unified vocabulary.
    pub fn layout(&self) -> &VocabLayout {
        match self {
            Text::Ours(t) => t.layout(),
            Text::Hf(t) => t.layout(),
        }
    }

    /// Appends the ids of `text`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        match self {
            Text::Ours(t) => t.encode_into(text, out),
            Text::Hf(t) => t.encode_into(text, out),
        }
    }

    /// The text of text-piece ids.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        match self {
            Text::Ours(t) => t.decode(ids),
            Text::Hf(t) => t.decode(ids),
        }
    }
}

/// A trained model, ready to generate.
pub struct Loaded {
    /// The transformer.
    pub model: Chameleon,
    /// Its text tokenizer and vocabulary.
    pub text: Text,
    /// Its image tokenizer (an HF checkpoint without `vq_config` has none).
    pub vq: Option<VqVae>,
    /// For runs of ours: the experiment and its prepared data.
    pub run: Option<(Experiment, Prepared)>,
}

/// The run directory and checkpoint directory that `path` names: a checkpoint directory of a
/// run (`RUN/checkpoint-NNNNNNN`, with `model.bpk`), or a run of `cargo xtask train` or `ablate`
/// and its newest checkpoint.
pub fn checkpoint_of(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.join("model.bpk").is_file() {
        let run = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Ok((run, path.to_path_buf()));
    }
    if !path.join(CONFIG_FILE).is_file() {
        bail!(
            "{}: not a run of `cargo xtask train` or `ablate` (no {CONFIG_FILE}), nor a checkpoint of one (no model.bpk)",
            path.display()
        );
    }
    let ckpt =
        latest_checkpoint(path)?.with_context(|| format!("{}: no checkpoint in this run directory", path.display()))?;
    Ok((path.to_path_buf(), ckpt))
}

/// Loads a run of `cargo xtask train` (its newest checkpoint), or one checkpoint directory of a
/// run (see [`checkpoint_of`]).
pub fn load_run(path: &Path, cache: &Path, device: &Device) -> Result<Loaded> {
    let (run, checkpoint) = checkpoint_of(path)?;
    load_ours(&run, &checkpoint, cache, device)
}

/// Loads a checkpoint directory: one of a run of ours (`RUN/checkpoint-NNNNNNN`, with
/// `model.bpk`), or an HF Chameleon checkpoint (`config.json` + safetensors) with its
/// `tokenizer.json` (default: beside the weights) and optionally a VQ decoder in Meta's naming.
pub fn load_checkpoint(
    dir: &Path,
    tokenizer: Option<&Path>,
    decoder: Option<&Path>,
    cache: &Path,
    device: &Device,
) -> Result<Loaded> {
    if dir.join("model.bpk").is_file() {
        return load_ours(dir.parent().unwrap_or(Path::new(".")), dir, cache, device);
    }
    if !dir.join("config.json").is_file() {
        bail!("{}: neither a checkpoint of ours (model.bpk) nor an HF checkpoint (config.json)", dir.display());
    }
    let hf = load_hf_checkpoint(dir, device)?;
    let layout = hf
        .vocab
        .with_context(|| format!("{}: config.json has no vocabulary_map", dir.join("config.json").display()))?;
    // A run exported by `cargo xtask export` carries this toolkit's own tokenizer files.
    let text = if tokenizer.is_none() && dir.join(VOCAB_FILE).is_file() && dir.join(MODEL_FILE).is_file() {
        let text = TextTokenizer::load(dir)?;
        if text.layout() != &layout {
            bail!("{}: describes another vocabulary than config.json's vocabulary_map", dir.join(VOCAB_FILE).display());
        }
        Text::Ours(text)
    } else {
        let tok_path = tokenizer.map_or_else(|| dir.join("tokenizer.json"), Path::to_path_buf);
        if !tok_path.is_file() {
            bail!("{}: no tokenizer.json; pass --tokenizer FILE (the checkpoint's HF tokenizer)", tok_path.display());
        }
        Text::Hf(Box::new(HfTokenizer::load(&tok_path, layout)?))
    };
    let vq =
        if hf.hf_config.get("vq_config").is_some() { Some(load_vq_checkpoint(dir, decoder, device)?) } else { None };
    Ok(Loaded { model: hf.model, text, vq, run: None })
}

fn load_ours(run: &Path, checkpoint: &Path, cache: &Path, device: &Device) -> Result<Loaded> {
    let config = run.join(CONFIG_FILE);
    if !config.is_file() {
        bail!("{}: no {CONFIG_FILE}; not a run of `cargo xtask train`", run.display());
    }
    let exp = Experiment::load(&config)?;
    let prepared = prepare_data(&exp.data, cache, false, device)?;
    let tokenizer = prepared.tokenizer()?;
    if exp.model.vocab_size != tokenizer.vocab_size() {
        bail!(
            "{}: model.vocab_size = {} but the run's tokenizer has {} ids",
            config.display(),
            exp.model.vocab_size,
            tokenizer.vocab_size()
        );
    }
    let model = load_weights(&exp, checkpoint, device)?;
    let vq = image_tokenizer(&exp.data.images, device)?;
    Ok(Loaded { model, text: Text::Ours(tokenizer), vq: Some(vq), run: Some((exp, prepared)) })
}

/// The transformer of an experiment with the weights of one of its checkpoints (`model.bpk`).
pub fn load_weights(exp: &Experiment, checkpoint: &Path, device: &Device) -> Result<Chameleon> {
    verify_checkpoint(checkpoint)?;
    exp.model.check_fits(0, device).map_err(|m| anyhow::anyhow!("{}: [model]: {m}", checkpoint.display()))?;
    let weights = checkpoint.join("model.bpk");
    exp.model
        .init(device)
        .try_load_file(&weights)
        .map_err(|e| anyhow::anyhow!("{}: cannot load the model (truncated or damaged?): {e}", weights.display()))
}

/// An image file as the model reads it: begin-image, its codes as token ids, end-image (encoded
/// with the loaded model's own image tokenizer).
pub fn image_block(loaded: &Loaded, path: &Path, device: &Device) -> Result<Vec<u32>> {
    let vq = loaded.vq.as_ref().context("this checkpoint has no image tokenizer for the prompt's images")?;
    let layout = loaded.text.layout();
    let side = vq.config.resolution;
    let pixels = load_image(path, side)?;
    let x = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, side, side]), device);
    let codes: Vec<i64> = vq.encode(x).into_data().convert::<i64>().try_to_vec::<i64>().unwrap_or_default();
    let mut block = vec![layout.special().begin_image];
    for c in codes {
        block.push(
            layout
                .image_token(c as u32)
                .with_context(|| format!("{}: code {c} outside the vocabulary", path.display()))?,
        );
    }
    block.push(layout.special().end_image);
    Ok(block)
}

/// Writes an image's codes as `BASE.png`, decoded, or as `BASE.codes.json` when the image
/// tokenizer has no decoder (HF checkpoints carry none). Returns the path written.
pub fn write_image(vq: &VqVae, codes: &[u32], base: &Path, device: &Device) -> Result<PathBuf> {
    let side = vq.config.resolution;
    let ids: Vec<i64> = codes.iter().map(|&c| c as i64).collect();
    let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, codes.len()]), device);
    match vq.decode(t) {
        Some(pixels) => {
            let values = pixels.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            let path = PathBuf::from(format!("{}.png", base.display()));
            save_png(&postprocess(&values, side), &path)?;
            Ok(path)
        }
        None => {
            let path = PathBuf::from(format!("{}.codes.json", base.display()));
            std::fs::write(&path, serde_json::to_string(codes)?)
                .with_context(|| format!("{}: cannot write", path.display()))?;
            Ok(path)
        }
    }
}
