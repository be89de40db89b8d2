//! `cargo xtask data prepare|check|stats|tokenizer`: the data pipeline from the command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use chameleon_data::config::ImagesConfig;
use chameleon_data::loader::{Split, open_mixture, open_source};
use chameleon_data::pack::{Framed, PackSpec, pack_in_order};
use chameleon_data::prepare::{ImageCoder, Prepared, prepare};
use chameleon_data::shard::{Shard, ShardSet, ShardStats, TokenClass};
use chameleon_data::source::{ImagePaths, SourceFormat, SourceOptions, check};
use chameleon_data::tokenizer::{TextTokenizer, TokenizerConfig, train_sentencepiece};
use chameleon_data::{DataConfig, Modality};
use chameleon_model::checkpoint::{VQ_CONFIG_FILE, load_vq_checkpoint};
use chameleon_model::vq::VqVae;
use chameleon_train::vq_train::{VqExperiment, train_vq};
use clap::Subcommand;

/// The data subcommands.
#[derive(Subcommand)]
pub enum DataCommand {
    /// Fetch the sources, train or load the tokenizer, encode images, write shards (cached).
    Prepare {
        /// Experiment file with a [data] section.
        #[arg(long, default_value = "experiments/data.toml")]
        config: PathBuf,
        /// Skip bad records (and count them) instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
        /// Cache folder for downloads, tokenizers and shards.
        #[arg(long, default_value = ".cache")]
        cache: PathBuf,
    },
    /// Validate a source: counts, then every bad record with its place and reason.
    Check {
        /// text, caption, interleaved, webdataset, html or sft.
        format: SourceFormat,
        /// File or folder.
        path: PathBuf,
        /// HTML: images with a side below this are icons and are dropped.
        #[arg(long, default_value_t = 32)]
        min_image_side: u32,
        /// JSONL: accept image paths outside the source's folder (absolute, or climbing out
        /// with `..`).
        #[arg(long)]
        images_anywhere: bool,
    },
    /// Tokens per modality, documents, images and packed sequences of shards.
    Stats {
        /// A prepared folder (with manifest.json), a folder of .shard files, or one .shard file.
        shards: PathBuf,
        /// Tokens the model reads per sequence (default: the prepared folder's seq_len, else 256).
        #[arg(long)]
        seq_len: Option<usize>,
    },
    /// Train a sentencepiece BPE tokenizer on text files and write it with its unified vocab.
    Tokenizer {
        /// UTF-8 text files.
        #[arg(long, num_args = 1.., required = true)]
        text: Vec<PathBuf>,
        /// Sentencepiece pieces (with <unk> and the 256 byte pieces).
        #[arg(long, default_value_t = 2048)]
        pieces: usize,
        /// Codebook size of the image tokenizer the vocabulary makes room for.
        #[arg(long, default_value_t = 512)]
        codebook: usize,
        /// Output folder (tokenizer.model, vocab.json).
        #[arg(long)]
        out: PathBuf,
        /// Cache folder (a pip-installed trainer lives there).
        #[arg(long, default_value = ".cache")]
        cache: PathBuf,
    },
}

/// Runs one subcommand.
pub fn run(command: DataCommand, device: &Device) -> Result<()> {
    match command {
        DataCommand::Prepare { config, skip_bad, cache } => {
            let data = DataConfig::load(&config)?;
            let prepared = prepare_data(&data, &cache, skip_bad, device)?;
            print_prepared(&prepared, &data)
        }
        DataCommand::Check { format, path, min_image_side, images_anywhere } => {
            let image_paths = if images_anywhere { ImagePaths::Anywhere } else { ImagePaths::Inside };
            let report = check(format, &path, &SourceOptions { min_image_side, category: None, image_paths });
            print!("{report}");
            if !report.bad.is_empty() {
                bail!("{}: {} bad record(s)", path.display(), report.bad.len());
            }
            Ok(())
        }
        DataCommand::Stats { shards, seq_len } => stats(&shards, seq_len),
        DataCommand::Tokenizer { text, pieces, codebook, out, cache } => {
            let mut lines = Vec::new();
            for f in &text {
                let t = std::fs::read_to_string(f).with_context(|| format!("{}: cannot read as UTF-8", f.display()))?;
                lines.extend(t.lines().map(str::to_string));
            }
            let config = TokenizerConfig { text_pieces: pieces, ..TokenizerConfig::default() };
            let model = train_sentencepiece(lines.iter().map(String::as_str), &config, &out, &cache)?;
            let tok = TextTokenizer::from_model(&model, codebook)?;
            tok.save(&model, &out)?;
            println!("{}: {} token ids ({} text pieces)", out.display(), tok.vocab_size(), pieces);
            Ok(())
        }
    }
}

/// Loads the VQ tokenizer that `images` names, training it first when it is missing and a VQ
/// experiment is given.
pub fn image_tokenizer(images: &ImagesConfig, device: &Device) -> Result<VqVae> {
    let dir = &images.vq_checkpoint;
    if !dir.join(VQ_CONFIG_FILE).is_file() {
        let Some(exp_path) = &images.vq_experiment else {
            bail!(
                "{}: no image tokenizer there (no {VQ_CONFIG_FILE}); train one with `cargo xtask vq train` or set \
                 [data.images] vq_experiment",
                dir.display()
            );
        };
        if dir.file_name().and_then(|n| n.to_str()) != Some("tokenizer") {
            bail!("{}: to be trained from {}, vq_checkpoint must be RUN/tokenizer", dir.display(), exp_path.display());
        }
        let run = dir.parent().unwrap_or(Path::new("."));
        tracing::info!("no image tokenizer at {}: training it from {} first", dir.display(), exp_path.display());
        let exp = VqExperiment::load(exp_path)?;
        train_vq(&exp, run, device, true)
            .with_context(|| format!("training the image tokenizer into {}", run.display()))?;
    }
    Ok(load_vq_checkpoint(dir, None, device)?)
}

/// Prepares (or finds) the shards of a data config.
pub fn prepare_data(data: &DataConfig, cache: &Path, skip_bad: bool, device: &Device) -> Result<Prepared> {
    let vq = image_tokenizer(&data.images, device)?;
    let coder = ImageCoder { model: &vq, dir: &data.images.vq_checkpoint, device };
    Ok(prepare(data, &coder, cache, skip_bad, std::io::IsTerminal::is_terminal(&std::io::stderr()))?)
}

fn print_prepared(prepared: &Prepared, data: &DataConfig) -> Result<()> {
    let m = &prepared.manifest;
    println!(
        "{} {}",
        if prepared.built { "prepared" } else { "found in the cache (nothing to do):" },
        prepared.dir.display()
    );
    println!(
        "vocabulary {} ids (codebook {}, {} codes per {}px image)",
        m.vocab_size, m.codebook_size, m.codes_per_image, m.image_resolution
    );
    println!(
        "{:<14} {:>9} {:>9} {:>8} {:>11} {:>13} {:>7}",
        "source", "docs", "held out", "images", "tokens", "caption 1st", "bad"
    );
    for s in &m.sources {
        let order = if s.captions_first + s.images_first > 0 {
            format!("{:.0}%", 100.0 * s.captions_first as f64 / (s.captions_first + s.images_first) as f64)
        } else {
            "-".into()
        };
        println!(
            "{:<14} {:>9} {:>9} {:>8} {:>11} {:>13} {:>7}",
            s.name, s.documents, s.held_out_documents, s.images, s.tokens, order, s.skipped_bad
        );
    }
    // A dry run of the mixture shows the realised proportions per stage.
    let mut mixture = open_mixture(prepared, data, Split::Train)?;
    for stage in &data.stages {
        for _ in 0..2000 {
            mixture.next_row(stage.start);
        }
    }
    println!("mixture, a dry run of 2000 rows per stage (drawn / intended):");
    for stage in mixture.proportions() {
        let parts: Vec<String> = stage
            .streams
            .iter()
            .map(|(name, (_, share, intended))| format!("{name} {:.1}% / {:.1}%", 100.0 * share, 100.0 * intended))
            .collect();
        println!("  from {:>3.0}%: {}", 100.0 * stage.start, parts.join(", "));
    }
    Ok(())
}

/// Rows that packing a set's documents in order gives, and documents that fit no row.
fn packed_rows(set: &ShardSet, spec: &PackSpec) -> (u64, u64) {
    let mut rows = 0u64;
    let docs = (0..set.len()).map(|i| {
        let mut tokens = Vec::new();
        set.tokens_into(i, &mut tokens);
        Framed::new(set.kind(i), &tokens, &spec.special)
    });
    let skipped = pack_in_order(spec, docs, |_| rows += 1);
    (rows, skipped)
}

fn stats(path: &Path, seq_len: Option<usize>) -> Result<()> {
    if let Some(n) = seq_len {
        chameleon_data::pack::check_seq_len(n).map_err(|e| anyhow::anyhow!("--seq-len: {e}"))?;
    }
    let mut sets: Vec<(String, ShardSet)> = Vec::new();
    let (layout, default_len) = if path.join(chameleon_data::prepare::MANIFEST_FILE).is_file() {
        let prepared = Prepared::open(path)?;
        for s in &prepared.manifest.sources {
            sets.push((format!("{}.train", s.name), open_source(&prepared, &s.name, Split::Train)?));
            sets.push((format!("{}.heldout", s.name), open_source(&prepared, &s.name, Split::HeldOut)?));
        }
        (Some(prepared.tokenizer()?.layout().clone()), prepared.manifest.config.seq_len)
    } else if path.is_dir() {
        sets.push((path.display().to_string(), ShardSet::open(path)?));
        (None, 256)
    } else {
        sets.push((path.display().to_string(), ShardSet::from_shards(vec![Shard::open(path)?])?));
        (None, 256)
    };
    let seq_len = seq_len.unwrap_or(default_len);
    chameleon_data::pack::check_seq_len(seq_len).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let Some(layout) = layout else {
        // Without the vocabulary, only counts by document kind are known.
        for (name, set) in &sets {
            println!("{name}: {} documents, {} tokens in {} shard(s)", set.len(), set.n_tokens(), set.shards().len());
        }
        println!("(point stats at a prepared folder for tokens per modality and packed sequences)");
        return Ok(());
    };
    let class = |t: u32| match layout.modality(t) {
        Some(Modality::Image) => TokenClass::Image,
        Some(Modality::Text) => TokenClass::Text,
        _ => TokenClass::Special,
    };
    let spec = PackSpec { seq_len, special: layout.special() };
    println!(
        "{:<22} {:>8} {:>8} {:>12} {:>12} {:>10} {:>10}",
        "split", "docs", "images", "text tok", "image tok", "special", "sequences"
    );
    let mut total = ShardStats::default();
    for (name, set) in &sets {
        let s = set.stats(class);
        let images = count_images(set, layout.special().begin_image);
        let (rows, too_long) = packed_rows(set, &spec);
        if too_long > 0 {
            println!("  ({too_long} document(s) of {name} hold an image longer than a sequence and are never packed)");
        }
        println!(
            "{:<22} {:>8} {:>8} {:>12} {:>12} {:>10} {:>10}",
            name, s.documents, images, s.text_tokens, s.image_tokens, s.special_tokens, rows
        );
        total.merge(&s);
    }
    println!(
        "{:<22} {:>8} {:>8} {:>12} {:>12} {:>10}   (sequences of {} + 1 tokens)",
        "total", total.documents, "", total.text_tokens, total.image_tokens, total.special_tokens, seq_len
    );
    Ok(())
}

fn count_images(set: &ShardSet, begin: u32) -> u64 {
    let mut buf = Vec::new();
    (0..set.len())
        .map(|i| {
            buf.clear();
            set.tokens_into(i, &mut buf);
            buf.iter().filter(|&&t| t == begin).count() as u64
        })
        .sum()
}
