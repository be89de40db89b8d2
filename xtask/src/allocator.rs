//! Keep freed memory in the process instead of handing it back to the kernel.
//!
//! A training step allocates and frees the same large buffers every time (logits of
//! `[batch, seq, vocab]`, attention scores, gradients). glibc's malloc serves blocks above its
//! mmap threshold (at most 32 MiB, adjusted at run time) with a fresh `mmap` and unmaps them on
//! free, so every step paid page faults and the kernel's zeroing of those pages again: 8-10% of
//! the CPU samples of a P1 step (docs/benchmarks.md). With mmap off and the trim threshold out
//! of reach, freed blocks go back to malloc's own free lists and the next step reuses them. The
//! resident size then stays at the peak a step needs, which a training run reaches anyway.

/// Called once, first thing in `main`, before any thread starts.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc's tunables; no thread allocates concurrently this early.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
