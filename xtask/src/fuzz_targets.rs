//! The parsers that take outside bytes, each as a fuzz target: the bytes become a file (every
//! parser here reads files), the parser reads all of it, and any error is fine; only a panic, an
//! abort or a hang is a finding. `cargo xtask fuzz` drives them with a mutation fuzzer; the
//! libFuzzer targets under `fuzz/` include this same file.
//!
//! Each target also makes its seeds: small valid inputs written by this toolkit's own writers.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use chameleon_data::DocKind;
use chameleon_data::shard::{Shard, ShardWriter};
use chameleon_data::source::{self, SourceFormat, SourceOptions};
use chameleon_model::checkpoint::{
    NamedTensor, SafetensorsFiles, WeightDtype, load_vq_checkpoint, read_hf_config, vq_config_json,
    write_checkpoint_weights,
};
use chameleon_model::vq::VqConfig;

use crate::npy;

/// The targets, by name.
pub const TARGETS: [&str; 13] = [
    "safetensors",
    "hf-index",
    "image",
    "experiment",
    "hf-config",
    "vq-config",
    "npy",
    "shard",
    "jsonl-text",
    "jsonl-caption",
    "jsonl-interleaved",
    "jsonl-sft",
    "html",
];

/// One more target, kept apart because its reader runs a thread per file (slower per input).
pub const TAR: &str = "tar";

/// Every target.
pub fn all() -> Vec<&'static str> {
    TARGETS.iter().copied().chain([TAR]).collect()
}

/// A scratch folder for this process's target (libFuzzer runs one target a process), made on
/// first use, holding what the seeds refer to (an image, an index's shard).
#[allow(dead_code)] // Used by the libFuzzer targets under fuzz/.
pub fn scratch(target: &str) -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("chameleon-fuzz-{}-{target}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary folder is writable");
        seeds(target, &dir);
        dir
    })
}

/// Where a target writes its input: `dir/<file>`, named as the parser expects.
fn input_path(target: &str, dir: &Path) -> PathBuf {
    let name = match target {
        "safetensors" => "model.safetensors",
        "hf-index" => "model.safetensors.index.json",
        "image" => "image.bin",
        "experiment" => "experiment.toml",
        "hf-config" => "config.json",
        "vq-config" => "vq_config.json",
        "npy" => "input.npy",
        "shard" => "input.shard",
        "html" => "page.html",
        "tar" => "input.tar",
        _ => "input.jsonl",
    };
    dir.join(name)
}

/// Runs `target` on `data`, in `dir` (a scratch folder of this target's own, which holds the
/// image that the JSONL seeds name). Returns whether the parser accepted the input.
pub fn run(target: &str, data: &[u8], dir: &Path) -> bool {
    let path = input_path(target, dir);
    if std::fs::write(&path, data).is_err() {
        return false;
    }
    let read_all = |format: SourceFormat, options: &SourceOptions| match source::open(format, &path, options) {
        Ok(docs) => docs.fold(true, |ok, d| ok && d.is_ok()),
        Err(_) => false,
    };
    let options = SourceOptions::default();
    match target {
        "safetensors" => SafetensorsFiles::open_file(&path).is_ok_and(|files| reads_every_tensor(&files)),
        // The index of a sharded checkpoint, beside the one shard its seed names.
        "hf-index" => SafetensorsFiles::open_dir(dir).is_ok_and(|files| reads_every_tensor(&files)),
        // Decoded within the size limits and preprocessed to 16×16.
        "image" => chameleon_data::image::decode_image(data, &path, 16).is_ok(),
        "experiment" => chameleon_train::experiment::Experiment::load(&path).is_ok(),
        "hf-config" => read_hf_config(&path).is_ok(),
        // No weights beside it: the config is read and checked, nothing is allocated.
        "vq-config" => {
            matches!(load_vq_checkpoint(dir, None, &Device::flex()), Err(e) if e.to_string().contains("vqgan.safetensors"))
        }
        "npy" => {
            let ints = npy::read_ints(&path).is_ok();
            npy::read_f32(&path).is_ok() || ints
        }
        "shard" => Shard::open(&path).is_ok_and(|s| (0..s.len()).all(|i| s.tokens(i).len() == s.doc_len(i))),
        "jsonl-text" => read_all(SourceFormat::Text, &options),
        "jsonl-caption" => read_all(SourceFormat::Caption, &options),
        "jsonl-interleaved" => read_all(SourceFormat::Interleaved, &options),
        "jsonl-sft" => read_all(SourceFormat::Sft, &options),
        "html" => read_all(SourceFormat::Html, &SourceOptions { min_image_side: 1, ..options }),
        "tar" => read_all(SourceFormat::WebDataset, &options),
        other => panic!("unknown fuzz target {other:?}"),
    }
}

/// Whether every tensor of `files` reads back, at its stored shape.
fn reads_every_tensor(files: &SafetensorsFiles) -> bool {
    files.names().iter().all(|n| {
        let shape = files.shape(n).map(<[usize]>::to_vec).unwrap_or_default();
        files.read_f32(n, &shape).is_ok()
    })
}

/// Valid inputs of `target`, made with this toolkit's writers; `dir` receives what they refer
/// to (a small PNG for the JSONL, HTML and tar seeds).
pub fn seeds(target: &str, dir: &Path) -> Vec<Vec<u8>> {
    let png = png_bytes();
    std::fs::write(dir.join("a.png"), &png).expect("scratch folder is writable");
    let lines = |ls: &[&str]| ls.join("\n").into_bytes();
    match target {
        "safetensors" => {
            let t = |name: &str, shape: Vec<usize>| NamedTensor {
                name: name.into(),
                values: (0..shape.iter().product::<usize>()).map(|i| i as f32 * 0.5).collect(),
                shape,
            };
            let tensors = [t("model.norm.weight", vec![4]), t("lm_head.weight", vec![3, 4]), t("b", vec![])];
            [WeightDtype::F32, WeightDtype::BF16]
                .into_iter()
                .map(|dtype| {
                    let out = dir.join("seed-st");
                    std::fs::create_dir_all(&out).expect("scratch");
                    write_checkpoint_weights(&out, &tensors, dtype, None).expect("seed");
                    std::fs::read(out.join("model.safetensors")).expect("seed")
                })
                .collect()
        }
        "hf-index" => {
            let st = seeds("safetensors", dir).swap_remove(0);
            std::fs::write(dir.join("model-00001-of-00001.safetensors"), st).expect("scratch");
            let index = serde_json::json!({
                "metadata": { "total_size": 76 },
                "weight_map": {
                    "model.norm.weight": "model-00001-of-00001.safetensors",
                    "lm_head.weight": "model-00001-of-00001.safetensors",
                    "b": "model-00001-of-00001.safetensors",
                },
            });
            vec![index.to_string().into_bytes()]
        }
        "image" => {
            let mut jpeg = Vec::new();
            let img = image::RgbImage::from_fn(12, 9, |x, y| image::Rgb([(x * 20) as u8, (y * 25) as u8, 90]));
            img.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).expect("JPEG in memory");
            let mut webp = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut webp), image::ImageFormat::WebP).expect("WebP in memory");
            vec![png, jpeg, webp]
        }
        "experiment" => ["smoke.toml", "sft.toml"]
            .iter()
            .map(|f| {
                std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments").join(f)).expect("committed")
            })
            .collect(),
        "hf-config" => ["prenorm_mha", "swin_gqa_theta_sharded_v4config", "transformers_test_vocab"]
            .iter()
            .map(|case| {
                let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../chameleon-model/tests/fixtures/hf")
                    .join(case)
                    .join("config.json");
                std::fs::read(path).expect("committed fixture")
            })
            .collect(),
        "vq-config" => {
            let small = VqConfig::new().with_resolution(32).with_channel_multiplier(vec![1, 2]).with_num_embeddings(64);
            [VqConfig::new(), small].iter().map(|c| vq_config_json(c).to_string().into_bytes()).collect()
        }
        "npy" => {
            let f = dir.join("seed.npy");
            npy::write_i64(&f, &[2, 3], &[1, 2, 3, 4, 5, 6]).expect("seed");
            let ints = std::fs::read(&f).expect("seed");
            npy::write_f32(&f, &[4], &[0.5, -1.0, 2.0, 3.0]).expect("seed");
            vec![ints, std::fs::read(&f).expect("seed")]
        }
        "shard" => {
            let f = dir.join("seed.shard");
            let mut w = ShardWriter::create(&f, 300).expect("seed");
            w.push(DocKind::Text, &[1, 2, 3, 299]).expect("seed");
            w.push(DocKind::Caption, &[5, 6]).expect("seed");
            w.finish().expect("seed");
            vec![std::fs::read(&f).expect("seed")]
        }
        "jsonl-text" => vec![lines(&[r#"{"text": "To be, or not to be"}"#, r#"{"text": "that is the question"}"#])],
        "jsonl-caption" => vec![lines(&[r#"{"image": "a.png", "caption": "a red square"}"#])],
        "jsonl-interleaved" => {
            vec![lines(&[r#"{"texts": ["before", null, "after"], "images": [null, "a.png", null]}"#])]
        }
        "jsonl-sft" => vec![lines(&[
            r#"{"category": "chat", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
            r#"{"category": "visual-chat", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"text": "what is"}, {"image": "a.png"}]}, {"role": "assistant", "content": "red"}]}"#,
        ])],
        "html" => vec![
            b"<html><head><title>t</title><style>p{}</style></head><body><p>Some &amp; text</p>\
              <img src=\"a.png\" alt=\"a square\"><script>x</script><p>more</p></body></html>"
                .to_vec(),
        ],
        "tar" => {
            let mut builder = tar::Builder::new(Vec::new());
            for (name, data) in
                [("k1.png", &png[..]), ("k1.txt", b"a red square"), ("k2.png", &png[..]), ("k2.txt", b"again")]
            {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder.append_data(&mut header, name, data).expect("seed");
            }
            vec![builder.into_inner().expect("seed")]
        }
        other => panic!("unknown fuzz target {other:?}"),
    }
}

fn png_bytes() -> Vec<u8> {
    let mut bytes = Vec::new();
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 30, 30]));
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).expect("PNG in memory");
    bytes
}
