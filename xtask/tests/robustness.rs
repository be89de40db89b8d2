//! Hostile and damaged inputs through the command line: each ends in exit status 1 with a
//! message that names the file and what is wrong, never a panic or an abort.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{arg, fixture, stderr, xtask};

/// Asserts a clean failure: exit status 1 (not a panic's 101 or an abort's signal), and stderr
/// that holds every one of `needles`.
fn assert_refused(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected exit status 1, got {:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// A copy of an HF fixture whose config.json is edited by `edit`.
fn edited_hf_copy(dir: &Path, case: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = fixture("hf", case);
    let dst = dir.join(case);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    let path = dst.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    dst
}

fn logits(ck: &Path, dir: &Path) -> Output {
    let ids = fixture("hf", "prenorm_mha").join("input_ids.npy");
    xtask(&["logits", "--checkpoint", arg(ck), "--input", arg(&ids), "--output", arg(&dir.join("out.npy"))])
}

#[test]
fn config_sizes_that_would_exhaust_memory_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let layers = edited_hf_copy(dir.path(), "prenorm_mha", |j| j["num_hidden_layers"] = 1_000_000_000_000u64.into());
    assert_refused(&logits(&layers, dir.path()), &["config.json", "n_layers", "limit"]);
    let vocab = edited_hf_copy(&dir.path().join("v"), "prenorm_mha", |j| j["vocab_size"] = (1u64 << 40).into());
    assert_refused(&logits(&vocab, dir.path()), &["config.json", "vocab_size", "limit"]);
    // Within the limits, but not what the weights hold.
    let more = edited_hf_copy(&dir.path().join("m"), "prenorm_mha", |j| {
        j["num_hidden_layers"] = (j["num_hidden_layers"].as_u64().unwrap() + 3).into()
    });
    assert_refused(&logits(&more, dir.path()), &["config.json", "num_hidden_layers", "the weights hold"]);
}

#[test]
fn a_seq_len_beyond_the_packer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = xtask(&["data", "stats", arg(dir.path()), "--seq-len", "18446744073709551615"]);
    assert_refused(&out, &["--seq-len", "out of range"]);
}

#[test]
fn an_image_that_declares_ten_million_pixels_a_row_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let png = chameleon_data::fixtures::png_declaring(10_000_000, 1);
    let path = dir.path().join("strip.png");
    std::fs::write(&path, &png).unwrap();
    let ck = fixture("vq", "plain_one_block");
    let out = xtask(&[
        "vq",
        "encode",
        "--checkpoint",
        arg(&ck),
        "--input",
        arg(&path),
        "--output",
        arg(&dir.path().join("c.npy")),
    ]);
    assert_refused(&out, &["strip.png", "larger than"]);
}

#[test]
fn export_into_its_own_source_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ck = edited_hf_copy(dir.path(), "prenorm_mha", |_| {});
    let out = xtask(&["export", "--checkpoint", arg(&ck), "--output", arg(&ck.join(".")), "--shard-mb", "1"]);
    assert_refused(&out, &["own folder"]);
    assert!(!ck.join("model.safetensors.index.json").exists());
    let out = xtask(&[
        "logits",
        "--checkpoint",
        arg(&ck),
        "--input",
        arg(&ck.join("input_ids.npy")),
        "--output",
        arg(&dir.path().join("l.npy")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The short fuzzing pass of CI: every parser that reads outside bytes takes mutated inputs and
/// ends each in an error or a result, never a panic (`cargo xtask fuzz --runs 1000000` is the
/// long pass; the README gives its counts).
#[test]
fn a_short_fuzzing_pass_finds_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let crashes = dir.path().join("crashes");
    let out = xtask(&["fuzz", "--runs", "1500", "--seed", "7", "--crashes", arg(&crashes)]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{table}\n{}", stderr(&out));
    for target in ["safetensors", "hf-config", "vq-config", "npy", "shard", "jsonl-sft", "html", "tar"] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(target))
            .unwrap_or_else(|| panic!("{target}: {table}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], "1500", "{row}");
        assert_eq!(cols[3], "0", "{row}");
    }
    assert!(!crashes.exists());
    let out = xtask(&["fuzz", "--targets", "nope"]);
    assert_refused(&out, &["no target \"nope\""]);
}

#[test]
fn an_experiment_or_tokenizer_config_too_large_to_allocate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let exp = common::caption_experiment(dir.path(), 4);
    let text = std::fs::read_to_string(&exp).unwrap();
    for (from, to, field) in
        [("d_model = 32", "d_model = 1000000000", "d_model"), ("n_layers = 2", "n_layers = 1000000000", "n_layers")]
    {
        std::fs::write(&exp, text.replace(from, to)).unwrap();
        let out = xtask(&["train", "--config", arg(&exp), "--run-dir", arg(&dir.path().join("run"))]);
        assert_refused(&out, &["exp.toml", field, "limit"]);
    }
    // A tokenizer directory whose vq_config.json asks for 2^20 pixels a side or 10^8 blocks.
    let vq = dir.path().join("vq");
    let path = vq.join("vq_config.json");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let px = dir.path().join("px.npy");
    for (key, value) in [("resolution", 1u64 << 20), ("num_res_blocks", 100_000_000)] {
        let mut edited = config.clone();
        edited[key] = value.into();
        std::fs::write(&path, edited.to_string()).unwrap();
        // A tokenizer we wrote carries checksums: the edit is found as damage first.
        if vq.join("checksums.json").exists() {
            let out = xtask(&["vq", "encode", "--checkpoint", arg(&vq), "--input", arg(&px), "--output", arg(&px)]);
            assert_refused(&out, &["vq_config.json", "damaged"]);
            std::fs::remove_file(vq.join("checksums.json")).unwrap();
        }
        let out = xtask(&["vq", "encode", "--checkpoint", arg(&vq), "--input", arg(&px), "--output", arg(&px)]);
        assert_refused(&out, &["vq_config.json", key, "limit"]);
    }
}

#[test]
fn a_grid_directory_in_use_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("grid");
    std::fs::create_dir_all(&runs).unwrap();
    let _held = chameleon_train::run_lock::RunLock::acquire(&runs, "ablate").unwrap();
    let exp = common::caption_experiment(dir.path(), 4);
    let grid = format!("{}\n[ablation]\nlearning_rate = [1e-3]\n", std::fs::read_to_string(&exp).unwrap());
    std::fs::write(&exp, grid).unwrap();
    let out =
        xtask(&["ablate", arg(&exp), "--runs-dir", arg(&runs), "--no-tui", "--cache", arg(&dir.path().join("c"))]);
    assert_refused(&out, &["in use by", &format!("pid {} (ablate)", std::process::id())]);
}
