//! `cargo xtask <command>`: the one command line of chameleon-rs.

mod ablate;
mod allocator;
mod bench;
mod data;
mod device;
mod device_check;
mod eval;
mod export;
mod fuzz;
mod fuzz_targets;
mod generate;
mod live;
mod logging;
mod logits;
mod npy;
mod respond;
mod sft;
mod train;
mod trained;
mod vq;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use chameleon_model::checkpoint::WeightDtype;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "chameleon-rs: Chameleon-style mixed-modal models on burn")]
struct Cli {
    /// Backend: cpu (burn flex) or cuda[:N] (needs a build with --features cuda). train, sft and
    /// ablate take a list, e.g. cuda:0,cuda:1: one data-parallel replica per device.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the stability ablation grid (default: experiments/stability.toml on CPU), live.
    Ablate {
        /// Experiment file with an [ablation] section.
        file: Option<PathBuf>,
        /// Where the runs go (default: runs/<file stem>).
        #[arg(long)]
        runs_dir: Option<PathBuf>,
        /// Plain progress lines instead of the terminal UI (the default without a terminal).
        #[arg(long)]
        no_tui: bool,
        /// Cache folder for data.
        #[arg(long, default_value = ".cache")]
        cache: PathBuf,
        /// Runs trained at once, each in a worker process of its own (default: one per CPU core
        /// on the CPU, one on a GPU). Small models leave cores idle; side by side, two runs on two
        /// cores train 1.7x faster than one after the other, to the same bits.
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// One run of a grid, in a worker process of `ablate --jobs`: stops gracefully (with a
    /// checkpoint) when its standard input says `stop` or closes.
    #[command(hide = true)]
    GridWorker {
        /// The grid's experiment file.
        file: PathBuf,
        /// The grid's run directory.
        #[arg(long)]
        runs_dir: PathBuf,
        /// The run's name.
        #[arg(long)]
        run: String,
        /// Continue from the run's newest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Cache folder for data.
        #[arg(long, default_value = ".cache")]
        cache: PathBuf,
        /// The device's peak FLOP/s as `ablate` measured it once for the grid, for MFU (instead
        /// of each worker measuring it again while the other workers load the cores).
        #[arg(long, requires = "peak_source")]
        peak_flops: Option<f64>,
        /// Where that peak comes from.
        #[arg(long, requires = "peak_flops")]
        peak_source: Option<String>,
    },
    /// Follow run directories live: a grid, one run, or a folder of runs (any process's).
    Monitor {
        /// The directory.
        dir: PathBuf,
    },
    /// Generate text and images from a trained run (streamed; images written as PNGs).
    Generate(generate::GenerateArgs),
    /// Fuzz the parsers that read outside bytes (safetensors, config.json, vq_config.json,
    /// .npy, shards, JSONL, HTML, tar): mutated inputs must end in errors, never panics.
    Fuzz(fuzz::FuzzArgs),
    /// Evaluate a trained run on its held-out data (perplexity by modality, captions, image
    /// likelihood); writes eval.json and a sheet of samples.
    Eval(eval::EvalArgs),
    /// Supervised fine-tuning of a pre-trained run (default: experiments/sft.toml on the
    /// built-in SFT set), live; then answer loss, answer choice and image likelihood per
    /// category on held-out prompts, before and after.
    Sft(sft::SftArgs),
    /// Answer a prompt set (SFT-format JSONL) with one run, or two side by side: text and PNGs
    /// per prompt, and one self-contained HTML page to choose A, B or tie per prompt.
    Respond(respond::RespondArgs),
    /// Write the ablation report (report.md and PNG plots) of a grid's runs.
    Report {
        /// The grid directory (e.g. runs/stability).
        runs_dir: PathBuf,
        /// Where report.md and the plots go (default: RUNS_DIR/report).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Another run of the same grid (other seeds, another machine): print both grids'
        /// verdicts side by side and how far each cell moved, instead of writing the report.
        #[arg(long, value_name = "RUNS_DIR", conflicts_with = "out")]
        vs: Option<PathBuf>,
    },
    /// Train one language-model run (or continue one exactly with --resume RUN).
    Train {
        /// Experiment file ([model], [data], [optim], [schedule], [train]).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run directory (default: runs/<config name>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Continue the run in this directory from its newest checkpoint.
        #[arg(long, conflicts_with_all = ["config", "run_dir"])]
        resume: Option<PathBuf>,
        /// Stop after this many steps (the schedule still spans train.steps).
        #[arg(long)]
        max_steps: Option<usize>,
        /// Steps between checkpoints (overrides train.checkpoint_every).
        #[arg(long)]
        checkpoint_every: Option<usize>,
        /// Cache folder for data.
        #[arg(long, default_value = ".cache")]
        cache: PathBuf,
    },
    /// The data pipeline: prepare shards, check sources, shard stats, train a text tokenizer.
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// The VQ-VAE image tokenizer: train, encode, decode.
    Vq {
        #[command(subcommand)]
        command: vq::VqCommand,
    },
    /// Speed benchmarks P1-P5 (train step, decoding, VQ encoding, loader), optionally side by
    /// side with PyTorch (--vs-torch PYTHON); a table, and JSON in --out.
    Bench(bench::BenchArgs),
    /// Check a device against the CPU: equal logits for equal weights, and training that lowers
    /// the loss in f32 and bf16. With a device list, also data-parallel training against one device.
    DeviceCheck {
        /// Train steps per precision.
        #[arg(long, default_value_t = 30)]
        steps: usize,
    },
    /// Raw logits of an HF-format checkpoint for token ids from a .npy file.
    Logits {
        /// Directory with config.json and model.safetensors (or a sharded index).
        #[arg(long)]
        checkpoint: PathBuf,
        /// int64 or int32 ids, shape [batch, seq].
        #[arg(long)]
        input: PathBuf,
        /// f32 logits, shape [batch, seq, vocab]; image tokens are not masked.
        #[arg(long)]
        output: PathBuf,
    },
    /// Write a checkpoint in HF's Chameleon layout: an HF checkpoint again (another dtype,
    /// sharded), or a run of ours with its image tokenizer and sentencepiece tokenizer.
    Export {
        /// An HF checkpoint directory, a run directory of ours (its newest checkpoint), or one
        /// checkpoint directory of a run.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Destination directory.
        #[arg(long)]
        output: PathBuf,
        /// f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: WeightDtype,
        /// Shard the weights into files of at most this many MiB.
        #[arg(long)]
        shard_mb: Option<usize>,
        /// Cache folder for data (a run's tokenizer).
        #[arg(long, default_value = ".cache")]
        cache: PathBuf,
    },
}

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    logging::init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let trains = matches!(
        cli.command,
        Command::Train { .. }
            | Command::Sft(_)
            | Command::Ablate { .. }
            | Command::GridWorker { .. }
            | Command::DeviceCheck { .. }
    );
    if device::is_list(&cli.device) && !trains {
        anyhow::bail!(
            "--device {}: only train, sft, ablate and device-check take several devices (data parallelism)",
            cli.device
        );
    }
    // Before the first tensor op: bench may set the thread count.
    match &cli.command {
        Command::Bench(args) => return bench::run(args, &cli.device),
        Command::Fuzz(args) => return fuzz::run(args),
        Command::DeviceCheck { steps } => return device_check::run(&cli.device, *steps),
        _ => {}
    }
    let device = device::parse(&cli.device)?;
    match cli.command {
        Command::Bench(_) | Command::DeviceCheck { .. } | Command::Fuzz(_) => unreachable!("handled above"),
        Command::Ablate { file, runs_dir, no_tui, cache, jobs } => {
            ablate::run(file.as_deref(), runs_dir.as_deref(), no_tui, &cache, jobs, &device, &cli.device)
        }
        Command::GridWorker { file, runs_dir, run, resume, cache, peak_flops, peak_source } => {
            let peak =
                peak_flops.zip(peak_source).map(|(flops, source)| chameleon_train::speed::Peak { flops, source });
            ablate::worker(ablate::WorkerJob { file, runs_dir, run, resume, cache, peak }, &device, &cli.device)
        }
        Command::Monitor { dir } => ablate::monitor(&dir),
        Command::Report { runs_dir, out, vs: None } => ablate::report(&runs_dir, out.as_deref()),
        Command::Report { runs_dir, vs: Some(other), .. } => ablate::compare(&runs_dir, &other),
        Command::Generate(args) => generate::run(&args, &device),
        Command::Eval(args) => eval::run(&args, &device),
        Command::Sft(args) => sft::run(&args, &device, &cli.device),
        Command::Respond(args) => respond::run(&args, &device),
        Command::Data { command } => data::run(command, &device),
        Command::Train { config, run_dir, resume, max_steps, checkpoint_every, cache } => train::run(
            config.as_deref(),
            run_dir.as_deref(),
            resume.as_deref(),
            max_steps,
            checkpoint_every,
            &cache,
            &device,
            &cli.device,
        ),
        Command::Vq { command } => vq::run(command, &device),
        Command::Logits { checkpoint, input, output } => logits::run(&checkpoint, &input, &output, &device),
        Command::Export { checkpoint, output, dtype, shard_mb, cache } => {
            export::run(&checkpoint, &output, dtype, shard_mb, &cache, &device)
        }
    }
}
