//! `--device cpu|cuda[:N]`: which burn backend runs the work.

use anyhow::{Result, bail};
use burn::tensor::Device;
use chameleon_model::Precision;
use chameleon_train::speed::{Peak, gpu_peak, measure_matmul_peak};

/// Parses a device name. `cpu` is burn's flex backend.
pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let index: usize = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse().map_err(|_| anyhow::anyhow!("--device {s}: the GPU index must be a number"))?,
            };
            cuda(index)
        }
        other => bail!("--device {other:?}: expected cpu, cuda or cuda:N"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device> {
    // burn loads libcuda lazily and panics at the first tensor op when it is missing; ask first.
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("--device cuda:{index}: no NVIDIA driver (libcuda.so) found on this machine; use --device cpu");
    }
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Device> {
    bail!(
        "this binary was built without CUDA; rebuild with `cargo run -p xtask --features cuda -- ...` (README, \"Devices and CUDA\")"
    )
}

/// The GPU index of a `cuda[:N]` device name; `None` for the CPU.
pub fn gpu_index(spec: &str) -> Option<usize> {
    match spec {
        "cuda" => Some(0),
        s => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()),
    }
}

/// The GPU's name as its driver reports it.
#[cfg(feature = "cuda")]
fn gpu_name(index: usize) -> Option<String> {
    cudarc::driver::CudaContext::new(index).ok()?.name().ok()
}

#[cfg(not(feature = "cuda"))]
fn gpu_name(_index: usize) -> Option<String> {
    None
}

/// The machine in words: the CPU model and its threads, or the GPU's name.
pub fn describe(spec: &str) -> String {
    if let Some(i) = gpu_index(spec) {
        return format!("cuda:{i} {}", gpu_name(i).unwrap_or_else(|| "(unknown GPU)".into()));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("cpu (burn flex): {model}, {threads} hardware threads")
}

/// The peak FLOP/s that MFU is measured against: the vendor's dense number for a known GPU, or
/// on the CPU a measured 1024² matmul of the same backend and precision. `None` for an unknown GPU.
pub fn peak(spec: &str, precision: Precision, device: &Device) -> Option<Peak> {
    match gpu_index(spec) {
        Some(i) => {
            let name = gpu_name(i)?;
            let peak = gpu_peak(&name, precision);
            if peak.is_none() {
                tracing::warn!("no peak FLOP/s known for {name}: MFU is not reported");
            }
            peak
        }
        None => Some(measure_matmul_peak(device, precision, 1024, 25)),
    }
}
