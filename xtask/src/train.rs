//! `cargo xtask train`: one language-model run, or its exact continuation.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::tensor::Device;
use chameleon_train::experiment::{Experiment, SftConfig};
use chameleon_train::trainer::{CONFIG_FILE, RunOptions, train};

use crate::data::prepare_data;

/// Trains `config` into `run_dir`, or continues the run in `resume`.
pub fn run(
    config: Option<&Path>,
    run_dir: Option<&Path>,
    resume: Option<&Path>,
    max_steps: Option<usize>,
    checkpoint_every: Option<usize>,
    cache: &Path,
    device: &Device,
    spec: &str,
) -> Result<()> {
    let (config, run_dir): (PathBuf, PathBuf) = match (config, run_dir, resume) {
        (_, _, Some(run)) => (run.join(CONFIG_FILE), run.to_path_buf()),
        (Some(c), Some(r), None) => (c.to_path_buf(), r.to_path_buf()),
        (Some(c), None, None) => {
            let stem = c.file_stem().and_then(|s| s.to_str()).unwrap_or("run");
            (c.to_path_buf(), PathBuf::from("runs").join(stem))
        }
        (None, _, None) => bail!("give --config FILE (a new run) or --resume RUN (continue one)"),
    };
    if resume.is_none() && SftConfig::present(&config)? {
        bail!(
            "{}: a fine-tuning experiment ([sft]); run `cargo xtask sft --config {}`",
            config.display(),
            config.display()
        );
    }
    let exp = Experiment::load(&config)?;
    let prepared = prepare_data(&exp.data, cache, false, device)?;
    let options = RunOptions {
        max_steps,
        checkpoint_every,
        resume: resume.is_some(),
        progress_bar: true,
        ..crate::device::training(spec, exp.train.precision, device)?
    };
    let status = train(&exp, &prepared, &run_dir, device, &options)?;
    println!(
        "{}: {} at step {}{}",
        run_dir.display(),
        status.state,
        status.step,
        status.reason.map(|r| format!(" ({r})")).unwrap_or_default()
    );
    Ok(())
}
