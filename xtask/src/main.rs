//! `cargo xtask <command>`: the one command line of chameleon-rs.

mod data;
mod device;
mod export;
mod logits;
mod npy;
mod vq;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use chameleon_model::checkpoint::WeightDtype;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "chameleon-rs: Chameleon-style mixed-modal models on burn")]
struct Cli {
    /// Backend: cpu (burn flex) or cuda[:N] (needs a build with --features cuda).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the stability ablation grid (default: experiments/stability.toml on CPU).
    Ablate {
        /// Experiment file.
        file: Option<PathBuf>,
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
    /// Load a checkpoint and write it again in HF's layout (another dtype, sharded).
    Export {
        /// Source checkpoint directory.
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
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let device = device::parse(&cli.device)?;
    match cli.command {
        Command::Ablate { .. } => anyhow::bail!(
            "the ablation runner is not built yet: it lands with the training loop (issue #5). \
             Until then `cargo xtask logits`, `export` and `vq` work; see README.md"
        ),
        Command::Data { command } => data::run(command, &device),
        Command::Vq { command } => vq::run(command, &device),
        Command::Logits { checkpoint, input, output } => logits::run(&checkpoint, &input, &output, &device),
        Command::Export { checkpoint, output, dtype, shard_mb } => {
            export::run(&checkpoint, &output, dtype, shard_mb, &device)
        }
    }
}
