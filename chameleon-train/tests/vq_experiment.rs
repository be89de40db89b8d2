//! VQ experiment files: good ones load, bad ones are refused with the file and key named; and a
//! tiny real training run writes everything it promises.

use std::path::Path;

use burn::tensor::Device;
use chameleon_model::checkpoint::load_vq_checkpoint;
use chameleon_train::vq_train::{Reconstruction, VqExperiment, train_vq};

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("exp.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_shipped_experiment_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/vq-emoji.toml");
    let exp = VqExperiment::load(&path).unwrap();
    assert_eq!(exp.vq.codes_per_image(), 64);
    assert_eq!(exp.train.reconstruction, Reconstruction::L1);
}

#[test]
fn missing_keys_take_defaults_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let exp = VqExperiment::load(&write(dir.path(), "[vq]\nresolution = 64\n[train]\nsteps = 7\n")).unwrap();
    assert_eq!((exp.vq.resolution, exp.vq.num_embeddings, exp.train.steps), (64, 8192, 7));

    let cases = [
        ("[train]\nstpes = 3\n", "train.stpes"),
        ("[vq]\nbase_chanels = 32\n", "vq.base_chanels"),
        ("[model]\n", "model"),
        ("[vq]\nbase_channels = 48\n", "base_channels"),
        ("[train]\nreconstruction = \"l3\"\n", "l3"),
        ("[train]\nsteps = 0\n", "train.steps"),
        ("[train]\nlearning_rate = -1.0\n", "learning_rate"),
        ("[vq\n", "not valid TOML"),
    ];
    for (text, named) in cases {
        let path = write(dir.path(), text);
        let err = VqExperiment::load(&path).unwrap_err().to_string();
        assert!(err.contains("exp.toml") && err.contains(named), "{text:?} -> {err}");
    }
}

#[test]
fn a_tiny_run_trains_restarts_dead_codes_and_writes_a_loadable_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[vq]\nresolution = 16\nbase_channels = 32\nchannel_multiplier = [1, 1]\nnum_res_blocks = 1\n\
         latent_channels = 32\nembed_dim = 8\nnum_embeddings = 64\n\
         [train]\nsteps = 6\nbatch_size = 4\nwarmup_steps = 1\neval_every = 3\nrestart_dead_every = 2\n\
         checkpoint_every = 2\nkeep_checkpoints = 1\n",
    );
    let exp = VqExperiment::load(&path).unwrap();
    let out = dir.path().join("run");
    let device = Device::flex();
    let report = train_vq(&exp, &out, &device, false).unwrap();
    assert_eq!(report.steps, 6);
    assert!(report.held_out_images > 0 && report.train_images > 10 * report.held_out_images / 2);
    assert!(report.held_out.psnr.is_finite() && report.held_out.psnr > 0.0);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|l| l["recon"].as_f64().unwrap().is_finite()));
    assert!(lines[2]["heldout_psnr"].is_number() && lines[1]["heldout_psnr"].is_null());
    // With 4 images of 16 codes per step, most of 64 codes are idle: restarts happen.
    assert!(lines.iter().any(|l| l["restarted_codes"].as_u64().unwrap() > 0));
    // Only the newest intermediate checkpoint is kept, plus the final tokenizer.
    let mut dirs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    dirs.sort();
    assert_eq!(dirs, vec!["checkpoint-000004".to_string()]);
    for f in ["config.toml", "heldout_sheet.png", "report.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let resolved = VqExperiment::load(&out.join("config.toml")).unwrap();
    assert_eq!(resolved, exp);
    let vq = load_vq_checkpoint(&report.checkpoint, None, &device).unwrap();
    assert!(vq.decoder.is_some());
    assert_eq!(vq.config, exp.vq);
}
