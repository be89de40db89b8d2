//! `cargo xtask vq train|encode|decode`: the VQ-VAE image tokenizer from the command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_data::image as img;
use chameleon_model::checkpoint::load_vq_checkpoint;
use chameleon_model::vq::VqVae;
use chameleon_train::vq_train::{VqExperiment, train_vq};
use clap::Subcommand;

use crate::npy;

/// The tokenizer's subcommands.
#[derive(Subcommand)]
pub enum VqCommand {
    /// Train a tokenizer on the image side of the built-in corpus.
    Train {
        /// Experiment file with [vq] and [train] sections.
        #[arg(long, default_value = "experiments/vq-emoji.toml")]
        config: PathBuf,
        /// Run directory (default: runs/<config name>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Images to codes: int64 [batch, codes], row-major (y, x).
    Encode {
        /// Our tokenizer directory, or an HF Chameleon checkpoint directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// One .npy of f32 pixels [batch, 3, R, R] in [-1, 1], or one or more image files.
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Output .npy.
        #[arg(long)]
        output: PathBuf,
    },
    /// Codes to images.
    Decode {
        /// Our tokenizer directory, or an HF Chameleon checkpoint directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Decoder weights in Meta's naming (`decoder.*`), for HF checkpoints, which have none.
        #[arg(long)]
        decoder: Option<PathBuf>,
        /// int64 or int32 codes [batch, codes].
        #[arg(long)]
        input: PathBuf,
        /// A .npy of f32 pixels [batch, 3, R, R] (unclamped); a .png (one per image: NAME-i.png
        /// when there are several); or a directory for 000000.png, 000001.png, ...
        #[arg(long)]
        output: PathBuf,
    },
}

/// Runs one subcommand.
pub fn run(command: VqCommand, device: &Device) -> Result<()> {
    match command {
        VqCommand::Train { config, out } => {
            let exp = VqExperiment::load(&config)?;
            let stem = config.file_stem().and_then(|s| s.to_str()).unwrap_or("vq");
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(stem));
            let report =
                train_vq(&exp, &out, device, true).with_context(|| format!("training into {}", out.display()))?;
            println!(
                "trained {} steps in {:.0} s on {} images; held-out ({} images): PSNR {:.2} dB, code perplexity {:.1}, {} of {} codes used ({:.1}% dead)",
                report.steps,
                report.seconds,
                report.train_images,
                report.held_out_images,
                report.held_out.psnr,
                report.held_out.perplexity,
                report.held_out.used_codes,
                exp.vq.num_embeddings,
                100.0 * report.held_out.dead_fraction
            );
            println!("tokenizer: {}; metrics and held-out sheet in {}", report.checkpoint.display(), out.display());
            Ok(())
        }
        VqCommand::Encode { checkpoint, input, output } => {
            let vq = load_vq_checkpoint(&checkpoint, None, device)?;
            let pixels = read_pixels(&input, &vq, device)?;
            let [b, ..] = pixels.dims();
            let codes = vq.encode(pixels);
            let values: Vec<i64> = codes.into_data_as::<i64>().try_to_vec().context("reading codes back")?;
            npy::write_i64(&output, &[b, vq.config.codes_per_image()], &values)?;
            tracing::info!(images = b, output = %output.display(), "encoded");
            Ok(())
        }
        VqCommand::Decode { checkpoint, decoder, input, output } => {
            let vq = load_vq_checkpoint(&checkpoint, decoder.as_deref(), device)?;
            let codes = read_codes(&input, &vq, device)?;
            let [b, _] = codes.dims();
            let side = vq.config.resolution;
            let pixels = vq.decode(codes).with_context(|| {
                format!(
                    "{} has no decoder (HF checkpoints carry none); pass --decoder FILE.safetensors with Meta's `decoder.*` weights",
                    checkpoint.display()
                )
            })?;
            let values: Vec<f32> = pixels.into_data().try_to_vec().context("reading pixels back")?;
            write_images(&output, &values, b, side)
        }
    }
}

fn read_pixels(inputs: &[PathBuf], vq: &VqVae, device: &Device) -> Result<Tensor<4>> {
    let (side, channels) = (vq.config.resolution, vq.config.in_channels);
    if let [single] = inputs
        && single.extension().is_some_and(|e| e == "npy")
    {
        let arr = npy::read_f32(single)?;
        let [b, c, h, w] = arr.shape[..] else {
            bail!(
                "{}: pixels have shape {:?}; expected [batch, {channels}, {side}, {side}]",
                single.display(),
                arr.shape
            );
        };
        if c != channels || h != side || w != side || b == 0 {
            bail!(
                "{}: pixels have shape {:?}; this tokenizer takes [batch, {channels}, {side}, {side}]",
                single.display(),
                arr.shape
            );
        }
        return Ok(Tensor::from_data(TensorData::new(arr.data, [b, c, h, w]), device));
    }
    if channels != 3 {
        bail!("image files are RGB, but this tokenizer takes {channels} channels; pass a .npy");
    }
    let mut flat = Vec::with_capacity(inputs.len() * 3 * side * side);
    for path in inputs {
        flat.extend(img::load_image(path, side)?);
    }
    Ok(Tensor::from_data(TensorData::new(flat, [inputs.len(), 3, side, side]), device))
}

fn read_codes(path: &Path, vq: &VqVae, device: &Device) -> Result<Tensor<2, Int>> {
    let arr = npy::read_ints(path)?;
    let n = vq.config.codes_per_image();
    let [b, len] = arr.shape[..] else {
        bail!("{}: codes have shape {:?}; expected [batch, {n}]", path.display(), arr.shape);
    };
    if len != n || b == 0 {
        bail!(
            "{}: codes have shape {:?}; this tokenizer makes [batch, {n}] codes per image",
            path.display(),
            arr.shape
        );
    }
    let k = vq.config.num_embeddings as i64;
    if let Some((i, &c)) = arr.data.iter().enumerate().find(|&(_, &c)| c < 0 || c >= k) {
        bail!("{}: code {c} at [{}, {}] is outside the codebook of {k}", path.display(), i / n, i % n);
    }
    Ok(Tensor::from_data(TensorData::new(arr.data, [b, n]), device))
}

fn write_images(output: &Path, values: &[f32], batch: usize, side: usize) -> Result<()> {
    let per = 3 * side * side;
    match output.extension().and_then(|e| e.to_str()) {
        Some("npy") => npy::write_f32(output, &[batch, 3, side, side], values),
        Some("png") if batch == 1 => Ok(img::save_png(&img::postprocess(values, side), output)?),
        Some("png") => {
            let stem = output.with_extension("");
            for i in 0..batch {
                let path = PathBuf::from(format!("{}-{i}.png", stem.display()));
                img::save_png(&img::postprocess(&values[i * per..(i + 1) * per], side), &path)?;
            }
            Ok(())
        }
        _ => {
            std::fs::create_dir_all(output)
                .with_context(|| format!("{}: cannot create directory", output.display()))?;
            for i in 0..batch {
                let path = output.join(format!("{i:06}.png"));
                img::save_png(&img::postprocess(&values[i * per..(i + 1) * per], side), &path)?;
            }
            Ok(())
        }
    }
}
