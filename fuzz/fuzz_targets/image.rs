#![no_main]
#[path = "../../xtask/src/npy.rs"]
#[allow(dead_code)]
mod npy;
#[path = "../../xtask/src/fuzz_targets.rs"]
#[allow(dead_code)]
mod fuzz_targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_targets::run("image", data, fuzz_targets::scratch("image"));
});
