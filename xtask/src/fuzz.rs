//! `cargo xtask fuzz`: a mutation fuzzer over the parsers that take outside bytes
//! ([`crate::fuzz_targets`]). It starts from valid seeds, mutates them (bit flips, boundary
//! bytes and numbers, insertions, deletions, splices, truncations), keeps inputs the parser
//! accepts as further starting points, and counts a panic as a finding. It needs no nightly
//! toolchain, so CI runs a short pass; `fuzz/` holds the same targets for coverage-guided
//! libFuzzer runs (`cargo +nightly fuzz run TARGET`).
//!
//! An abort (a runaway allocation, under the `--memory-gib` limit) ends the process; the input
//! that caused it is the target's input file in the scratch folder named at its start.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fuzz_targets;

/// The options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Targets, comma-separated (default: every one).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Inputs to try per target.
    #[arg(long, default_value_t = 100_000)]
    runs: u64,
    /// Seed of the mutations (a run is reproducible).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where inputs that panic are saved.
    #[arg(long, default_value = "fuzz/crashes")]
    crashes: PathBuf,
    /// Address-space limit of this process in GiB: a runaway allocation aborts here instead of
    /// exhausting the machine (0: no limit).
    #[arg(long, default_value_t = 8)]
    memory_gib: u64,
    /// Write each target's seeds into DIR/<target>/ (a corpus for libFuzzer under fuzz/) and
    /// stop.
    #[arg(long, value_name = "DIR")]
    write_seeds: Option<PathBuf>,
}

/// What one target's pass found.
struct Tally {
    runs: u64,
    accepted: u64,
    panics: Vec<(PathBuf, String)>,
    seconds: f64,
}

/// Runs the fuzzer.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let all = fuzz_targets::all();
    let targets: Vec<&str> = if args.targets.is_empty() {
        all.clone()
    } else {
        let mut chosen = Vec::new();
        for t in &args.targets {
            let Some(&known) = all.iter().find(|k| **k == t.as_str()) else {
                bail!("--targets: no target {t:?}; the targets are {}", all.join(", "));
            };
            chosen.push(known);
        }
        chosen
    };
    if let Some(out) = &args.write_seeds {
        for target in &targets {
            let dir = out.join(target);
            std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
            for (i, seed) in fuzz_targets::seeds(target, &dir).iter().enumerate() {
                let path = dir.join(format!("seed-{i}"));
                std::fs::write(&path, seed).with_context(|| format!("{}: cannot write", path.display()))?;
            }
            // What the seeds refer to is made again where the target runs (`scratch`).
            let _ = std::fs::remove_dir_all(dir.join("seed-st"));
            for f in ["a.png", "seed.npy", "seed.shard", "model-00001-of-00001.safetensors"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        println!("seeds written to {}", out.display());
        return Ok(());
    }
    limit_memory(args.memory_gib)?;
    let scratch = std::env::temp_dir().join(format!("chameleon-fuzz-{}", std::process::id()));
    // Panics are findings, counted below, on any thread (a reader thread's panic can come back
    // as an error); the default hook would print each one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    let mut found = 0;
    println!("{:<18} {:>10} {:>10} {:>8} {:>10}", "target", "inputs", "accepted", "panics", "inputs/s");
    for target in targets {
        let dir = scratch.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        tracing::info!("fuzzing {target}; should this process die, its input is in {}", dir.display());
        let tally = fuzz_one(target, &dir, args)?;
        println!(
            "{target:<18} {:>10} {:>10} {:>8} {:>10.0}",
            tally.runs,
            tally.accepted,
            tally.panics.len(),
            tally.runs as f64 / tally.seconds.max(1e-9)
        );
        for (path, message) in &tally.panics {
            eprintln!("  {target}: panic {message:?}; input saved as {}", path.display());
        }
        found += tally.panics.len();
    }
    std::panic::set_hook(hook);
    let _ = std::fs::remove_dir_all(&scratch);
    if found > 0 {
        bail!("{found} input(s) made a parser panic; they are in {}", args.crashes.display());
    }
    Ok(())
}

fn fuzz_one(target: &str, dir: &std::path::Path, args: &FuzzArgs) -> Result<Tally> {
    let seeds = fuzz_targets::seeds(target, dir);
    for (i, s) in seeds.iter().enumerate() {
        if !fuzz_targets::run(target, s, dir) {
            bail!("fuzz target {target}: seed {i} is not accepted by its own parser");
        }
    }
    let mut corpus = seeds;
    let mut rng = StdRng::seed_from_u64(args.seed ^ fnv(target.as_bytes()));
    let mut tally = Tally { runs: 0, accepted: 0, panics: Vec::new(), seconds: 0.0 };
    let start = Instant::now();
    for _ in 0..args.runs {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let other = &corpus[rng.random_range(0..corpus.len())];
        let mut input = base.clone();
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut input, other, &mut rng);
        }
        tally.runs += 1;
        let before = PANICS.load(std::sync::atomic::Ordering::SeqCst);
        let result = catch_unwind(AssertUnwindSafe(|| fuzz_targets::run(target, &input, dir)));
        let elsewhere = PANICS.load(std::sync::atomic::Ordering::SeqCst) > before;
        let result = match result {
            Ok(_) if elsewhere => {
                Err(Box::new("a panic in another thread".to_string()) as Box<dyn std::any::Any + Send>)
            }
            r => r,
        };
        match result {
            Ok(true) => {
                tally.accepted += 1;
                // Accepted inputs become starting points (a bounded corpus, replaced at random).
                if corpus.len() < 256 {
                    corpus.push(input);
                } else {
                    let i = rng.random_range(0..corpus.len());
                    corpus[i] = input;
                }
            }
            Ok(false) => {}
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "non-text panic".into());
                std::fs::create_dir_all(&args.crashes)
                    .with_context(|| format!("{}: cannot create", args.crashes.display()))?;
                let path = args.crashes.join(format!("{target}-{:016x}.bin", fnv(&input)));
                std::fs::write(&path, &input).with_context(|| format!("{}: cannot write", path.display()))?;
                tally.panics.push((path, message));
            }
        }
    }
    tally.seconds = start.elapsed().as_secs_f64();
    Ok(tally)
}

/// Panics seen by the hook, on every thread.
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Numbers at the edges of what parsers take.
const NUMBERS: [&str; 10] = [
    "0",
    "-1",
    "1e308",
    "NaN",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999",
    "1099511627776",
    "",
    "0.5",
];

/// One random change to `input`; `other` is another corpus entry to splice from.
fn mutate(input: &mut Vec<u8>, other: &[u8], rng: &mut StdRng) {
    let at = |rng: &mut StdRng, len: usize| rng.random_range(0..=len);
    match rng.random_range(0..9) {
        0 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            input[i] = [0u8, 1, 0x7f, 0x80, 0xff, b'"', b'<', b'{', b'\n'][rng.random_range(0..9)];
        }
        2 => {
            let i = at(rng, input.len());
            let bytes: Vec<u8> = (0..rng.random_range(1..=8)).map(|_| rng.random()).collect();
            input.splice(i..i, bytes);
        }
        3 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            let n = rng.random_range(1..=16).min(input.len() - i);
            input.drain(i..i + n);
        }
        4 if !input.is_empty() => {
            // A run of ASCII digits becomes a number at the edge.
            let i = rng.random_range(0..input.len());
            if let Some(s) = (i..input.len()).find(|&k| input[k].is_ascii_digit()) {
                let e = (s..input.len()).find(|&k| !input[k].is_ascii_digit()).unwrap_or(input.len());
                input.splice(s..e, NUMBERS[rng.random_range(0..NUMBERS.len())].bytes());
            }
        }
        5 if input.len() >= 8 => {
            let i = rng.random_range(0..=input.len() - 8);
            let v: u64 = [u64::MAX, 1 << 40, 1 << 63, 0, u32::MAX as u64 + 1][rng.random_range(0..5)];
            input[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        6 => input.truncate(at(rng, input.len())),
        7 if !other.is_empty() => {
            let (s, e) = {
                let a = rng.random_range(0..other.len());
                (a, rng.random_range(a..=other.len()))
            };
            let i = at(rng, input.len());
            let j = rng.random_range(i..=input.len());
            input.splice(i..j, other[s..e].iter().copied());
        }
        _ if !input.is_empty() => {
            // Repeat a slice (deep nesting, long lines).
            let s = rng.random_range(0..input.len());
            let e = rng.random_range(s..=input.len().min(s + 64));
            let copy = input[s..e].repeat(rng.random_range(2..=32));
            input.splice(s..e, copy);
        }
        _ => input.push(rng.random()),
    }
}

/// FNV-1a, to name saved inputs and to derive per-target seeds.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Caps this process's address space, so that an input that makes a parser allocate without
/// bound aborts here, input saved, rather than taking the machine's memory.
fn limit_memory(gib: u64) -> Result<()> {
    if gib == 0 {
        return Ok(());
    }
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: plain syscalls with a valid struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 {
            bail!("--memory-gib {gib}: getrlimit failed: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = gib.saturating_mul(1 << 30).min(limit.rlim_max);
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
            bail!("--memory-gib {gib}: setrlimit failed: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
