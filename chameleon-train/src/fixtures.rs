//! A tiny experiment with generated data, for tests and `cargo xtask device-check`: nothing is
//! downloaded and nothing is read from the source tree.

use std::path::Path;

use burn::tensor::Device;
use chameleon_data::Prepared;
use chameleon_data::config::{DataConfig, ImagesConfig, SourceConfig, SourceKind};
use chameleon_data::fixtures;
use chameleon_data::mixture::Stage;
use chameleon_data::prepare::{ImageCoder, prepare};
use chameleon_data::tokenizer::TokenizerConfig;
use chameleon_model::ChameleonConfig;

use crate::experiment::{Experiment, TrainConfig};
use crate::optim::{OptimConfig, Schedule};

/// A tiny experiment and its data, prepared in `root` on `device` (reseeding its RNG): 24
/// caption pairs, a random VQ (16 codes per image), the fixture tokenizer; d 32, 2 layers, 2
/// heads, dropout 0.1, z-loss 1e-4; 8 steps of 2 micro-batches of 2 × 40 tokens, a checkpoint
/// every 4.
pub fn tiny_experiment(root: &Path, device: &Device) -> Result<(Experiment, Prepared), Box<dyn std::error::Error>> {
    let pairs = fixtures::write_caption_pairs(root, 24, |i| format!("picture {i} of a king"))?;
    // The same random VQ, and so the same image codes, every time.
    device.seed(5);
    let vq = fixtures::tiny_vq(&root.join("vq"), device)?;
    let data = DataConfig {
        seq_len: 40,
        seed: 3,
        caption_generation_share: 0.5,
        held_out_every: 6,
        tokenizer: TokenizerConfig {
            model: Some(fixtures::write_tokenizer_model(root)?),
            ..TokenizerConfig::default()
        },
        images: ImagesConfig { vq_checkpoint: root.join("vq"), vq_experiment: None },
        sources: vec![SourceConfig {
            name: "pairs".into(),
            format: SourceKind::Caption,
            path: Some(pairs),
            min_image_side: 32,
            modality_weights: None,
            category: None,
            images_anywhere: false,
        }],
        stages: vec![Stage { start: 0.0, weights: [("pairs".to_string(), 1.0)].into() }],
    };
    let coder = ImageCoder { model: &vq, dir: &root.join("vq"), device };
    let prepared = prepare(&data, &coder, &root.join("cache"), false, false)?;
    let exp = Experiment {
        model: ChameleonConfig::new(0, 32, 2, 2).with_residual_dropout(0.1).with_attention_dropout(0.1),
        data,
        optim: OptimConfig { learning_rate: 3e-3, ..OptimConfig::default() },
        schedule: Schedule { warmup_steps: 2, ..Schedule::default() },
        train: TrainConfig {
            steps: 8,
            micro_batch: 2,
            batch_tokens: 160,
            z_loss: 1e-4,
            checkpoint_every: 4,
            seed: 11,
            ..TrainConfig::default()
        },
    };
    Ok((exp, prepared))
}

/// Each metrics row of the run in `run` that has `key`: its step and the value as written (JSON
/// text), in file order. For comparing runs value for value.
pub fn written(run: &Path, key: &str) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join(crate::trainer::METRICS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v["step"].as_u64()?, v.get(key)?.to_string()))
        })
        .collect()
}
