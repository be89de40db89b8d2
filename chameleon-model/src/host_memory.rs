//! What the machine can still give: a model whose weights (and, in training, gradients and
//! optimizer moments) cannot fit in the host's memory is refused with the numbers, before the
//! allocation that would abort the process.

use burn::tensor::Device;

/// Whether `device` keeps its tensors in host memory (burn's flex CPU backend).
pub fn on_host(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

/// Bytes the kernel says it can still hand out: `MemAvailable` plus free swap, from
/// `/proc/meminfo`. `None` where that file does not exist or does not parse (not Linux).
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}

/// Refuses `needed` bytes of `what` on `device` when it is the host and they exceed what the
/// machine can still give. Devices with their own memory are not checked here.
pub fn check_fits(needed: u128, what: &str, device: &Device) -> Result<(), String> {
    if !on_host(device) {
        return Ok(());
    }
    match available_bytes() {
        Some(free) if needed > free as u128 => Err(format!(
            "{what} needs {:.1} GiB of memory; this machine has {:.1} GiB available",
            needed as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_machine_has_is_refused_with_the_numbers() {
        let device = Device::flex();
        assert!(on_host(&device) && on_host(&device.clone().autodiff()));
        let free = available_bytes().expect("/proc/meminfo on Linux");
        assert!(free > 0);
        assert!(check_fits(1 << 20, "a small model", &device).is_ok());
        let err = check_fits(free as u128 * 4, "a huge model", &device).unwrap_err();
        assert!(err.contains("a huge model") && err.contains("GiB available"), "{err}");
    }
}
