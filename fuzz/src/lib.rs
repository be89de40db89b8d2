//! The fuzz targets of `cargo xtask fuzz` (xtask/src/fuzz_targets.rs), built for libFuzzer.
//! Each binary under fuzz_targets/ is `chameleon_fuzz::target!("NAME");`.

#[path = "../../xtask/src/npy.rs"]
#[allow(dead_code)]
mod npy;

#[path = "../../xtask/src/fuzz_targets.rs"]
#[allow(dead_code)]
pub mod fuzz_targets;

pub use libfuzzer_sys;

/// A libFuzzer entry point that runs the named target on each input.
#[macro_export]
macro_rules! target {
    ($name:literal) => {
        $crate::libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            $crate::fuzz_targets::run($name, data, $crate::fuzz_targets::scratch($name));
        });
    };
}
