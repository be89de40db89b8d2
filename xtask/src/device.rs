//! `--device cpu|cuda[:N]`: which burn backend runs the work.

use anyhow::{Result, bail};
use burn::tensor::Device;

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
