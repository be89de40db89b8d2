//! A run of `cargo xtask train`, loaded for generation and evaluation.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_data::image::{postprocess, save_png};
use chameleon_data::prepare::Prepared;
use chameleon_data::tokenizer::TextTokenizer;
use chameleon_model::Chameleon;
use chameleon_model::vq::VqVae;
use chameleon_train::experiment::Experiment;
use chameleon_train::trainer::{CONFIG_FILE, latest_checkpoint};

use crate::data::{image_tokenizer, prepare_data};

/// A trained run, ready to generate.
pub struct Loaded {
    /// The transformer.
    pub model: Chameleon,
    /// Its text tokenizer and vocabulary.
    pub tokenizer: TextTokenizer,
    /// Its image tokenizer.
    pub vq: VqVae,
    /// The run's experiment.
    pub experiment: Experiment,
    /// The run's prepared data.
    pub prepared: Prepared,
}

/// Loads a run of `cargo xtask train` (its newest checkpoint) or one checkpoint of a run, with
/// its text and image tokenizers.
pub fn load_run(run: Option<&Path>, checkpoint: Option<&Path>, cache: &Path, device: &Device) -> Result<Loaded> {
    let (run, checkpoint) = match (run, checkpoint) {
        (Some(run), _) => {
            let ckpt = latest_checkpoint(run)
                .with_context(|| format!("{}: no checkpoint in this run directory", run.display()))?;
            (run.to_path_buf(), ckpt)
        }
        (None, Some(ckpt)) => (ckpt.parent().unwrap_or(Path::new(".")).to_path_buf(), ckpt.to_path_buf()),
        (None, None) => bail!("give --run RUN or --checkpoint DIR"),
    };
    let config = run.join(CONFIG_FILE);
    if !config.is_file() {
        bail!(
            "{}: no {CONFIG_FILE}; --run and --checkpoint take runs of `cargo xtask train` (HF-format checkpoints \
             need their own BPE tokenizer, which generate does not read yet)",
            run.display()
        );
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
    let weights = checkpoint.join("model.bpk");
    let model = exp
        .model
        .init(device)
        .try_load_file(&weights)
        .map_err(|e| anyhow::anyhow!("{}: cannot load the model: {e:?}", weights.display()))?;
    let vq = image_tokenizer(&exp.data.images, device)?;
    Ok(Loaded { model, tokenizer, vq, experiment: exp, prepared })
}

/// Decodes image codes and writes them as a PNG.
pub fn write_image(vq: &VqVae, codes: &[u32], path: &Path, device: &Device) -> Result<()> {
    let side = vq.config.resolution;
    let ids: Vec<i64> = codes.iter().map(|&c| c as i64).collect();
    let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, codes.len()]), device);
    let pixels = vq.decode(t).context("this image tokenizer has no decoder")?;
    let values = pixels.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    Ok(save_png(&postprocess(&values, side), path)?)
}
