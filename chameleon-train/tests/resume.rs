//! A run stopped after a checkpoint and resumed writes, from there on, the same losses to the
//! last bit as an uninterrupted run (dropout, gradient accumulation and z-loss all on).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use chameleon_data::config::{DataConfig, ImagesConfig, SourceConfig, SourceKind};
use chameleon_data::fixtures;
use chameleon_data::mixture::Stage;
use chameleon_data::prepare::{ImageCoder, prepare};
use chameleon_data::tokenizer::TokenizerConfig;
use chameleon_model::ChameleonConfig;
use chameleon_model::Precision;
use chameleon_train::experiment::{Experiment, TrainConfig};
use chameleon_train::optim::{OptimConfig, Schedule};
use chameleon_train::speed::{Peak, flops_per_token};
use chameleon_train::trainer::{METRICS_FILE, RunOptions, train};

fn losses(run: &Path) -> BTreeMap<u64, (String, String)> {
    std::fs::read_to_string(run.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), (v["loss"].to_string(), v["grad_norm"].to_string()))
        })
        .collect()
}

/// burn's RNG (dropout, initialisation) is one per process and tests run on threads of one
/// process: each test holds this while it trains, or the runs would draw from each other's stream.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A tiny experiment (gradient accumulation 2, dropout and z-loss on) and its prepared data.
fn setup(root: &Path, device: &Device) -> (Experiment, chameleon_data::Prepared) {
    // Data: 24 caption pairs, a tiny random VQ tokenizer (16 codes per image), the fixture tokenizer.
    let pairs = fixtures::write_caption_pairs(root, 24, |i| format!("picture {i} of a king")).unwrap();
    let vq = fixtures::tiny_vq(&root.join("vq"), device).unwrap();
    let data = DataConfig {
        seq_len: 40,
        seed: 3,
        caption_generation_share: 0.5,
        held_out_every: 6,
        tokenizer: TokenizerConfig { model: Some(fixtures::tokenizer_model()), ..TokenizerConfig::default() },
        images: ImagesConfig { vq_checkpoint: root.join("vq"), vq_experiment: None },
        sources: vec![SourceConfig {
            name: "pairs".into(),
            format: SourceKind::Caption,
            path: Some(pairs),
            min_image_side: 32,
            modality_weights: None,
            category: None,
        }],
        stages: vec![Stage { start: 0.0, weights: [("pairs".to_string(), 1.0)].into() }],
    };
    let coder = ImageCoder { model: &vq, dir: &root.join("vq"), device };
    let prepared = prepare(&data, &coder, &root.join("cache"), false, false).unwrap();
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
    assert_eq!(exp.accumulation(), 2);
    (exp, prepared)
}

#[test]
fn resume_after_a_checkpoint_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let (exp, prepared) = setup(root, &device);

    let whole = root.join("whole");
    let status = train(&exp, &prepared, &whole, &device, &RunOptions::default()).unwrap();
    assert_eq!((status.state.as_str(), status.step), ("done", 8));

    let split = root.join("split");
    let first = RunOptions { max_steps: Some(4), ..RunOptions::default() };
    assert_eq!(train(&exp, &prepared, &split, &device, &first).unwrap().step, 4);
    let again = RunOptions { resume: true, ..RunOptions::default() };
    assert_eq!(train(&exp, &prepared, &split, &device, &again).unwrap().step, 8);

    let (a, b) = (losses(&whole), losses(&split));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "losses and gradient norms differ after resume");
    // The losses are real numbers that moved: not a constant that would match trivially.
    let first_loss: f64 = a[&1].0.parse().unwrap();
    let last_loss: f64 = a[&8].0.parse().unwrap();
    assert!(first_loss.is_finite() && first_loss > 1.0 && last_loss != first_loss);

    // A run with another seed differs (initialisation and dropout depend on it).
    let mut other = exp.clone();
    other.train.seed = 12;
    let third = root.join("other");
    train(&other, &prepared, &third, &device, &RunOptions { max_steps: Some(2), ..RunOptions::default() }).unwrap();
    assert_ne!(losses(&third)[&2], a[&2]);
}

#[test]
fn bf16_mixed_precision_with_accumulation_follows_f32_and_metrics_carry_mfu_and_sparse_probes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let (exp, prepared) = setup(root, &device);
    let peak = Some(Peak { flops: 1e9, source: "test".into() });
    let f32_run = root.join("f32");
    train(
        &exp,
        &prepared,
        &f32_run,
        &device,
        &RunOptions { max_steps: Some(6), peak: peak.clone(), ..RunOptions::default() },
    )
    .unwrap();

    let mut mixed = exp.clone();
    mixed.train.precision = Precision::Bf16;
    mixed.train.probe_every = 4;
    let bf16_run = root.join("bf16");
    let status =
        train(&mixed, &prepared, &bf16_run, &device, &RunOptions { max_steps: Some(6), peak, ..RunOptions::default() })
            .unwrap();
    assert_eq!(status.step, 6);

    let rows = |run: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join(METRICS_FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (full, half) = (rows(&f32_run), rows(&bf16_run));
    for (a, b) in full.iter().zip(&half) {
        let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((la - lb).abs() < 0.05 * la, "step {}: f32 loss {la}, bf16 loss {lb}", a["step"]);
        let mfu = b["mfu"].as_f64().unwrap();
        let model = ChameleonConfig { vocab_size: prepared.manifest.vocab_size, ..exp.model.clone() };
        let expected = b["tokens_per_s"].as_f64().unwrap() * flops_per_token(&model, 40) / 1e9;
        assert!((mfu - expected).abs() <= 1e-9 * expected, "{mfu} vs {expected}");
    }
    // Probed: steps 0 and 4 (rows 1 and 5) and the schedule's last (row 8, not reached); the
    // others carry no probes. The schedule does not depend on --max-steps.
    let probed: Vec<u64> =
        half.iter().filter(|r| r.get("max_attn_logit").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(probed, vec![1, 5]);
    assert!(full.iter().all(|r| r.get("max_attn_logit").is_some()), "probe_every defaults to every step");
}

#[test]
fn resume_is_exact_with_sparse_probes_and_no_dropout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let (mut exp, prepared) = setup(root, &device);
    exp.model = exp.model.clone().with_residual_dropout(0.0).with_attention_dropout(0.0);
    exp.train.probe_every = 3;
    let whole = root.join("whole");
    train(&exp, &prepared, &whole, &device, &RunOptions::default()).unwrap();
    let split = root.join("split");
    train(&exp, &prepared, &split, &device, &RunOptions { max_steps: Some(4), ..RunOptions::default() }).unwrap();
    train(&exp, &prepared, &split, &device, &RunOptions { resume: true, ..RunOptions::default() }).unwrap();
    assert_eq!(losses(&whole), losses(&split), "a resumed run with sparse probes differs");
    assert_eq!(losses(&whole).len(), 8);
}
