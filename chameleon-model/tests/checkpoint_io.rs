//! Export round trips and every way a checkpoint can be wrong.

mod common;

use std::path::Path;

use burn::tensor::Device;
use chameleon_model::checkpoint::{
    ExportOptions, NamedTensor, SafetensorsFiles, WeightDtype, load_hf_checkpoint, save_hf_checkpoint,
    write_checkpoint_weights,
};
use common::{fixture, golden, max_abs_diff};

fn copy_fixture(case: &str, to: &Path) {
    for entry in std::fs::read_dir(fixture(case)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    load_hf_checkpoint(dir, &Device::flex()).expect_err("load must fail").to_string()
}

#[test]
fn export_then_import_gives_the_same_logits_in_every_layout() {
    let device = Device::flex();
    for case in ["prenorm_mha", "swin_gqa_theta_sharded_v4config", "swin_bias_f16"] {
        let src = load_hf_checkpoint(&fixture(case), &device).unwrap();
        let vocab = src.vocab.clone().unwrap();
        let (ids, _) = golden(case, &device);
        let reference = src.model.forward(ids.clone());
        let single = ExportOptions { dtype: WeightDtype::F32, max_shard_bytes: None };
        let sharded = ExportOptions { dtype: WeightDtype::F32, max_shard_bytes: Some(40_000) };
        // One folder for all three: each export replaces the one before, whatever its layout
        // (a stale model.safetensors beside a new index would be loaded instead of it).
        let dir = tempfile::tempdir().unwrap();
        for options in [single, sharded, single, sharded] {
            save_hf_checkpoint(&src.model, &vocab, Some(&src.hf_config), &src.vq_tensors, dir.path(), options).unwrap();
            assert_eq!(dir.path().join("model.safetensors.index.json").is_file(), options.max_shard_bytes.is_some());
            assert_eq!(dir.path().join("model.safetensors").is_file(), options.max_shard_bytes.is_none());
            let shards = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("model-"))
                .count();
            assert_eq!(shards > 0, options.max_shard_bytes.is_some(), "{case}: shards of an earlier export left");
            let back = load_hf_checkpoint(dir.path(), &device).unwrap();
            assert_eq!(back.model.config, src.model.config, "{case}");
            assert_eq!(back.vocab.as_ref(), Some(&vocab), "{case}");
            assert_eq!(back.hf_config["vq_config"], src.hf_config["vq_config"], "{case}: vq_config carried");
            assert!(!src.vq_tensors.is_empty());
            let names = |t: &[chameleon_model::checkpoint::NamedTensor]| {
                t.iter().map(|t| (t.name.clone(), t.values.clone())).collect::<Vec<_>>()
            };
            assert_eq!(names(&back.vq_tensors), names(&src.vq_tensors), "{case}: VQ tensors carried");
            let diff = max_abs_diff(back.model.forward(ids.clone()), reference.clone());
            assert_eq!(diff, 0.0, "{case}: f32 export must be exact");
            assert!(!dir.path().read_dir().unwrap().any(|e| e.unwrap().path().extension() == Some("tmp".as_ref())));
        }
    }
}

#[test]
fn half_precision_exports_round_the_weights_once() {
    let device = Device::flex();
    // bf16 -> f32 -> bf16 is exact, so re-exporting a bf16 checkpoint in bf16 changes nothing.
    let src = load_hf_checkpoint(&fixture("prenorm_gqa8to2_bf16"), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = ExportOptions { dtype: WeightDtype::BF16, max_shard_bytes: None };
    save_hf_checkpoint(&src.model, src.vocab.as_ref().unwrap(), None, &[], dir.path(), options).unwrap();
    let back = load_hf_checkpoint(dir.path(), &device).unwrap();
    let (ids, _) = golden("prenorm_gqa8to2_bf16", &device);
    assert_eq!(max_abs_diff(back.model.forward(ids.clone()), src.model.forward(ids)), 0.0);
    // An f32 model written as f16 is close, not equal.
    let src = load_hf_checkpoint(&fixture("prenorm_mha"), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = ExportOptions { dtype: WeightDtype::F16, max_shard_bytes: None };
    save_hf_checkpoint(&src.model, src.vocab.as_ref().unwrap(), None, &[], dir.path(), options).unwrap();
    let back = load_hf_checkpoint(dir.path(), &device).unwrap();
    let (ids, _) = golden("prenorm_mha", &device);
    let diff = max_abs_diff(back.model.forward(ids.clone()), src.model.forward(ids));
    assert!(diff > 0.0 && diff < 0.05, "f16 rounding moved logits by {diff}");
}

#[test]
fn a_model_without_qk_norm_round_trips_through_our_extension_key() {
    let device = Device::flex();
    let mut src = load_hf_checkpoint(&fixture("prenorm_mha"), &device).unwrap();
    for layer in &mut src.model.layers {
        layer.self_attn.q_norm = None;
        layer.self_attn.k_norm = None;
    }
    src.model.config.qk_norm = false;
    let dir = tempfile::tempdir().unwrap();
    save_hf_checkpoint(&src.model, src.vocab.as_ref().unwrap(), None, &[], dir.path(), ExportOptions::default())
        .unwrap();
    let back = load_hf_checkpoint(dir.path(), &device).unwrap();
    assert!(!back.model.config.qk_norm);
    let (ids, _) = golden("prenorm_mha", &device);
    assert_eq!(max_abs_diff(back.model.forward(ids.clone()), src.model.forward(ids)), 0.0);
}

#[test]
fn a_truncated_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("prenorm_mha", dir.path());
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn an_index_that_points_outside_its_folder_is_refused() {
    for target in ["/etc/passwd", "../../x.safetensors", "a/../../x.safetensors"] {
        let dir = tempfile::tempdir().unwrap();
        copy_fixture("swin_gqa_theta_sharded_v4config", dir.path());
        let index = dir.path().join("model.safetensors.index.json");
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        json["weight_map"]["model.norm.weight"] = target.into();
        std::fs::write(&index, json.to_string()).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("model.safetensors.index.json") && err.contains("model.norm.weight"), "{err}");
        assert!(err.contains("outside the checkpoint's folder"), "{err}");
    }
}

#[test]
fn a_truncated_shard_names_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("swin_gqa_theta_sharded_v4config", dir.path());
    let shard = dir.path().join("model-00002-of-00006.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model-00002-of-00006.safetensors"), "{err}");
}

/// Rewrites the header of a safetensors file with `edit`, keeping its data.
fn edit_header(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn a_bad_offset_is_blamed_on_its_own_tensor() {
    let shift = |by: u64, both: bool| {
        move |h: &mut serde_json::Value| {
            let o = h["model.norm.weight"]["data_offsets"].as_array().unwrap().clone();
            let (a, b) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
            h["model.norm.weight"]["data_offsets"] = serde_json::json!([if both { a + by } else { a }, b + by]);
        }
    };
    for (edit, says) in [
        (Box::new(shift(4, false)) as Box<dyn Fn(&mut serde_json::Value)>, "shape and dtype need"),
        (Box::new(shift(1 << 40, true)), "runs past"),
        (Box::new(shift(4, true)), "overlap"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_fixture("prenorm_mha", dir.path());
        let path = dir.path().join("model.safetensors");
        edit_header(&path, |h| edit(h));
        let err = load_err(dir.path());
        assert!(err.contains("`model.norm.weight`") && err.contains(says), "{err}");
        assert!(!err.contains("Io(") && !err.contains("InvalidOffset"), "{err}");
    }
    // A shape whose element count overflows even 128 bits: an error, not a panic.
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("prenorm_mha", dir.path());
    let path = dir.path().join("model.safetensors");
    edit_header(&path, |h| h["model.norm.weight"]["shape"] = serde_json::json!([u64::MAX, u64::MAX, u64::MAX]));
    assert!(load_err(dir.path()).contains("model.safetensors"));
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("prenorm_mha", dir.path());
    let files = SafetensorsFiles::open_dir(&fixture("prenorm_mha")).unwrap();
    let missing = "model.layers.1.mlp.up_proj.weight";
    let kept: Vec<NamedTensor> = files
        .names()
        .into_iter()
        .filter(|n| *n != missing)
        .map(|n| {
            let shape = files.shape(n).unwrap().to_vec();
            NamedTensor { name: n.to_string(), values: files.read_f32(n, &shape).unwrap(), shape }
        })
        .collect();
    write_checkpoint_weights(dir.path(), &kept, WeightDtype::F32, None).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains(missing) && err.contains("model.safetensors") && err.contains("missing"), "{err}");
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
}

#[test]
fn a_config_that_disagrees_with_the_weights_is_refused_by_name() {
    // A wrong width: the first tensor whose shape disagrees is named, with the file.
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("prenorm_mha", dir.path());
    edit_config(dir.path(), |c| c["intermediate_size"] = 128.into());
    let err = load_err(dir.path());
    assert!(err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("[96, 64]"), "{err}");

    // Fewer or more layers than the weights hold: said before anything is loaded.
    for layers in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        copy_fixture("prenorm_mha", dir.path());
        edit_config(dir.path(), |c| c["num_hidden_layers"] = layers.into());
        let err = load_err(dir.path());
        assert!(err.contains(&format!("`num_hidden_layers` = {layers}, but the weights hold 2 layer(s)")), "{err}");
        assert!(err.contains("config.json"), "{err}");
    }

    // A config that describes no valid model names the key and the file.
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("prenorm_mha", dir.path());
    edit_config(dir.path(), |c| c["num_attention_heads"] = 5.into());
    let err = load_err(dir.path());
    assert!(err.contains("config.json") && err.contains("n_heads"), "{err}");

    // Unsupported RoPE scaling is refused rather than silently ignored.
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("prenorm_mha", dir.path());
    edit_config(dir.path(), |c| c["rope_parameters"]["rope_type"] = "linear".into());
    assert!(load_err(dir.path()).contains("rope_type"));
}

#[test]
fn a_directory_without_weights_says_what_it_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("prenorm_mha").join("config.json"), dir.path().join("config.json")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors.index.json"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    assert!(load_err(empty.path()).contains("config.json"));
}
