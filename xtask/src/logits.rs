//! `cargo xtask logits`: raw logits of an HF-format checkpoint for token ids from a `.npy`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_model::checkpoint::load_hf_checkpoint;

use crate::npy;

/// Reads `[batch, seq]` ids, writes f32 `[batch, seq, vocab]` logits. No image-token masking.
pub fn run(checkpoint: &Path, input: &Path, output: &Path, device: &Device) -> Result<()> {
    let ids = npy::read_ints(input)?;
    let [batch, seq] = ids.shape[..] else {
        bail!("{}: ids have shape {:?}; expected [batch, seq]", input.display(), ids.shape);
    };
    if batch == 0 || seq == 0 {
        bail!("{}: ids have shape {:?}; batch and seq must be at least 1", input.display(), ids.shape);
    }
    let loaded = load_hf_checkpoint(checkpoint, device)?;
    let vocab = loaded.model.config.vocab_size;
    if let Some((i, &id)) = ids.data.iter().enumerate().find(|&(_, &id)| id < 0 || id as usize >= vocab) {
        bail!(
            "{}: token id {id} at [{}, {}] is outside the vocabulary of {vocab} in {}",
            input.display(),
            i / seq,
            i % seq,
            checkpoint.join("config.json").display()
        );
    }
    // The logits, and about as much again while they are computed.
    let bytes = 2 * 4 * batch as u128 * seq as u128 * vocab as u128;
    chameleon_model::host_memory::check_fits(bytes, &format!("logits of shape [{batch}, {seq}, {vocab}]"), device)
        .map_err(|m| anyhow::anyhow!("{}: {m}", input.display()))?;
    tracing::info!(batch, seq, vocab, "computing logits");
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.data, [batch, seq]), device);
    let logits = loaded.model.forward(tokens);
    let values: Vec<f32> = logits.into_data().try_to_vec().context("reading logits back from the device")?;
    npy::write_f32(output, &[batch, seq, vocab], &values)?;
    tracing::info!(output = %output.display(), "wrote logits");
    Ok(())
}
