//! Criterion benches of the workloads `cargo xtask bench` times (see `chameleon_train::bench`):
//! `cargo bench -p chameleon-train --bench speed`. On the CPU (burn flex); `cargo xtask bench`
//! adds the PyTorch side, MFU and other devices.

use burn::tensor::Device;
use chameleon_model::Precision;
use chameleon_train::bench::{Decode, TrainStep, VqEncode, bench_model, bench_vq};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn speed(c: &mut Criterion) {
    let device = Device::flex();
    let mut group = c.benchmark_group("chameleon");
    group.sample_size(10);
    for fixes in [false, true] {
        let mut step = TrainStep::new(&bench_model(fixes), 8, 256, Precision::F32, &device);
        group.throughput(Throughput::Elements(step.tokens() as u64));
        group.bench_function(format!("P1 train step, fixes {}", if fixes { "on" } else { "off" }), |b| {
            b.iter(|| step.run())
        });
    }
    for batch in [1, 8] {
        let decode = Decode::new(&bench_model(false), batch, 32, 64, &device);
        group.throughput(Throughput::Elements(decode.tokens() as u64));
        group.bench_function(format!("P2 greedy decode, batch {batch}"), |b| b.iter(|| decode.run()));
    }
    let vq = VqEncode::new(&bench_vq(), 8, &device);
    group.throughput(Throughput::Elements(vq.images() as u64));
    group.bench_function("P3 VQ encode, batch 8", |b| b.iter(|| vq.run()));
    group.finish();
}

criterion_group!(benches, speed);
criterion_main!(benches);
