//! `cargo xtask bench`: the speed benchmarks P1–P5 (see `chameleon_train::bench`), as a table
//! and JSON, optionally side by side with the PyTorch reference (`bench/torch_reference.py`),
//! alternating rounds of each with the same thread count.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use chameleon_data::loader::{Split, open_mixture};
use chameleon_model::Precision;
use chameleon_model::checkpoint::VQ_CONFIG_FILE;
use chameleon_train::bench::{Decode, Loader, TrainStep, VqEncode, bench_model, bench_vq};
use chameleon_train::experiment::Experiment;
use chameleon_train::speed::{Peak, decode_flops_per_token, flops_per_token};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::data::prepare_data;

/// The workloads, by id.
const ALL: &[&str] = &["peak", "P1-off", "P1-on", "P2-b1", "P2-b8", "P3", "P5"];
/// Asked for by name only: too big for a CPU.
const GPU_ONLY: &[&str] = &["P1-350m"];

#[derive(Args)]
pub struct BenchArgs {
    /// Workloads to run, comma-separated (peak, P1-off, P1-on, P2-b1, P2-b8, P3, P5; or P1, P2;
    /// and, by name only, P1-350m: gpu-350m.toml's shape at batch 16 x 1024, for GPUs).
    #[arg(long, default_value = "all")]
    only: String,
    /// Compute precision of P1 and the matmul peak: f32 or bf16.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Timed runs per workload (after warm-up), per round.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Rounds; with --vs-torch each round runs ours, then PyTorch's.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Threads for both sides (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Also run bench/torch_reference.py with this Python (which must have torch and
    /// transformers) and print the ratios.
    #[arg(long, value_name = "PYTHON")]
    vs_torch: Option<PathBuf>,
    /// The experiment whose shards P5 reads (prepared first if missing).
    #[arg(long, default_value = "experiments/stability.toml")]
    data: PathBuf,
    /// Cache folder for data.
    #[arg(long, default_value = ".cache")]
    cache: PathBuf,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench/latest.json")]
    out: PathBuf,
}

/// One workload's result. The PyTorch reference writes the same shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measure {
    pub id: String,
    pub what: String,
    /// Median seconds per run.
    pub seconds: f64,
    /// Work per run, in `unit`.
    pub work: f64,
    /// tokens/s, images/s or FLOP/s.
    pub unit: String,
    /// `work / seconds`.
    pub rate: f64,
    /// Model FLOPs per unit of work (per token), where MFU applies.
    #[serde(default)]
    pub flops_per_unit: Option<f64>,
    /// Model FLOPs utilisation against the side's peak, where it applies.
    #[serde(default)]
    pub mfu: Option<f64>,
}

/// Everything one side measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub side: String,
    pub device: String,
    pub threads: usize,
    pub precision: String,
    pub peak: Option<Peak>,
    pub results: Vec<Measure>,
}

fn selected(only: &str) -> Result<Vec<&'static str>> {
    if only == "all" {
        return Ok(ALL.to_vec());
    }
    let mut out: Vec<&'static str> = Vec::new();
    for want in only.split(',').map(str::trim) {
        let mut hits: Vec<&str> =
            ALL.iter().copied().filter(|id| *id == want || id.starts_with(&format!("{want}-"))).collect();
        hits.extend(GPU_ONLY.iter().copied().filter(|id| *id == want));
        if hits.is_empty() {
            bail!("--only {want:?}: unknown workload; expected one of {}, {}", ALL.join(", "), GPU_ONLY.join(", "));
        }
        for hit in hits {
            if !out.contains(&hit) {
                out.push(hit);
            }
        }
    }
    Ok(out)
}

/// Median seconds of `runs` timed calls after `warmup` untimed ones.
fn time(warmup: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn measure(id: &str, what: String, seconds: f64, work: f64, unit: &str, flops_per_unit: Option<f64>) -> Measure {
    tracing::info!("{id}: {:.4} s per run, {:.1} {unit}", seconds, work / seconds);
    Measure { id: id.into(), what, seconds, work, unit: unit.into(), rate: work / seconds, flops_per_unit, mfu: None }
}

/// Sets every measure's MFU against `peak`, with the FLOPs per unit of `flops_of` (ours, by id:
/// the workloads are the same on both sides).
fn apply_mfu(report: &mut Report, peak: Option<&Peak>, flops_of: &dyn Fn(&str) -> Option<f64>) {
    for m in &mut report.results {
        m.mfu = peak.zip(flops_of(&m.id)).map(|(p, f)| m.rate * f / p.flops);
    }
}

/// Runs our side of the selected workloads.
fn ours(
    args: &BenchArgs,
    ids: &[&str],
    precision: Precision,
    device: &Device,
    spec: &str,
    peak: Option<Peak>,
) -> Result<Report> {
    let mut results = Vec::new();
    let (batch, seq) = (8, 256);
    for &id in ids {
        tracing::info!("bench {id} on {spec}");
        let m = match id {
            "peak" => {
                // Best of the runs, as the peak for MFU (and PyTorch's `peak` row) is taken.
                let p = chameleon_train::speed::measure_matmul_peak(device, precision, 1024, args.runs);
                let flops = 2.0 * 1024f64.powi(3);
                let what = format!("{precision} matmul 1024x1024 (best of {})", args.runs);
                measure(id, what, flops / p.flops, flops, "FLOP/s", None)
            }
            "P1-off" | "P1-on" | "P1-350m" => {
                let (config, batch, seq) = match id {
                    "P1-350m" => (model_350m(), 16, 1024),
                    _ => (bench_model(id == "P1-on"), batch, seq),
                };
                let mut step = TrainStep::new(&config, batch, seq, precision, device);
                let s = time(2, args.runs, || {
                    step.run();
                });
                let fixes = if id == "P1-off" { "no QK-norm, pre-norm" } else { "QK-norm + reordered norm" };
                let what = format!(
                    "train step d{} L{} seq{seq} b{batch} {precision}, {fixes}",
                    config.d_model, config.n_layers
                );
                measure(id, what, s, step.tokens() as f64, "tokens/s", Some(flops_per_token(&config, seq)))
            }
            "P2-b1" | "P2-b8" => {
                let b = if id == "P2-b1" { 1 } else { 8 };
                let config = bench_model(false);
                let decode = Decode::new(&config, b, 32, 64, device);
                let s = time(1, args.runs, || {
                    decode.run();
                });
                let what = format!("greedy decode, KV cache, batch {b}, prompt 32, 64 new");
                // Mean context over the 64 new tokens: 32 + 32.
                measure(id, what, s, decode.tokens() as f64, "tokens/s", Some(decode_flops_per_token(&config, 64)))
            }
            "P3" => {
                let vq = VqEncode::new(&bench_vq(), 8, device);
                let s = time(1, args.runs, || {
                    vq.run();
                });
                measure(id, "VQ encode 32px, batch 8".into(), s, vq.images() as f64, "images/s", None)
            }
            "P5" => {
                let exp = Experiment::load(&args.data)?;
                if !exp.data.images.vq_checkpoint.join(VQ_CONFIG_FILE).is_file() {
                    tracing::warn!(
                        "P5 skipped: no image tokenizer in {} yet (`cargo xtask ablate` or `cargo xtask data prepare` makes it)",
                        exp.data.images.vq_checkpoint.display()
                    );
                    continue;
                }
                let prepared = prepare_data(&exp.data, &args.cache, false, &Device::flex())
                    .with_context(|| format!("P5 reads the shards of {}", args.data.display()))?;
                let mixture = open_mixture(&prepared, &exp.data, Split::Train)?;
                let mut loader = Loader::new(mixture, 64);
                let mut tokens = 0;
                let s = time(3, args.runs * 20, || tokens = loader.run());
                let what = format!("packed batches of 64 x {} from {}", exp.data.seq_len, args.data.display());
                measure(id, what, s, tokens as f64, "tokens/s", None)
            }
            _ => unreachable!("selected() only returns known ids"),
        };
        results.push(m);
    }
    Ok(Report {
        side: "chameleon-rs (burn)".into(),
        device: crate::device::describe(spec),
        threads: threads(args),
        precision: precision.to_string(),
        peak,
        results,
    })
}

/// experiments/gpu-350m.toml's transformer with the bench vocabulary (4096).
fn model_350m() -> chameleon_model::ChameleonConfig {
    chameleon_model::ChameleonConfig::new(4096, 1024, 24, 16)
        .with_ffn_dim(Some(3328))
        .with_qk_norm(true)
        .with_norm_placement(chameleon_model::NormPlacement::Reordered)
        .with_max_seq_len(1024)
}

fn threads(args: &BenchArgs) -> usize {
    args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn torch(python: &Path, args: &BenchArgs, ids: &[&str], spec: &str) -> Result<Report> {
    let script = Path::new("bench/torch_reference.py");
    if !script.is_file() {
        bail!("{}: not found; run from the repository root", script.display());
    }
    let torch_ids: Vec<&str> = ids.iter().copied().filter(|id| *id != "P5").collect();
    let out = std::env::temp_dir().join(format!("chameleon-torch-bench-{}.json", std::process::id()));
    let status = Command::new(python)
        .arg(script)
        .args(["--only", &torch_ids.join(","), "--runs", &args.runs.to_string()])
        .args(["--threads", &threads(args).to_string(), "--precision", &args.precision])
        .args(["--device", &crate::device::gpu_index(spec).map_or("cpu".to_string(), |i| format!("cuda:{i}"))])
        .arg("--out")
        .arg(&out)
        .status()
        .with_context(|| format!("{}: could not start it (--vs-torch)", python.display()))?;
    if !status.success() {
        bail!("{} {}: failed ({status}); it needs torch and transformers", python.display(), script.display());
    }
    let text = std::fs::read_to_string(&out).with_context(|| format!("{}: no result", out.display()))?;
    let _ = std::fs::remove_file(&out);
    serde_json::from_str(&text).with_context(|| format!("{}: not a bench report", out.display()))
}

/// Per workload, the round with the median time; the highest peak of the rounds.
fn median_rounds(rounds: Vec<Report>) -> Option<Report> {
    let mut first = rounds.first()?.clone();
    first.peak = rounds.iter().filter_map(|r| r.peak.clone()).max_by(|a, b| a.flops.total_cmp(&b.flops));
    for m in &mut first.results {
        let mut all: Vec<&Measure> = rounds.iter().filter_map(|r| r.results.iter().find(|x| x.id == m.id)).collect();
        all.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        *m = all[all.len() / 2].clone();
    }
    Some(first)
}

fn print_table(ours: &Report, torch: Option<&Report>) {
    println!("{}: {}, {} threads, {}", ours.side, ours.device, ours.threads, ours.precision);
    if let Some(p) = &ours.peak {
        println!("peak for MFU: {:.1} GFLOP/s ({})", p.flops / 1e9, p.source);
    }
    println!(
        "{:<7} {:<62} {:>14} {:>7} {:>14} {:>7} {:>7}",
        "id", "workload", "ours", "MFU", "PyTorch", "MFU", "ratio"
    );
    let pct = |m: Option<f64>| m.map_or("-".to_string(), |m| format!("{:.1}%", 100.0 * m));
    for m in &ours.results {
        let t = torch.and_then(|t| t.results.iter().find(|x| x.id == m.id));
        let scale = if m.unit == "FLOP/s" { 1e9 } else { 1.0 };
        let unit = if m.unit == "FLOP/s" { "GFLOP/s" } else { &m.unit };
        println!(
            "{:<7} {:<62} {:>14} {:>7} {:>14} {:>7} {:>7}",
            m.id,
            m.what,
            format!("{:.1} {}", m.rate / scale, unit.trim_end_matches("/s")),
            pct(m.mfu),
            t.map_or("-".into(), |t| format!("{:.1}", t.rate / scale)),
            pct(t.and_then(|t| t.mfu)),
            t.map_or("-".into(), |t| format!("{:.2}x", m.rate / t.rate)),
        );
    }
}

pub fn run(args: &BenchArgs, spec: &str) -> Result<()> {
    let ids = selected(&args.only)?;
    let precision: Precision = match args.precision.as_str() {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        other => bail!("--precision {other:?}: expected f32 or bf16"),
    };
    if let Some(n) = args.threads {
        // Read by rayon when its pool starts, which is at the first tensor op below.
        // SAFETY: no other thread exists yet that could read the environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    tracing::info!("load average before: {}", load.trim());
    let device = crate::device::parse(spec)?;
    if !precision.supported_on(&device) {
        bail!("--precision {precision} is not supported on {spec}");
    }
    // One peak for every round: the vendor's on a known GPU, else a measured matmul (best of 25).
    let peak = crate::device::peak(spec, precision, &device);
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        tracing::info!("round {}/{}", round + 1, args.rounds.max(1));
        mine.push(ours(args, &ids, precision, &device, spec, peak.clone())?);
        if let Some(python) = &args.vs_torch {
            theirs.push(torch(python, args, &ids, spec)?);
        }
    }
    let mut mine = median_rounds(mine).expect("at least one round");
    let mut theirs = median_rounds(theirs);
    // MFU after the rounds are combined, against one peak per side: on a GPU the vendor's for
    // both; on a CPU each side's own backend matmul (PyTorch's: the best of its rounds).
    let flops: Vec<(String, Option<f64>)> = mine.results.iter().map(|m| (m.id.clone(), m.flops_per_unit)).collect();
    let flops_of = |id: &str| flops.iter().find(|(i, _)| i == id).and_then(|(_, f)| *f);
    apply_mfu(&mut mine, peak.as_ref(), &flops_of);
    if let Some(t) = theirs.as_mut() {
        if crate::device::gpu_index(spec).is_some() {
            t.peak = peak.clone();
        }
        let their_peak = t.peak.clone();
        apply_mfu(t, their_peak.as_ref(), &flops_of);
    }
    print_table(&mine, theirs.as_ref());
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create it", dir.display()))?;
    }
    let json = serde_json::json!({ "load_average_before": load.trim(), "ours": mine, "torch": theirs });
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("{}: cannot write it", args.out.display()))?;
    println!("wrote {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_selection_expands_families_and_refuses_unknown_ids() {
        assert_eq!(selected("P1,P3").unwrap(), vec!["P1-off", "P1-on", "P3"]);
        assert_eq!(selected("P1,P1-on,P1-350m").unwrap(), vec!["P1-off", "P1-on", "P1-350m"]);
        assert_eq!(selected("all").unwrap(), ALL.to_vec());
        assert!(selected("P4").unwrap_err().to_string().contains("unknown workload"));
    }

    #[test]
    fn rounds_are_combined_by_the_median_time() {
        let report = |s: f64| Report {
            side: "x".into(),
            device: "cpu".into(),
            threads: 1,
            precision: "f32".into(),
            peak: None,
            results: vec![measure("P1-off", "w".into(), s, 8.0, "tokens/s", Some(10.0))],
        };
        let mut m = median_rounds(vec![report(3.0), report(1.0), report(2.0)]).unwrap();
        assert_eq!(m.results[0].seconds, 2.0);
        assert_eq!(m.results[0].rate, 4.0);
        // MFU: 4 tokens/s x 10 FLOPs per token against 80 FLOP/s.
        apply_mfu(&mut m, Some(&Peak { flops: 80.0, source: "test".into() }), &|id| (id == "P1-off").then_some(10.0));
        assert_eq!(m.results[0].mfu, Some(0.5));
    }
}
