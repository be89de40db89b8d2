//! `cargo xtask export`: rewrite a checkpoint from our module tree into HF's layout.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use chameleon_model::checkpoint::{ExportOptions, WeightDtype, load_hf_checkpoint, save_hf_checkpoint};

/// Loads `checkpoint`, then writes it to `output` in `dtype`, sharded when `shard_mb` is given.
pub fn run(
    checkpoint: &Path,
    output: &Path,
    dtype: WeightDtype,
    shard_mb: Option<usize>,
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
    let loaded = load_hf_checkpoint(checkpoint, device)?;
    let vocab = loaded.vocab.with_context(|| {
        format!("{}: has no `vocabulary_map`, which HF Chameleon needs", checkpoint.join("config.json").display())
    })?;
    let options = ExportOptions { dtype, max_shard_bytes: shard_mb.map(|mb| mb.saturating_mul(1 << 20)) };
    save_hf_checkpoint(&loaded.model, &vocab, Some(&loaded.hf_config), &loaded.vq_tensors, output, options)?;
    tracing::info!(output = %output.display(), "exported");
    Ok(())
}
