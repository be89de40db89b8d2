//! Model FLOPs utilisation: the FLOPs a step needs, the peak a device can give, and their ratio.
//!
//! FLOPs per trained token follow PaLM's accounting: `6N + 12·L·d·T`, where `N` counts the
//! parameters that take part in matmuls (all but the input embedding, which is a lookup), `L`
//! the layers, `d` the width and `T` the sequence length (the attention scores and their
//! weighted sum, forward and backward). The peak is a vendor's dense number for known GPUs, and
//! on the CPU a measured square matmul of the same backend, so CPU MFU says how close a step
//! comes to what the backend's own gemm reaches.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use chameleon_model::{ChameleonConfig, Precision};
use serde::{Deserialize, Serialize};

/// Training FLOPs per token of a model at a sequence length.
pub fn flops_per_token(config: &ChameleonConfig, seq_len: usize) -> f64 {
    let matmul_params = config.num_params() - config.vocab_size * config.d_model;
    6.0 * matmul_params as f64 + 12.0 * (config.n_layers * config.d_model * seq_len) as f64
}

/// Forward-only FLOPs per generated token with a KV cache holding `context` positions.
pub fn decode_flops_per_token(config: &ChameleonConfig, context: usize) -> f64 {
    let matmul_params = config.num_params() - config.vocab_size * config.d_model;
    2.0 * matmul_params as f64 + 4.0 * (config.n_layers * config.d_model * context) as f64
}

/// A device's peak FLOP/s and where the number comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// FLOP/s.
    pub flops: f64,
    /// E.g. "NVIDIA H100 80GB HBM3: bf16 dense (vendor)" or "flex f32 matmul 1024² (measured)".
    pub source: String,
}

/// Vendor dense peaks (no sparsity), TFLOP/s: (name fragment, bf16, tf32). f32 compute is
/// measured against the tf32 tensor-core peak, the larger of the two f32 figures, so the MFU it
/// gives is a lower bound.
const GPU_PEAKS: &[(&str, f64, f64)] = &[
    ("GH200", 989.4, 494.7),
    ("H200", 989.4, 494.7),
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 417.5),
    ("H100", 989.4, 494.7),
    ("A100", 312.0, 156.0),
    ("L40S", 362.1, 183.0),
    ("A10G", 70.0, 35.0),
];

/// The vendor peak of a GPU by its name (as the driver reports it), if we know the part.
pub fn gpu_peak(name: &str, precision: Precision) -> Option<Peak> {
    let (part, bf16, tf32) = GPU_PEAKS.iter().find(|(part, _, _)| name.contains(part))?;
    let (tflops, what) = match precision {
        Precision::Bf16 => (*bf16, "bf16"),
        Precision::F32 => (*tf32, "tf32"),
    };
    Some(Peak { flops: tflops * 1e12, source: format!("{name} ({part}): {what} dense {tflops} TFLOP/s (vendor)") })
}

/// Measures the FLOP/s of an `n × n` matmul in `precision` on `device` (best of `reps` after a
/// warm-up).
pub fn measure_matmul_peak(device: &Device, precision: Precision, n: usize, reps: usize) -> Peak {
    let a = Tensor::<2>::random([n, n], Distribution::Default, device).cast(precision.dtype());
    let b = Tensor::<2>::random([n, n], Distribution::Default, device).cast(precision.dtype());
    let run = || {
        let started = Instant::now();
        let c = a.clone().matmul(b.clone());
        // Reading one value back waits for the device.
        let _ = c.slice([0..1, 0..1]).into_data();
        started.elapsed().as_secs_f64()
    };
    run();
    let best = (0..reps.max(1)).map(|_| run()).fold(f64::INFINITY, f64::min);
    Peak {
        flops: 2.0 * (n as f64).powi(3) / best,
        source: format!("{precision} matmul {n}x{n} on this device (measured)"),
    }
}

/// Model FLOPs utilisation of `tokens_per_s` trained tokens per second.
pub fn mfu(config: &ChameleonConfig, seq_len: usize, tokens_per_s: f64, peak: &Peak) -> f64 {
    tokens_per_s * flops_per_token(config, seq_len) / peak.flops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_per_token_counts_matmul_weights_and_attention() {
        // d 256, 4 layers, ffn 768 (explicit), vocab 4096, no biases.
        let config = ChameleonConfig::new(4096, 256, 4, 4).with_ffn_dim(Some(768)).with_qk_norm(false);
        let per_layer = 4 * 256 * 256 + 3 * 256 * 768 + 2 * 256; // q,k,v,o + SwiGLU + two norms
        let n = 4 * per_layer + 256 + 4096 * 256; // layers + final norm + lm_head
        assert_eq!(config.num_params(), n + 4096 * 256, "num_params includes the input embedding");
        let expected = 6.0 * n as f64 + 12.0 * 4.0 * 256.0 * 256.0;
        assert_eq!(flops_per_token(&config, 256), expected);
        // Attention FLOPs grow with the sequence; the weights' do not.
        assert_eq!(flops_per_token(&config, 512) - flops_per_token(&config, 256), 12.0 * 4.0 * 256.0 * 256.0);
    }

    #[test]
    fn known_gpus_have_peaks_and_unknown_ones_do_not() {
        let h100 = gpu_peak("NVIDIA H100 80GB HBM3", Precision::Bf16).unwrap();
        assert_eq!(h100.flops, 989.4e12);
        assert_eq!(gpu_peak("NVIDIA H100 PCIe", Precision::Bf16).unwrap().flops, 756.0e12);
        assert_eq!(gpu_peak("NVIDIA H200", Precision::F32).unwrap().flops, 494.7e12);
        assert!(gpu_peak("Some Future GPU", Precision::Bf16).is_none());
    }

    #[test]
    fn a_measured_peak_is_positive_and_mfu_scales_with_throughput() {
        let peak = measure_matmul_peak(&Device::flex(), Precision::F32, 128, 2);
        assert!(peak.flops.is_finite() && peak.flops > 0.0, "{peak:?}");
        let config = ChameleonConfig::new(512, 64, 2, 2);
        let one = mfu(&config, 64, 1000.0, &peak);
        assert!((mfu(&config, 64, 2000.0, &peak) - 2.0 * one).abs() < 1e-12 * one.max(1.0));
    }
}
