//! `--device cpu|cuda[:N]`: which burn backend runs the work. Training commands also take a
//! list, `cuda:0,cuda:1,...`: one data-parallel replica per device.

use anyhow::{Result, bail};
use burn::tensor::Device;
use chameleon_model::Precision;
use chameleon_train::data_parallel::GradSync;
use chameleon_train::speed::{Peak, gpu_peak, measure_matmul_peak};
use chameleon_train::trainer::RunOptions;

/// The first device of a `--device` list, which runs everything but the other replicas.
pub fn first(spec: &str) -> &str {
    spec.split(',').next().unwrap_or(spec).trim()
}

/// Whether `--device` names more than one device.
pub fn is_list(spec: &str) -> bool {
    spec.contains(',')
}

/// Parses the first device of `--device`. `cpu` is burn's flex backend.
pub fn parse(spec: &str) -> Result<Device> {
    parse_one(first(spec))
}

/// Training options from `--device`: the MFU peak of the first device, and the [`replicas`].
pub fn training(spec: &str, precision: Precision, device: &Device) -> Result<RunOptions> {
    let (replicas, grad_sync) = replicas(spec)?;
    Ok(RunOptions { peak: peak(spec, precision, device), replicas, grad_sync, ..RunOptions::default() })
}

/// The devices after the first of a `--device` list, as data-parallel replicas, and how they
/// sum their gradients: with NCCL when every device is a GPU and NCCL loads.
pub fn replicas(spec: &str) -> Result<(Vec<Device>, GradSync)> {
    let names: Vec<&str> = spec.split(',').map(str::trim).collect();
    if let Some(i) = names.iter().position(|n| n.is_empty()) {
        bail!("--device {spec}: entry {} of the list is empty", i + 1);
    }
    let replicas = names[1..].iter().map(|n| parse_one(n)).collect::<Result<Vec<_>>>()?;
    let gpus: Vec<usize> = names.iter().filter_map(|n| gpu_index(n)).collect();
    if let Some(twice) = gpus.iter().enumerate().find_map(|(i, g)| gpus[..i].contains(g).then_some(*g)) {
        bail!("--device {spec}: cuda:{twice} is listed twice (one replica per GPU)");
    }
    let all_gpus = !replicas.is_empty() && gpus.len() == names.len();
    let grad_sync = if all_gpus && nccl_present() {
        GradSync::Collective
    } else {
        if all_gpus {
            tracing::warn!("NCCL (libnccl.so.2) not found: replicas sum their gradients through the main thread");
        }
        GradSync::Host
    };
    Ok((replicas, grad_sync))
}

#[cfg(feature = "cuda")]
fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the NCCL library.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

#[cfg(not(feature = "cuda"))]
fn nccl_present() -> bool {
    false
}

fn parse_one(name: &str) -> Result<Device> {
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
    if let Some(i) = gpu_index(first(spec)) {
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
    match gpu_index(first(spec)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_name_what_is_wrong() {
        let cpu = Device::flex();
        let empty = training("cpu,", Precision::F32, &cpu).unwrap_err().to_string();
        assert!(empty.contains("--device cpu,") && empty.contains("entry 2"), "{empty}");
        let unknown = training("cpu,gpu", Precision::F32, &cpu).unwrap_err().to_string();
        assert!(unknown.contains("\"gpu\""), "{unknown}");
        assert_eq!(first(" cuda:1 ,cuda:0"), "cuda:1");
        assert!(is_list("cpu,cpu") && !is_list("cuda:0"));
    }
}
