//! The command line as a user runs it: real files in, real files out, clear errors.

mod common;

#[path = "../src/npy.rs"]
#[allow(dead_code)]
mod npy;

use std::path::Path;

use common::{stderr, xtask};
use safetensors::SafeTensors;

/// Golden `(ids, logits)` of a fixture, as flat vectors.
fn golden(case: &str) -> (Vec<usize>, Vec<i64>, Vec<f32>) {
    let bytes = std::fs::read(common::fixture("hf", case).join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let ids_v = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    let logits = st.tensor("logits").unwrap();
    let shape = logits.shape().to_vec();
    let v = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (shape, ids_v, v)
}

/// An int32 `.npy` written the way NumPy does.
fn write_i32_npy(path: &Path, shape: &[usize], data: &[i32]) {
    let dims: Vec<String> = shape.iter().map(|d| format!("{d},")).collect();
    let mut header = format!("{{'descr': '<i4', 'fortran_order': False, 'shape': ({}), }}", dims.join(" "));
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "max |logit diff| = {diff}");
}

#[test]
fn logits_from_numpy_int64_ids_match_hf() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("logits.npy");
    let ck = common::fixture("hf", "prenorm_mha");
    let ids = ck.join("input_ids.npy");
    let out = xtask(&[
        "logits",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--input",
        ids.to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (shape, _, want) = golden("prenorm_mha");
    let got = npy::read_f32(&out_path).unwrap();
    assert_eq!(got.shape, shape);
    assert_close(&got.data, &want);
}

#[test]
fn logits_of_a_sharded_checkpoint_from_int32_ids() {
    logits_match_golden("swin_gqa_theta_sharded_v4config");
}

/// transformers' own test vocabulary (no end-of-turn or image-block tokens, image tokens named by
/// token id) once made `logits` refuse the checkpoint; transformers computes these logits.
#[test]
fn logits_of_a_checkpoint_with_transformers_test_vocabulary() {
    logits_match_golden("transformers_test_vocab");
}

fn logits_match_golden(case: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (shape, ids, want) = golden(case);
    let ids32: Vec<i32> = ids.iter().map(|&v| v as i32).collect();
    let ids_path = dir.path().join("ids.npy");
    write_i32_npy(&ids_path, &shape[..2], &ids32);
    let out_path = dir.path().join("logits.npy");
    let ck = common::fixture("hf", case);
    let out = xtask(&[
        "logits",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--input",
        ids_path.to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_close(&npy::read_f32(&out_path).unwrap().data, &want);
}

#[test]
fn bad_inputs_fail_with_the_file_named_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let ck = common::fixture("hf", "prenorm_mha");
    let out_path = dir.path().join("logits.npy");
    let run = |ck: &Path, ids: &Path| {
        let out = xtask(&[
            "logits",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--input",
            ids.to_str().unwrap(),
            "--output",
            out_path.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    // An id outside the vocabulary (128).
    let ids = dir.path().join("big.npy");
    write_i32_npy(&ids, &[1, 3], &[5, 128, 7]);
    let err = run(&ck, &ids);
    assert!(err.contains("128") && err.contains("big.npy") && err.contains("[0, 1]"), "{err}");
    // Ids of the wrong rank, and of the wrong dtype.
    let ids = dir.path().join("flat.npy");
    write_i32_npy(&ids, &[3], &[1, 2, 3]);
    let err = run(&ck, &ids);
    assert!(err.contains("flat.npy") && err.contains("[batch, seq]"), "{err}");
    let ids = dir.path().join("float.npy");
    npy::write_f32(&ids, &[1, 3], &[1.0, 2.0, 3.0]).unwrap();
    let err = run(&ck, &ids);
    assert!(err.contains("float.npy") && err.contains("<f4"), "{err}");
    // A truncated weights file.
    let bad = dir.path().join("ck");
    std::fs::create_dir(&bad).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(ck.join(f), bad.join(f)).unwrap();
    }
    let weights = bad.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 8]).unwrap();
    let err = run(&bad, &ck.join("input_ids.npy"));
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
    // A missing checkpoint directory.
    let err = run(&dir.path().join("nowhere"), &ck.join("input_ids.npy"));
    assert!(err.contains("nowhere") && err.contains("config.json"), "{err}");
}

#[test]
fn export_writes_a_checkpoint_that_logits_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("bf16");
    let ck = common::fixture("hf", "prenorm_gqa8to2_bf16");
    let out = xtask(&[
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--output",
        exported.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (shape, ids, want) = golden("prenorm_gqa8to2_bf16");
    let ids_path = dir.path().join("ids.npy");
    write_i32_npy(&ids_path, &shape[..2], &ids.iter().map(|&v| v as i32).collect::<Vec<_>>());
    let out_path = dir.path().join("logits.npy");
    let out = xtask(&[
        "logits",
        "--checkpoint",
        exported.to_str().unwrap(),
        "--input",
        ids_path.to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_close(&npy::read_f32(&out_path).unwrap().data, &want);
}

#[test]
fn commands_not_compiled_in_say_so() {
    if !cfg!(feature = "cuda") {
        let out = xtask(&["--device", "cuda", "ablate"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("--features cuda"), "{}", stderr(&out));
    }
}

/// A word-level `tokenizer.json` over the text pieces of an HF fixture's `vocabulary_map`
/// (named `t<id>` there), as HF's `tokenizers` writes one.
fn word_level_tokenizer(config: &Path, out: &Path) {
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    let mut vocab = serde_json::Map::new();
    for (name, id) in config["vocabulary_map"].as_object().unwrap() {
        if name.starts_with('t') || name == "<pad>" {
            vocab.insert(name.clone(), id.clone());
        }
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" }, "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<pad>" }
    });
    std::fs::write(out, json.to_string()).unwrap();
}

#[test]
fn generate_runs_on_an_hf_checkpoint_with_its_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = common::fixture("hf", "prenorm_mha");
    let tokenizer = dir.path().join("tokenizer.json");
    word_level_tokenizer(&checkpoint.join("config.json"), &tokenizer);
    let run = |mode: &str, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "generate",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--mode",
            mode,
            "--out",
        ];
        let out_arg = out.to_str().unwrap().to_string();
        args.push(&out_arg);
        args.extend_from_slice(extra);
        (xtask(&args), out)
    };
    let (out, text_dir) = run("text", "text", &["--prompt", "t10 t11 t12", "--max-new-tokens", "6", "--greedy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let response = std::fs::read_to_string(text_dir.join("response.txt")).unwrap();
    assert!(response.split_whitespace().all(|w| w.starts_with('t')), "{response:?}");
    // HF checkpoints carry no VQ decoder, so an image comes out as its codes.
    let (out, image_dir) = run("image", "image", &["--prompt", "t10 t11"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let codes: Vec<u32> =
        serde_json::from_str(&std::fs::read_to_string(image_dir.join("image-0.codes.json")).unwrap()).unwrap();
    assert_eq!(codes.len(), 16, "an 8 px image with one downsampling: 4 × 4 codes");
    assert!(codes.iter().all(|&c| c < 32), "codebook of 32");
    // A tokenizer that is not the checkpoint's, or none, is refused with the file named.
    let (out, _) = run("text", "oov", &["--prompt", "t10 zebra"]);
    assert!(!out.status.success() && stderr(&out).contains("not a text piece"), "{}", stderr(&out));
    let out = xtask(&[
        "generate",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--prompt",
        "t10",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!out.status.success() && stderr(&out).contains("tokenizer.json"), "{}", stderr(&out));
}
