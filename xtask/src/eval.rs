//! `cargo xtask eval --run RUN`: perplexity by modality, captioning, caption choice and image
//! likelihood on the run's held-out data; `eval.json`, a table, and a sheet of sampled images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_data::DocKind;
use chameleon_data::image::postprocess;
use chameleon_data::loader::{Split, open_source};
use chameleon_eval::evaluate::{EvalConfig, Pair, evaluate, pair_of};
use clap::Args;
use image::RgbImage;

use crate::trained::{checkpoint_of, load_run};

/// The options of `cargo xtask eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run directory of ours (its newest checkpoint is evaluated), or one of its checkpoint
    /// directories.
    #[arg(long)]
    run: PathBuf,
    /// Where eval.json and eval-samples.png go (default: the run directory, also for a
    /// checkpoint of it: checkpoints are rotated away).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Held-out documents per source for perplexity (0: all).
    #[arg(long, default_value_t = 200)]
    max_docs: usize,
    /// Held-out caption pairs (0: all).
    #[arg(long, default_value_t = 200)]
    max_pairs: usize,
    /// Wrong captions ranked against the true one.
    #[arg(long, default_value_t = 9)]
    distractors: usize,
    /// Images generated for the sample sheet.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Seed of the distractors and samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cache folder for data.
    #[arg(long, default_value = ".cache")]
    cache: PathBuf,
}

fn cap(n: usize, max: usize) -> usize {
    if max == 0 { n } else { n.min(max) }
}

/// Runs `cargo xtask eval`.
pub fn run(args: &EvalArgs, device: &Device) -> Result<()> {
    let loaded = load_run(&args.run, &args.cache, device)?;
    let layout = loaded.text.layout().clone();
    let (Some((experiment, prepared)), Some(vq)) = (&loaded.run, &loaded.vq) else {
        anyhow::bail!("{}: eval needs a run of ours with its data and image tokenizer", args.run.display());
    };
    let (mut docs, mut pairs): (Vec<Vec<u32>>, Vec<Pair>) = (Vec::new(), Vec::new());
    for source in &experiment.data.sources {
        let set = open_source(prepared, &source.name, Split::HeldOut)?;
        for i in 0..cap(set.len(), args.max_docs) {
            let mut tokens = Vec::new();
            set.tokens_into(i, &mut tokens);
            docs.push(tokens);
        }
        for i in 0..set.len() {
            if set.kind(i) == DocKind::Caption && pairs.len() < cap(usize::MAX, args.max_pairs) {
                let mut tokens = Vec::new();
                set.tokens_into(i, &mut tokens);
                pairs.extend(pair_of(&tokens, &layout));
            }
        }
    }
    let config = EvalConfig {
        max_docs: args.max_docs,
        max_pairs: args.max_pairs,
        distractors: args.distractors,
        caption_tokens: 24,
        samples: args.samples,
        codes_per_image: vq.config.codes_per_image(),
        seed: args.seed,
    };
    let decode = |ids: &[u32]| loaded.text.decode(ids).unwrap_or_default();
    tracing::info!(
        "evaluating {}: {} held-out documents, {} caption pairs",
        args.run.display(),
        docs.len(),
        pairs.len()
    );
    let (report, samples) = evaluate(&loaded.model, &layout, &decode, &docs, &pairs, &config, device);

    let out = match &args.out {
        Some(out) => out.clone(),
        None => checkpoint_of(&args.run)?.0,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let json = out.join("eval.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("{}: cannot write", json.display()))?;
    let sheet = out.join("eval-samples.png");
    write_sheet(vq, &pairs[..samples.len()], &samples, &sheet, device)?;

    println!("{:<44} {:>10}", "measure (held out)", "value");
    println!("{:<44} {:>10.3}  ({} tokens)", "text: nats/token (perplexity)", report.text.nll, report.text.tokens);
    println!("{:<44} {:>10.1}", "text perplexity", report.text.perplexity);
    println!("{:<44} {:>10.3}  ({} codes)", "image: nats/code", report.image.nll, report.image.tokens);
    println!("{:<44} {:>10.1}", "image perplexity", report.image.perplexity);
    println!("{:<44} {:>10.3}", "captioning BLEU-4 (greedy)", report.caption_bleu4);
    println!("{:<44} {:>10.3}", "captioning exact match", report.caption_exact);
    println!(
        "{:<44} {:>10.3}  (chance {:.3}, {} images)",
        format!("caption choice accuracy (1 of up to {})", args.distractors + 1),
        report.choice_accuracy,
        report.choice_chance,
        report.choice_ranked
    );
    println!("{:<44} {:>10.3}", "image nats/code given its caption", report.image_nll_given_caption);
    println!("{:<44} {:>10.3}", "image nats/code with no caption", report.image_nll_unconditioned);
    println!("{:<44} {:>10.3}", "image nats/code, uniform guess", report.image_nll_uniform);
    println!("{} caption pairs; {} and {}", report.pairs, json.display(), sheet.display());
    Ok(())
}

/// A sheet with one row per sample: the true image, then the one generated from its caption,
/// each enlarged 4×.
fn write_sheet(
    vq: &chameleon_model::vq::VqVae,
    pairs: &[Pair],
    samples: &[Vec<u32>],
    path: &Path,
    device: &Device,
) -> Result<()> {
    let side = vq.config.resolution;
    let zoom = 4u32;
    let cell = side as u32 * zoom;
    let mut sheet = RgbImage::from_pixel(
        2 * cell + 3 * 4,
        samples.len().max(1) as u32 * (cell + 4) + 4,
        image::Rgb([255, 255, 255]),
    );
    let decode = |codes: &[u32]| -> Option<RgbImage> {
        if codes.len() != vq.config.codes_per_image() {
            return None;
        }
        let ids: Vec<i64> = codes.iter().map(|&c| c as i64).collect();
        let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, codes.len()]), device);
        let px = vq.decode(t)?.into_data().convert::<f32>().try_to_vec::<f32>().ok()?;
        Some(image::imageops::resize(&postprocess(&px, side), cell, cell, image::imageops::FilterType::Nearest))
    };
    for (row, (pair, sample)) in pairs.iter().zip(samples).enumerate() {
        let y = 4 + row as u32 * (cell + 4);
        for (col, codes) in [&pair.codes, sample].into_iter().enumerate() {
            if let Some(img) = decode(codes) {
                image::imageops::replace(&mut sheet, &img, (4 + col as u32 * (cell + 4)) as i64, y as i64);
            }
        }
    }
    sheet.save(path).with_context(|| format!("{}: cannot write", path.display()))
}
