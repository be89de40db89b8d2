//! `prepare` end to end on small generated sources: caption orders, held-out split, the content
//! cache, bad records (stop or skip), and batches whose image blocks are whole.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use chameleon_data::config::{DataConfig, ImagesConfig, SourceConfig, SourceKind};
use chameleon_data::fixtures;
use chameleon_data::loader::{Split, open_mixture, open_source};
use chameleon_data::mixture::Stage;
use chameleon_data::prepare::{ImageCoder, PrepareError, prepare};
use chameleon_data::tokenizer::TokenizerConfig;
use chameleon_model::vq::VqVae;

fn png(path: &Path, seed: u8) {
    fixtures::write_png(path, seed).unwrap();
}

/// 20 caption pairs with distinct images.
fn captions(dir: &Path) -> PathBuf {
    fixtures::write_caption_pairs(dir, 20, |i| format!("a picture number {i}")).unwrap()
}

fn config(pairs: &Path, vq_dir: &Path, share: f64) -> DataConfig {
    DataConfig {
        seq_len: 40,
        seed: 1,
        caption_generation_share: share,
        held_out_every: 5,
        tokenizer: TokenizerConfig { model: Some(fixtures::tokenizer_model()), ..TokenizerConfig::default() },
        images: ImagesConfig { vq_checkpoint: vq_dir.to_path_buf(), vq_experiment: None },
        sources: vec![SourceConfig {
            name: "pairs".into(),
            format: SourceKind::Caption,
            path: Some(pairs.to_path_buf()),
            min_image_side: 32,
            modality_weights: None,
            category: None,
            images_anywhere: false,
        }],
        stages: vec![Stage { start: 0.0, weights: [("pairs".to_string(), 1.0)].into() }],
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    pairs: PathBuf,
    vq_dir: PathBuf,
    model: VqVae,
    device: Device,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let pairs = captions(&root);
    let device = Device::flex();
    let vq_dir = root.join("vq");
    let model = fixtures::tiny_vq(&vq_dir, &device).unwrap();
    Fixture { _dir: dir, root, pairs, vq_dir, model, device }
}

#[test]
fn caption_pairs_come_in_both_orders_and_the_cache_is_reused() {
    let f = fixture();
    let coder = ImageCoder { model: &f.model, dir: &f.vq_dir, device: &f.device };
    let cache = f.root.join("cache");
    let data = config(&f.pairs, &f.vq_dir, 0.5);
    let prepared = prepare(&data, &coder, &cache, false, false).unwrap();
    assert!(prepared.built);
    let s = &prepared.manifest.sources[0];
    assert_eq!((s.documents, s.held_out_documents), (16, 4));
    assert_eq!(s.images, 20);
    assert!(s.captions_first > 0 && s.images_first > 0, "{s:?}");
    assert_eq!(s.captions_first + s.images_first, 20);

    // The shards agree: documents start with begin-image (understanding) or with text
    // (generation), and every image block holds exactly 16 codes.
    let layout = prepared.tokenizer().unwrap().layout().clone();
    let sp = layout.special();
    let (mut image_first, mut text_first) = (0, 0);
    for split in [Split::Train, Split::HeldOut] {
        let set = open_source(&prepared, "pairs", split).unwrap();
        for i in 0..set.len() {
            let mut t = Vec::new();
            set.tokens_into(i, &mut t);
            let b = t.iter().position(|&x| x == sp.begin_image).unwrap();
            let e = t.iter().position(|&x| x == sp.end_image).unwrap();
            assert_eq!(e - b - 1, 16);
            assert!(t[b + 1..e].iter().all(|&x| layout.image_code(x).is_some()));
            if b == 0 { image_first += 1 } else { text_first += 1 }
        }
    }
    assert_eq!((text_first, image_first), (s.captions_first, s.images_first));

    // Same inputs: found in the cache, same folder, no work.
    let again = prepare(&data, &coder, &cache, false, false).unwrap();
    assert!(!again.built);
    assert_eq!(again.dir, prepared.dir);
    // Stages and sequence length are the loader's business: still a cache hit.
    let mut restaged = data.clone();
    restaged.seq_len = 64;
    restaged.stages[0].weights.insert("pairs".into(), 3.0);
    assert!(!prepare(&restaged, &coder, &cache, false, false).unwrap().built);
    // What a prepare killed mid-way leaves: its partial folder, named for a pid that is gone.
    let stale = cache.join("shards").join("0123456789abcdef.partial-2147483646");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("pairs.train.shard"), b"half").unwrap();
    // An image the captions point at changed: a miss, though the JSONL did not change.
    png(&f.root.join("img5.png"), 200);
    let redrawn = prepare(&data, &coder, &cache, false, false).unwrap();
    assert!(redrawn.built);
    assert_ne!(redrawn.dir, prepared.dir);
    // Another caption share is another key.
    let all_first = prepare(&config(&f.pairs, &f.vq_dir, 1.0), &coder, &cache, false, false).unwrap();
    assert!(all_first.built);
    assert_ne!(all_first.dir, prepared.dir);
    assert_eq!(all_first.manifest.sources[0].images_first, 0);
    // No partial folder is left behind, and the stale one was swept by the next build.
    let names: Vec<String> = std::fs::read_dir(cache.join("shards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".partial")), "{names:?}");
}

#[test]
fn batches_from_prepared_shards_keep_images_whole() {
    let f = fixture();
    let coder = ImageCoder { model: &f.model, dir: &f.vq_dir, device: &f.device };
    let data = config(&f.pairs, &f.vq_dir, 0.5);
    let prepared = prepare(&data, &coder, &f.root.join("cache"), false, false).unwrap();
    let sp = prepared.tokenizer().unwrap().layout().special();
    let mut mixture = open_mixture(&prepared, &data, Split::Train).unwrap();
    for _ in 0..30 {
        let batch = mixture.next_batch(0.0, 4);
        for row in batch.tokens.chunks(batch.row_len) {
            let mut inside = false;
            let mut codes = 0;
            for &t in row {
                if t == sp.begin_image {
                    assert!(!inside);
                    inside = true;
                    codes = 0;
                } else if t == sp.end_image {
                    assert!(inside && codes == 16, "{row:?}");
                    inside = false;
                } else if inside {
                    codes += 1;
                }
            }
            assert!(!inside, "a row ends inside an image: {row:?}");
        }
    }
    // seq_len too short for one image block is refused with the reason.
    let mut short = data.clone();
    short.seq_len = 12;
    let err = open_mixture(&prepared, &short, Split::Train).err().unwrap().to_string();
    assert!(err.contains("cannot hold one image block"), "{err}");
}

#[test]
fn a_bad_record_stops_prepare_unless_skipped() {
    let f = fixture();
    let coder = ImageCoder { model: &f.model, dir: &f.vq_dir, device: &f.device };
    // A truncated image, a missing file and a bad JSON line among good ones.
    let bytes = std::fs::read(f.root.join("img3.png")).unwrap();
    std::fs::write(f.root.join("img3.png"), &bytes[..bytes.len() / 3]).unwrap();
    let mut text = std::fs::read_to_string(&f.pairs).unwrap();
    text.push_str("{\"image\": \"nowhere.png\", \"caption\": \"lost\"}\n{not json\n");
    std::fs::write(&f.pairs, text).unwrap();
    let data = config(&f.pairs, &f.vq_dir, 0.5);
    let err = prepare(&data, &coder, &f.root.join("cache"), false, false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PrepareError::Bad(_)), "{msg}");
    assert!(msg.contains("pairs.jsonl") && msg.contains("--skip-bad"), "{msg}");
    let prepared = prepare(&data, &coder, &f.root.join("cache"), true, false).unwrap();
    let s = &prepared.manifest.sources[0];
    assert_eq!(s.skipped_bad, 3, "{s:?}");
    assert_eq!(s.documents + s.held_out_documents, 19);
}
