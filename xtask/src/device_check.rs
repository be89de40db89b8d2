//! `cargo xtask device-check --device cuda`: is a device's arithmetic right? The same weights
//! give the same logits on the device as on the CPU, and the trainer's step lowers the loss there
//! in f32 and in bf16 mixed precision.
//!
//! Logits are compared twice, over the full 512-token context (RoPE's angles grow with the
//! position, and so does any error in them). In f64 (parameters and activations; norm statistics
//! and the RoPE table stay f32) a wrong kernel shows at once: the tolerance is 1e-4. In f32 the
//! target is 1e-3, but cubecl runs f32 matmuls on TF32 tensor cores where the GPU has them
//! (10-bit mantissa, no switch in burn 0.22), so the check reports whether 1e-3 is met and fails
//! only beyond 2e-2; a plain f32 matmul against the CPU's shows the TF32 error on its own.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::FloatDType;
use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_model::{Precision, cast_params};
use chameleon_train::bench::{TrainStep, bench_model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The f32 target (absolute).
const F32_TARGET: f64 = 1e-3;
/// Beyond this, f32 logits are wrong whatever TF32 explains.
const F32_LIMIT: f64 = 2e-2;
/// f64 logits (with f32 norm statistics) may differ by at most this much.
const F64_LIMIT: f64 = 1e-4;

fn max_diff_rel(a: &[f64], b: &[f64], scale: f64) -> f64 {
    max_abs_diff(a, b) / scale.max(f64::MIN_POSITIVE)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn read(t: Tensor<3>) -> Result<Vec<f64>> {
    Ok(t.into_data().convert::<f64>().try_to_vec::<f64>()?)
}

pub fn run(spec: &str, steps: usize) -> Result<()> {
    if steps < 2 {
        bail!("--steps {steps}: at least 2 train steps are needed to see the loss fall");
    }
    let device = crate::device::parse(spec)?;
    let cpu = Device::flex();
    println!("device: {}", crate::device::describe(spec));
    let mut failed = Vec::new();

    // 0. A bare f32 matmul: shows TF32 (relative error near 1e-3) when the device uses it.
    let mut rng = StdRng::seed_from_u64(1);
    let values: Vec<f32> = (0..256 * 256).map(|_| rng.random_range(-1.0..1.0)).collect();
    let m = |d: &Device| Tensor::<2>::from_data(TensorData::new(values.clone(), [256, 256]), d);
    let want = m(&cpu).matmul(m(&cpu)).into_data().convert::<f64>().try_to_vec::<f64>()?;
    let got = m(&device).matmul(m(&device)).into_data().convert::<f64>().try_to_vec::<f64>()?;
    let scale = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    println!("f32 matmul 256x256 {spec} vs cpu: max |diff| / max |value| = {:.2e}", max_diff_rel(&want, &got, scale));

    // 1. Same weights, same tokens: logits on the CPU and on the device, in f32 and in f64.
    for fixes in [false, true] {
        let config = bench_model(fixes);
        cpu.seed(7);
        let model = config.init(&cpu);
        let mut rng = StdRng::seed_from_u64(7);
        let t = config.max_seq_len;
        let ids: Vec<i64> = (0..2 * t).map(|_| rng.random_range(7..config.vocab_size as i64)).collect();
        let tokens = |d: &Device| Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, t]), d);
        let name = if fixes { "QK-norm + reordered norm" } else { "pre-norm" };
        let expected = read(model.forward(tokens(&cpu)))?;
        let on_device = model.clone().to_device(&device);
        let got = read(on_device.forward(tokens(&device)))?;
        let diff = max_abs_diff(&expected, &got);
        let scale = expected.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        let verdict = if diff <= F32_TARGET {
            "ok (within 1e-3)"
        } else if diff <= F32_LIMIT {
            "above the 1e-3 target (see the f64 line: TF32 alone would vanish there)"
        } else {
            "FAIL"
        };
        println!("logits f32 {spec} vs cpu ({name}): max |diff| {diff:.2e} (largest logit {scale:.2}) -> {verdict}");
        if diff > F32_LIMIT {
            failed.push(format!("f32 logits differ by {diff:.2e} > {F32_LIMIT:e}"));
        }
        // The explicit attention path (the one the stability probes take) instead of the fused
        // kernel: separates an attention kernel's error from the rest. (On cubecl, f32 and f64
        // already take it: its flash kernels multiply on f16 fragments; see attention.rs.)
        let (explicit, _) = on_device.forward_diagnosed(tokens(&device));
        let diff = max_abs_diff(&expected, &read(explicit)?);
        println!("logits f32 {spec} vs cpu ({name}), explicit attention: max |diff| {diff:.2e}");
        if device.supports_dtype(burn::tensor::DType::F64) {
            let wide = cast_params(model, FloatDType::F64);
            let expected = read(wide.forward(tokens(&cpu)))?;
            let got = read(wide.to_device(&device).forward(tokens(&device)))?;
            let diff = max_abs_diff(&expected, &got);
            let ok = diff <= F64_LIMIT;
            println!("logits f64 {spec} vs cpu ({name}): max |diff| {diff:.2e} -> {}", if ok { "ok" } else { "FAIL" });
            if !ok {
                failed.push(format!("f64 logits differ by {diff:.2e} > {F64_LIMIT:e}"));
            }
        }
    }

    // 2. The trainer's step on one fixed batch: the loss must fall (it memorises the batch).
    for precision in [Precision::F32, Precision::Bf16] {
        if !precision.supported_on(&device) {
            println!("train step {precision}: not supported on {spec}");
            continue;
        }
        let mut step = TrainStep::new(&bench_model(true), 8, 256, precision, &device);
        let losses: Vec<f64> = (0..steps).map(|_| step.run()).collect();
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        let ok = last.is_finite() && last < first - 0.1;
        println!(
            "train step {precision}: loss {first:.4} -> {last:.4} over {steps} steps -> {}",
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            failed.push(format!("{precision} training did not lower the loss ({first:.4} -> {last:.4})"));
        }
    }
    if !failed.is_empty() {
        bail!("{spec}: {}", failed.join("; "));
    }
    println!("{spec}: all checks passed");
    Ok(())
}
