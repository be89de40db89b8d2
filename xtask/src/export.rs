//! `cargo xtask export`: write a checkpoint in HF's Chameleon layout. The source is an HF
//! checkpoint (rewritten in another dtype or sharding), or a run of ours (its newest checkpoint)
//! or one checkpoint directory of a run: then config.json gets the run's vocabulary_map and
//! vq_config, the weights get the image tokenizer under `model.vqmodel.*`, and the run's
//! sentencepiece tokenizer (`tokenizer.model`, `vocab.json`) is copied beside them.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use chameleon_data::tokenizer::MODEL_FILE;
use chameleon_model::checkpoint::{
    ExportOptions, WeightDtype, hf_vq_tensors, load_hf_checkpoint, save_hf_checkpoint, vq_config_json,
};
use chameleon_train::trainer::CONFIG_FILE;
use serde_json::json;

use crate::trained::{Text, load_run};

/// Loads `checkpoint`, then writes it to `output` in `dtype`, sharded when `shard_mb` is given.
/// `cache` holds a run's prepared data (its tokenizer).
pub fn run(
    checkpoint: &Path,
    output: &Path,
    dtype: WeightDtype,
    shard_mb: Option<usize>,
    cache: &Path,
    device: &Device,
) -> Result<()> {
    if let (Ok(a), Ok(b)) = (checkpoint.canonicalize(), output.canonicalize())
        && a == b
    {
        bail!(
            "{}: --output is the checkpoint's own folder; export into another folder (the source's weights \
             would be replaced while they are read)",
            output.display()
        );
    }
    let options = ExportOptions { dtype, max_shard_bytes: shard_mb.map(|mb| mb.saturating_mul(1 << 20)) };
    let ours = checkpoint.join("model.bpk").is_file() || checkpoint.join(CONFIG_FILE).is_file();
    if ours {
        export_run(checkpoint, output, options, cache, device)?;
    } else {
        let loaded = load_hf_checkpoint(checkpoint, device)?;
        let vocab = loaded.vocab.with_context(|| {
            format!("{}: has no `vocabulary_map`, which HF Chameleon needs", checkpoint.join("config.json").display())
        })?;
        save_hf_checkpoint(&loaded.model, &vocab, Some(&loaded.hf_config), &loaded.vq_tensors, output, options)?;
    }
    tracing::info!(output = %output.display(), "exported");
    Ok(())
}

/// A run of ours (or one of its checkpoints) as an HF Chameleon directory.
fn export_run(checkpoint: &Path, output: &Path, options: ExportOptions, cache: &Path, device: &Device) -> Result<()> {
    let loaded = load_run(checkpoint, cache, device)?;
    let Text::Ours(text) = &loaded.text else { unreachable!("runs of ours carry their own tokenizer") };
    let (_, prepared) = loaded.run.as_ref().context("a run of ours has its experiment")?;
    let vq = loaded.vq.as_ref().context("a run of ours has its image tokenizer")?;
    if !loaded.model.config.qk_norm {
        tracing::warn!("this run has no QK-norm; transformers' Chameleon always applies it and will not match");
    }
    let base = json!({ "vq_config": vq_config_json(&vq.config), "vocabulary_map": text.vocabulary_map() });
    save_hf_checkpoint(&loaded.model, text.layout(), Some(&base), &hf_vq_tensors(vq), output, options)?;
    text.save(&prepared.dir.join(MODEL_FILE), output)?;
    Ok(())
}
