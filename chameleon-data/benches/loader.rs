//! The batch loader against what training consumes, in tokens/s.
//!
//! - `loader/next_batch`: packed, mixed batches of 8 × 257 tokens from the default prepared
//!   shards (the newest `.cache/shards/*` that `cargo xtask data prepare` wrote, or the folder in
//!   `CHAMELEON_PREPARED`). Without them it says so and skips.
//! - `train_step/default_cpu`: one forward + backward + AdamW step of the default CPU model shape
//!   (d_model 256, 4 layers, 4 heads, batch 8 × 256 tokens, the prepared vocabulary), the rate at
//!   which training consumes tokens.
//!
//! `cargo bench -p chameleon-data --bench loader`

use std::path::{Path, PathBuf};

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_data::DataConfig;
use chameleon_data::loader::{Split, open_mixture};
use chameleon_data::prepare::{MANIFEST_FILE, Prepared};
use chameleon_model::ChameleonConfig;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 8;

fn newest_prepared() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHAMELEON_PREPARED") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/shards");
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST_FILE).is_file())
        .filter_map(|p| Some((std::fs::metadata(p.join(MANIFEST_FILE)).ok()?.modified().ok()?, p)))
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

fn bench(c: &mut Criterion) {
    let Some(dir) = newest_prepared() else {
        eprintln!("no prepared shards: run `cargo xtask data prepare` first (or set CHAMELEON_PREPARED)");
        return;
    };
    let prepared = Prepared::open(&dir).expect("prepared folder");
    let config: DataConfig = prepared.manifest.config.clone();
    let row_len = config.seq_len + 1;

    let mut group = c.benchmark_group("loader");
    group.throughput(Throughput::Elements((BATCH * row_len) as u64));
    let mut mixture = open_mixture(&prepared, &config, Split::Train).expect("mixture");
    let mut step = 0u64;
    group.bench_function("next_batch", |b| {
        b.iter(|| {
            step += 1;
            mixture.next_batch((step % 1000) as f64 / 1000.0, BATCH)
        })
    });
    group.finish();

    let device = Device::flex().autodiff();
    let model_config = ChameleonConfig::new(prepared.manifest.vocab_size, 256, 4, 4);
    let mut model = model_config.init(&device);
    let mut optim = AdamWConfig::new().init();
    let batch = mixture.next_batch(0.0, BATCH);
    let ids: Vec<i64> = batch.tokens.iter().map(|&t| t as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [BATCH, row_len]), &device);
    let inputs = tokens.clone().slice([0..BATCH, 0..row_len - 1]);
    let targets = tokens.slice([0..BATCH, 1..row_len]).reshape([BATCH * (row_len - 1)]);
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * (row_len - 1)) as u64));
    group.bench_function("default_cpu", |b| {
        b.iter(|| {
            let logits = model.forward(inputs.clone());
            let [bsz, len, vocab] = logits.dims();
            let loss = burn::nn::loss::CrossEntropyLossConfig::new()
                .init(&device)
                .forward(logits.reshape([bsz * len, vocab]), targets.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-4, model.clone(), grads);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
