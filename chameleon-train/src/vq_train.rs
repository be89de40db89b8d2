//! Training the VQ-VAE image tokenizer on the image side of the built-in corpus.
//!
//! Loss: reconstruction (L1 or L2) + the legacy VQ loss (codebook + β·commitment). Small
//! codebooks collapse, so code use is measured (perplexity of the usage distribution, share of
//! dead codes) over a window of steps, and dead codes are restarted from recent encoder outputs.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use chameleon_data::{emoji, image as img};
use chameleon_model::checkpoint::save_vq_checkpoint;
use chameleon_model::vq::{VqConfig, VqVae};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config_file::{ConfigError, only_sections, read_table, section};

/// Reconstruction loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reconstruction {
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    L2,
}

/// The `[train]` section of a VQ experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqTrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak AdamW learning rate (after a linear warmup of `warmup_steps`).
    pub learning_rate: f64,
    /// Linear warmup.
    pub warmup_steps: usize,
    /// AdamW β2.
    pub beta_2: f32,
    /// Reconstruction loss: "l1" or "l2".
    pub reconstruction: Reconstruction,
    /// One image in this many is held out for evaluation.
    pub held_out_every: usize,
    /// Steps between held-out evaluations (PSNR, code use).
    pub eval_every: usize,
    /// Steps between dead-code restarts (0: never). A code is dead if no image of the last
    /// `restart_dead_every` steps used it.
    pub restart_dead_every: usize,
    /// Steps between checkpoints (0: only the final one).
    pub checkpoint_every: usize,
    /// Checkpoints kept besides the final one.
    pub keep_checkpoints: usize,
    /// Seed of initialisation, batch sampling and restarts.
    pub seed: u64,
}

impl Default for VqTrainConfig {
    fn default() -> Self {
        Self {
            steps: 1500,
            batch_size: 32,
            learning_rate: 1e-3,
            warmup_steps: 50,
            beta_2: 0.99,
            reconstruction: Reconstruction::L1,
            held_out_every: 10,
            eval_every: 250,
            restart_dead_every: 50,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            seed: 0,
        }
    }
}

/// A VQ experiment file: `[vq]` (the tokenizer, [`VqConfig`]) and `[train]`.
#[derive(Debug, Clone, PartialEq)]
pub struct VqExperiment {
    /// Tokenizer shape.
    pub vq: VqConfig,
    /// Training settings.
    pub train: VqTrainConfig,
}

impl VqExperiment {
    /// Reads and validates an experiment file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let table = read_table(path)?;
        only_sections(&table, &["vq", "train"], path)?;
        let vq: VqConfig = section(&table, "vq", &VqConfig::new(), &[], path)?;
        vq.validate().map_err(|m| ConfigError::new(path, format!("[vq]: {m}")))?;
        let train: VqTrainConfig = section(&table, "train", &VqTrainConfig::default(), &[], path)?;
        let t = &train;
        for (key, v) in [
            ("steps", t.steps),
            ("batch_size", t.batch_size),
            ("held_out_every", t.held_out_every),
            ("eval_every", t.eval_every),
        ] {
            if v == 0 {
                return Err(ConfigError::new(path, format!("`train.{key}` must be at least 1")));
            }
        }
        if t.held_out_every < 2 {
            return Err(ConfigError::new(
                path,
                "`train.held_out_every` must be at least 2 (one image in N is held out)",
            ));
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return Err(ConfigError::new(
                path,
                format!("`train.learning_rate` = {} must be positive", t.learning_rate),
            ));
        }
        if !(0.0..1.0).contains(&t.beta_2) {
            return Err(ConfigError::new(path, format!("`train.beta_2` = {} must lie in [0, 1)", t.beta_2)));
        }
        Ok(Self { vq, train })
    }
}

/// Held-out figures of a tokenizer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VqEval {
    /// PSNR in dB of the reconstructions, pixels in [0, 1].
    pub psnr: f64,
    /// exp(entropy) of the code-use distribution over the held-out images.
    pub perplexity: f64,
    /// Codes used at least once on the held-out images.
    pub used_codes: usize,
    /// Share of the codebook never used on the held-out images.
    pub dead_fraction: f64,
}

/// What a finished training run reports.
#[derive(Debug, Clone, Serialize)]
pub struct VqReport {
    /// Steps taken.
    pub steps: usize,
    /// Training images.
    pub train_images: usize,
    /// Held-out images.
    pub held_out_images: usize,
    /// Held-out figures after the last step.
    pub held_out: VqEval,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Where the final tokenizer is.
    pub checkpoint: PathBuf,
}

/// The image side of the built-in corpus, preprocessed: (train, held out), each a flat list of
/// `[3, R, R]` images.
pub fn emoji_images(resolution: usize, held_out_every: usize) -> (Vec<img::Pixels>, Vec<img::Pixels>) {
    let mut train = Vec::new();
    let mut held = Vec::new();
    for e in emoji::all() {
        let origin = PathBuf::from(format!("twemoji:{}", e.name));
        // The PNGs ship inside the twemoji-assets crate; one that fails to decode is skipped.
        let Ok(pixels) = img::decode_image(e.png, &origin, resolution) else {
            tracing::warn!(emoji = e.name, "skipping an emoji whose PNG does not decode");
            continue;
        };
        if e.is_held_out(held_out_every) { held.push(pixels) } else { train.push(pixels) }
    }
    (train, held)
}

fn batch(images: &[&img::Pixels], side: usize, device: &Device) -> Tensor<4> {
    let flat: Vec<f32> = images.iter().flat_map(|p| p.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [images.len(), 3, side, side]), device)
}

/// exp(entropy) of a usage histogram, and the number of entries used.
pub fn usage_perplexity(counts: &[u64]) -> (f64, usize) {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return (0.0, 0);
    }
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum();
    (entropy.exp(), counts.iter().filter(|&&c| c > 0).count())
}

/// PSNR (dB) between images in [-1, 1] after clamping the reconstruction, on a [0, 1] scale.
pub fn psnr(original: &[f32], reconstruction: &[f32]) -> f64 {
    let mse: f64 = original
        .iter()
        .zip(reconstruction)
        .map(|(&a, &b)| {
            let d = (a as f64 - (b as f64).clamp(-1.0, 1.0)) / 2.0;
            d * d
        })
        .sum::<f64>()
        / original.len().max(1) as f64;
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

/// Held-out PSNR and code use; also returns the first reconstructions for a sheet.
pub fn evaluate(model: &VqVae, images: &[img::Pixels], device: &Device) -> (VqEval, Vec<f32>) {
    let side = model.config.resolution;
    let mut counts = vec![0u64; model.config.num_embeddings];
    let mut sq = 0.0f64;
    let mut n = 0usize;
    let mut first = Vec::new();
    for chunk in images.chunks(64) {
        let refs: Vec<&img::Pixels> = chunk.iter().collect();
        let x = batch(&refs, side, device);
        let codes = model.encode(x);
        for c in codes.clone().into_data_as::<i64>().try_to_vec::<i64>().expect("codes") {
            counts[c as usize] += 1;
        }
        let y: Vec<f32> = model.decode(codes).expect("decoder").into_data().try_to_vec().expect("pixels");
        let x: Vec<f32> = chunk.iter().flat_map(|p| p.iter().copied()).collect();
        let p = psnr(&x, &y);
        sq += 10f64.powf(-p / 10.0) * x.len() as f64;
        n += x.len();
        if first.is_empty() {
            first = y;
        }
    }
    let (perplexity, used) = usage_perplexity(&counts);
    let eval = VqEval {
        psnr: 10.0 * (n as f64 / sq.max(1e-12)).log10(),
        perplexity,
        used_codes: used,
        dead_fraction: 1.0 - used as f64 / counts.len() as f64,
    };
    (eval, first)
}

/// Replaces the codebook rows of `dead` codes with randomly chosen encoder outputs (plus a
/// little noise), keeping the parameter's identity so the optimizer state stays attached.
fn restart_codes(model: VqVae, dead: &[usize], latent: Tensor<4>, rng: &mut StdRng) -> VqVae {
    if dead.is_empty() {
        return model;
    }
    let [b, c, h, w] = latent.dims();
    let vectors: Vec<f32> =
        latent.permute([0, 2, 3, 1]).reshape([b * h * w, c]).into_data().try_to_vec().expect("latent");
    let param = &model.quantize.embedding.weight;
    let device = param.device();
    let (id, codebook) = (param.id, param.val());
    let mut rows: Vec<f32> = codebook.clone().into_data().try_to_vec().expect("codebook");
    let scale = (rows.iter().map(|v| v * v).sum::<f32>() / rows.len() as f32).sqrt().max(1e-3) * 0.01;
    for &code in dead {
        let pick = rng.random_range(0..b * h * w);
        for j in 0..c {
            rows[code * c + j] = vectors[pick * c + j] + scale * (rng.random::<f32>() - 0.5);
        }
    }
    let fresh = Tensor::<2>::from_data(TensorData::new(rows, codebook.dims()), &device).require_grad();
    let mut model = model;
    model.quantize.embedding.weight = Param::initialized(id, fresh);
    model
}

/// Trains a tokenizer and writes to `out`: `metrics.jsonl`, `config.toml` (resolved),
/// `checkpoint-<step>/`, `tokenizer/` (final), `heldout_sheet.png`, `report.json`.
pub fn train_vq(
    exp: &VqExperiment,
    out: &Path,
    device: &Device,
    show_progress: bool,
) -> Result<VqReport, std::io::Error> {
    let start = std::time::Instant::now();
    let t = &exp.train;
    std::fs::create_dir_all(out)?;
    write_resolved_config(exp, &out.join("config.toml"))?;
    let (train_set, held_out) = emoji_images(exp.vq.resolution, t.held_out_every);
    tracing::info!(train = train_set.len(), held_out = held_out.len(), "built-in emoji images");
    let side = exp.vq.resolution;
    let train_device = device.clone().autodiff();
    train_device.seed(t.seed);
    let mut model = exp.vq.init(&train_device);
    let mut optim = AdamWConfig::new().with_beta_2(t.beta_2).with_weight_decay(0.0).init();
    let mut rng = StdRng::seed_from_u64(t.seed);
    let mut metrics = std::fs::File::create(out.join("metrics.jsonl"))?;
    let window = t.restart_dead_every.max(1);
    let mut recent: VecDeque<Vec<i64>> = VecDeque::new();
    let mut checkpoints: VecDeque<PathBuf> = VecDeque::new();
    let bar = if show_progress { ProgressBar::new(t.steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} vq train [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    for step in 1..=t.steps {
        let picks: Vec<&img::Pixels> =
            (0..t.batch_size).map(|_| &train_set[rng.random_range(0..train_set.len())]).collect();
        let x = batch(&picks, side, &train_device);
        let output = model.forward(x.clone());
        let diff = output.reconstruction.clone() - x;
        let recon = match t.reconstruction {
            Reconstruction::L1 => diff.abs().mean(),
            Reconstruction::L2 => diff.square().mean(),
        };
        let loss = recon.clone() + output.vq_loss.clone();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = t.learning_rate * (step as f64 / t.warmup_steps.max(1) as f64).min(1.0);
        model = optim.step(lr, model, grads);

        let codes: Vec<i64> = output.codes.into_data_as::<i64>().try_to_vec().expect("codes");
        recent.push_back(codes);
        if recent.len() > window {
            recent.pop_front();
        }
        let mut counts = vec![0u64; exp.vq.num_embeddings];
        for &c in recent.iter().flatten() {
            counts[c as usize] += 1;
        }
        let (perplexity, used) = usage_perplexity(&counts);
        let mut restarted = 0;
        if t.restart_dead_every > 0 && step % t.restart_dead_every == 0 && step < t.steps {
            let dead: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] == 0).collect();
            restarted = dead.len();
            model = restart_codes(model, &dead, output.latent.detach(), &mut rng);
            recent.clear();
        }
        let (recon_v, vq_v): (f32, f32) = (recon.into_scalar(), output.vq_loss.into_scalar());
        let mut row = serde_json::json!({
            "step": step, "loss": recon_v + vq_v, "recon": recon_v, "vq_loss": vq_v, "lr": lr,
            "code_perplexity": perplexity, "used_codes": used,
            "dead_fraction": 1.0 - used as f64 / exp.vq.num_embeddings as f64, "restarted_codes": restarted,
        });
        if step % t.eval_every == 0 || step == t.steps {
            let (eval, _) = evaluate(&model.valid(), &held_out, device);
            row["heldout_psnr"] = eval.psnr.into();
            row["heldout_code_perplexity"] = eval.perplexity.into();
            row["heldout_dead_fraction"] = eval.dead_fraction.into();
            let used = eval.used_codes;
            bar.suspend(|| {
                tracing::info!(
                    "step {step}: recon {recon_v:.4}, held-out PSNR {:.2} dB, codes used {used}/{}",
                    eval.psnr,
                    exp.vq.num_embeddings
                )
            });
        }
        writeln!(metrics, "{row}")?;
        bar.set_message(format!("recon {recon_v:.4} codes {used}"));
        bar.inc(1);
        if t.checkpoint_every > 0 && step % t.checkpoint_every == 0 && step < t.steps {
            let dir = out.join(format!("checkpoint-{step:06}"));
            save_checkpoint_dir(&model.valid(), &dir)?;
            checkpoints.push_back(dir);
            while checkpoints.len() > t.keep_checkpoints {
                let old = checkpoints.pop_front().expect("non-empty");
                std::fs::remove_dir_all(&old)?;
            }
        }
    }
    bar.finish_and_clear();
    let model = model.valid();
    let final_dir = out.join("tokenizer");
    save_checkpoint_dir(&model, &final_dir)?;
    let (held, recon) = evaluate(&model, &held_out, device);
    let shown = held_out.len().min(64).min(recon.len() / (3 * side * side));
    write_sheet(&held_out[..shown], &recon, side, &out.join("heldout_sheet.png"))?;
    let report = VqReport {
        steps: t.steps,
        train_images: train_set.len(),
        held_out_images: held_out.len(),
        held_out: held,
        seconds: start.elapsed().as_secs_f64(),
        checkpoint: final_dir,
    };
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report).expect("JSON"))?;
    Ok(report)
}

/// Writes a checkpoint directory atomically: into `<dir>.tmp`, then renamed over `dir`.
fn save_checkpoint_dir(model: &VqVae, dir: &Path) -> Result<(), std::io::Error> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    save_vq_checkpoint(model, &tmp).map_err(std::io::Error::other)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)
}

fn write_resolved_config(exp: &VqExperiment, path: &Path) -> Result<(), std::io::Error> {
    let mut table = toml::Table::new();
    table.insert("vq".into(), toml::Value::try_from(&exp.vq).map_err(std::io::Error::other)?);
    table.insert("train".into(), toml::Value::try_from(&exp.train).map_err(std::io::Error::other)?);
    std::fs::write(path, toml::to_string_pretty(&table).map_err(std::io::Error::other)?)
}

/// A sheet of image pairs, original left and reconstruction right, 8 pairs a row.
pub fn write_sheet(
    originals: &[img::Pixels],
    reconstructions: &[f32],
    side: usize,
    path: &Path,
) -> Result<(), std::io::Error> {
    let n = originals.len();
    let per_row = 8.min(n.max(1));
    let rows = n.div_ceil(per_row).max(1);
    let gap = 2u32;
    let cell = side as u32;
    let width = per_row as u32 * (2 * cell + 3 * gap);
    let height = rows as u32 * (cell + gap) + gap;
    let mut sheet = image::RgbImage::from_pixel(width, height, image::Rgb([128, 128, 128]));
    for (i, original) in originals.iter().enumerate() {
        let (r, c) = ((i / per_row) as u32, (i % per_row) as u32);
        let x0 = c * (2 * cell + 3 * gap) + gap;
        let y0 = r * (cell + gap) + gap;
        let a = img::postprocess(original, side);
        let b = img::postprocess(&reconstructions[i * 3 * side * side..(i + 1) * 3 * side * side], side);
        image::imageops::replace(&mut sheet, &a, x0 as i64, y0 as i64);
        image::imageops::replace(&mut sheet, &b, (x0 + cell + gap) as i64, y0 as i64);
    }
    img::save_png(&sheet, path).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_of_uniform_and_collapsed_use() {
        let (p, used) = usage_perplexity(&[5, 5, 5, 5, 0, 0]);
        assert!((p - 4.0).abs() < 1e-9);
        assert_eq!(used, 4);
        let (p, used) = usage_perplexity(&[9, 0, 0]);
        assert!((p - 1.0).abs() < 1e-9);
        assert_eq!(used, 1);
    }

    #[test]
    fn psnr_of_known_errors() {
        // Error 0.2 in [-1, 1] is 0.1 on a [0, 1] scale: MSE 0.01, PSNR 20 dB.
        let a = vec![0.0f32; 100];
        let b = vec![0.2f32; 100];
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-4);
        // Reconstructions are clamped before scoring.
        assert!((psnr(&[1.0], &[3.0]) - psnr(&[1.0], &[1.0])).abs() < 1e-9);
    }
}
