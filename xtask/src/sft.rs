//! `cargo xtask sft`: supervised fine-tuning of a pre-trained run, live, then the before/after
//! evaluation on held-out SFT prompts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use chameleon_data::config::{SourceKind, is_held_out};
use chameleon_data::loader::{Split, open_mixture, open_source};
use chameleon_data::prepare::Prepared;
use chameleon_data::tokenizer::MODEL_FILE;
use chameleon_data::{ImageRef, Segment, corpus, sft_set};
use chameleon_eval::sft_eval::{CategoryEval, SftComparison, evaluate_category};
use chameleon_model::{Chameleon, VocabLayout};
use chameleon_train::experiment::{Experiment, SftConfig};
use chameleon_train::run_dir::{CONFIG_FILE, PROPORTIONS_FILE, State};
use chameleon_train::trainer::{RunOptions, checkpoint_mixture, latest_checkpoint, train};
use serde_json::json;

use crate::data::prepare_data;
use crate::live::monitored;
use crate::trained::{checkpoint_of, load_weights};

/// The default fine-tuning experiment.
pub const DEFAULT_CONFIG: &str = "experiments/sft.toml";
/// Before/after numbers, written beside the run's metrics.
pub const EVAL_FILE: &str = "sft-eval.json";

/// Arguments of `cargo xtask sft`.
#[derive(clap::Args, Debug)]
pub struct SftArgs {
    /// Fine-tuning experiment ([sft], [data], [optim], [schedule], [train]).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The pre-trained run (or one of its checkpoints); overrides `sft.from`.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Run directory (default: runs/<config name>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the fine-tuning run in --run-dir from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps (the schedule still spans train.steps).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Plain progress lines instead of the terminal UI (the default without a terminal).
    #[arg(long)]
    pub no_tui: bool,
    /// Cache folder for data.
    #[arg(long, default_value = ".cache")]
    pub cache: PathBuf,
}

/// The fine-tuning experiment: the pre-trained run's model (with the SFT dropout), its text and
/// image tokenizers, and this file's data, optimizer, schedule and training settings.
fn resolve(config: &Path, from: Option<&Path>, cache: &Path, device: &Device) -> Result<(Experiment, SftConfig)> {
    let mut exp = Experiment::load(config)?;
    let mut sft = SftConfig::load(config)?;
    if let Some(from) = from {
        sft.from = from.to_path_buf();
    }
    let (run, checkpoint) = checkpoint_of(&sft.from)
        .map_err(|e| anyhow::anyhow!("{e:#} (the default pre-trained run comes from `cargo xtask ablate`)"))?;
    let pre = Experiment::load(&run.join(CONFIG_FILE))?;
    let pre_data = prepare_data(&pre.data, cache, false, device)?;
    exp.model = pre.model.clone().with_attention_dropout(sft.dropout).with_residual_dropout(sft.dropout);
    exp.data.tokenizer.model = Some(pre_data.dir.join(MODEL_FILE));
    exp.data.images = pre.data.images.clone();
    exp.train.init_from = Some(checkpoint);
    let builtin = exp.data.sources.iter().any(|s| s.format == SourceKind::BuiltinSft);
    if builtin && exp.data.held_out_every != pre.data.held_out_every {
        bail!(
            "{}: data.held_out_every = {} but the pre-trained run held out 1 in {} ({}); the built-in SFT set must \
             hold out the same emoji and passages, or its held-out prompts were trained on",
            config.display(),
            exp.data.held_out_every,
            pre.data.held_out_every,
            run.join(CONFIG_FILE).display()
        );
    }
    if exp.data.seq_len > exp.model.max_seq_len {
        bail!(
            "{}: data.seq_len = {} is longer than the pre-trained model's max_seq_len = {}",
            config.display(),
            exp.data.seq_len,
            exp.model.max_seq_len
        );
    }
    exp.validate().map_err(|m| anyhow::anyhow!("{}: {m}", config.display()))?;
    Ok((exp, sft))
}

/// Scores `model` on up to `max` conversations of every source of `prepared`: the first ones of
/// the held-out split, or with `drawn` (per source, as [`chameleon_data::Mixture::drawn`]) the
/// first ones the run trained on.
fn evaluate(
    model: &Chameleon,
    exp: &Experiment,
    prepared: &Prepared,
    layout: &VocabLayout,
    drawn: Option<&BTreeMap<String, Vec<u32>>>,
    max: usize,
    device: &Device,
) -> Result<BTreeMap<String, CategoryEval>> {
    let mut out = BTreeMap::new();
    for source in &exp.data.sources {
        let split = if drawn.is_some() { Split::Train } else { Split::HeldOut };
        let shards = open_source(prepared, &source.name, split)?;
        let indices: Vec<usize> = match drawn {
            Some(d) => d.get(&source.name).into_iter().flatten().take(max).map(|&i| i as usize).collect(),
            None => (0..shards.len().min(max)).collect(),
        };
        let docs: Vec<Vec<u32>> = indices
            .into_iter()
            .map(|i| {
                let mut tokens = Vec::new();
                shards.tokens_into(i, &mut tokens);
                tokens
            })
            .collect();
        out.insert(source.name.clone(), evaluate_category(model, &docs, layout, device));
    }
    Ok(out)
}

/// Fine-tunes, then evaluates before and after and prints the table and the realised mixture.
pub fn run(args: &SftArgs, device: &Device, spec: &str) -> Result<()> {
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(args.config.file_stem().and_then(|s| s.to_str()).unwrap_or("sft"))
    });
    let (exp, sft) = if args.resume {
        if args.from.is_some() {
            bail!("--resume continues {} from where it stopped; --from is for a new run", run_dir.display());
        }
        let exp = Experiment::load(&run_dir.join(CONFIG_FILE))?;
        (exp, SftConfig::load(&args.config)?)
    } else {
        resolve(&args.config, args.from.as_deref(), &args.cache, device)?
    };
    let Some(from) = exp.train.init_from.clone() else {
        bail!("{}: train.init_from is not set; not a fine-tuning run", run_dir.join(CONFIG_FILE).display());
    };
    let prepared = prepare_data(&exp.data, &args.cache, false, device)?;
    println!("fine-tuning {} into {}", from.display(), run_dir.display());
    let options = RunOptions {
        max_steps: args.max_steps,
        resume: args.resume,
        // The monitor owns the screen when it is up; the bar is for plain terminals.
        progress_bar: args.no_tui || !chameleon_train::monitor::has_terminal(),
        ..crate::device::training(spec, exp.train.precision, device)?
    };
    let (exp2, prepared2, dir2, device2) = (exp.clone(), prepared.clone(), run_dir.clone(), device.clone());
    let status = monitored(&run_dir, "sft.log", !args.no_tui, move |stop| {
        let options = RunOptions { stop: Some(stop), ..options };
        Ok(train(&exp2, &prepared2, &dir2, &device2, &options)?)
    })?;
    println!("{}: {} at step {}", run_dir.display(), status.state, status.step);
    if status.state != State::Done {
        println!("not finished: `cargo xtask sft --run-dir {} --resume` continues it", run_dir.display());
        return Ok(());
    }
    let path = run_dir.join(PROPORTIONS_FILE);
    let proportions = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    println!("realised mixture ({}):\n{}", path.display(), mixture_table(&proportions));

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!(
        "scoring up to {} held-out prompts per category, before and after (and as many trained ones)",
        sft.eval_prompts
    ));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let n = sft.eval_prompts;
    let layout = prepared.tokenizer()?.layout().clone();
    let before = evaluate(&load_weights(&exp, &from, device)?, &exp, &prepared, &layout, None, n, device)?;
    let last = latest_checkpoint(&run_dir)?.with_context(|| format!("{}: no checkpoint", run_dir.display()))?;
    let tuned = load_weights(&exp, &last, device)?;
    let after = evaluate(&tuned, &exp, &prepared, &layout, None, n, device)?;
    // The conversations the run drew, from the sampler state it saved.
    let mut mixture = open_mixture(&prepared, &exp.data, Split::Train)?;
    mixture.restore(checkpoint_mixture(&last)?).with_context(|| format!("{}: sampler state", last.display()))?;
    let drawn: BTreeMap<String, Vec<u32>> = mixture.sources().to_vec().into_iter().zip(mixture.drawn()).collect();
    let after_trained = evaluate(&tuned, &exp, &prepared, &layout, Some(&drawn), n, device)?;
    bar.finish_and_clear();
    let comparison = SftComparison { before, after, after_trained };
    let path = run_dir.join(EVAL_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&comparison)?)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    println!("\n{}\n(also in {})", comparison.table(), path.display());
    if let Some(prompts) = write_prompt_set(&exp, &args.cache, &run_dir.join("prompts"), 3)? {
        println!(
            "held-out prompts to compare answers: cargo xtask respond --run {} --vs {} --prompts {} --out {}",
            run_dir.display(),
            from.display(),
            prompts.display(),
            run_dir.join("respond").display()
        );
    }
    Ok(())
}

/// Held-out prompts of the built-in SFT sources, `per_category` each, as a prompt file for
/// `cargo xtask respond`: `dir/prompts.jsonl` (with the true answers as references) and the
/// images beside it. Returns the file, or `None` when no source is built in.
fn write_prompt_set(exp: &Experiment, cache: &Path, dir: &Path, per_category: usize) -> Result<Option<PathBuf>> {
    let builtin: Vec<&str> = exp
        .data
        .sources
        .iter()
        .filter(|s| s.format == SourceKind::BuiltinSft)
        .filter_map(|s| s.category.as_deref())
        .collect();
    if builtin.is_empty() {
        return Ok(None);
    }
    let texts = corpus::text_documents(&corpus::shakespeare_files(cache)?)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let every = exp.data.held_out_every;
    let mut lines = String::new();
    let mut images = 0usize;
    for category in builtin {
        let held_out = sft_set::conversations(category, &texts)
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .filter(|(_, group)| is_held_out(*group, every))
            .take(per_category);
        for (conversation, _) in held_out {
            let mut messages = Vec::new();
            for (k, turn) in conversation.turns.iter().enumerate() {
                let mut content = Vec::new();
                for segment in turn {
                    match segment {
                        Segment::Text(t) => content.push(json!({ "text": t })),
                        Segment::Image(ImageRef::Bytes { bytes, .. }) => {
                            let name = format!("{images:03}.png");
                            std::fs::write(dir.join(&name), bytes)
                                .with_context(|| format!("{}: cannot write", dir.join(&name).display()))?;
                            content.push(json!({ "image": name }));
                            images += 1;
                        }
                        Segment::Image(ImageRef::File(p)) => content.push(json!({ "image": p })),
                        Segment::EndOfTurn => {}
                    }
                }
                let role = if k % 2 == 0 { "user" } else { "assistant" };
                messages.push(json!({ "role": role, "content": content }));
            }
            lines.push_str(&format!("{}\n", json!({ "category": category, "messages": messages })));
        }
    }
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, lines).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(Some(path))
}

/// The realised mixture as lines `stream: rows (share drawn, share intended)`.
fn mixture_table(json: &str) -> String {
    let Ok(stages) = serde_json::from_str::<serde_json::Value>(json) else { return "(none written)".into() };
    let mut out = String::new();
    for stage in stages.as_array().into_iter().flatten() {
        out.push_str(&format!("  stage from {}:\n", stage["start"]));
        for (name, v) in stage["streams"].as_object().into_iter().flatten() {
            let (rows, drawn, intended) = (&v[0], v[1].as_f64().unwrap_or(0.0), v[2].as_f64().unwrap_or(0.0));
            out.push_str(&format!("    {name:<28} {rows:>6} rows  {drawn:>6.3} drawn  {intended:>6.3} intended\n"));
        }
    }
    out
}
