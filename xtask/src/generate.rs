//! `cargo xtask generate`: mixed-modal output from a trained run, streamed: text is printed as it
//! comes, and each image is written as a PNG when its block completes (optionally a partial
//! decode every k codes).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::Device;
use chameleon_eval::generate::{Event, GenerateConfig, Guidance, Mode, Sampling, generate};
use chameleon_model::Modality;
use chameleon_model::vocab::names;
use clap::{Args, ValueEnum};

use crate::trained::{Loaded, image_block, load_checkpoint, load_run, write_image};

/// What to generate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Text only.
    Text,
    /// One image.
    Image,
    /// Text and images.
    Interleaved,
}

/// The options of `cargo xtask generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A run directory of ours (its newest checkpoint is used), or one of its checkpoint directories.
    #[arg(long, required_unless_present = "checkpoint", conflicts_with = "checkpoint")]
    run: Option<PathBuf>,
    /// One checkpoint directory: of a run (RUN/checkpoint-NNNNNNN), or an HF Chameleon checkpoint.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// An HF checkpoint's tokenizer.json (default: beside its weights).
    #[arg(long, requires = "checkpoint")]
    tokenizer: Option<PathBuf>,
    /// A VQ decoder in Meta's naming for an HF checkpoint (which has none); without it images are
    /// written as codes (image-N.codes.json).
    #[arg(long, requires = "checkpoint")]
    decoder: Option<PathBuf>,
    /// The prompt; each `<image>` marker takes the next --image file.
    #[arg(long)]
    prompt: String,
    /// Images for the prompt's `<image>` markers, in order.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// text, image or interleaved.
    #[arg(long, value_enum, default_value = "interleaved")]
    mode: ModeArg,
    /// Where images and the transcript go.
    #[arg(long, default_value = "generated")]
    out: PathBuf,
    /// Tokens to generate at most (default: 256, or one whole image in --mode image).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Sampling temperature (text and images).
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    /// Keep the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Repetition penalty on text.
    #[arg(long, default_value_t = 1.2)]
    repetition_penalty: f64,
    /// Greedy decoding (argmax) for text and images.
    #[arg(long)]
    greedy: bool,
    /// Image guidance scale s_img (classifier-free guidance; 1 and --cfg-text 1: off).
    #[arg(long, default_value_t = 1.2)]
    cfg_image: f64,
    /// Text guidance scale s_txt.
    #[arg(long, default_value_t = 3.0)]
    cfg_text: f64,
    /// Also write a partial decode of an image every this many codes.
    #[arg(long)]
    partial_every: Option<usize>,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cache folder for data (the run's tokenizer).
    #[arg(long, default_value = ".cache")]
    cache: PathBuf,
}

/// `<s>` + the prompt's text pieces, with each `<image>` replaced by its image block.
fn prompt_tokens(args: &GenerateArgs, loaded: &Loaded, device: &Device) -> Result<Vec<u32>> {
    let layout = loaded.text.layout();
    let special = layout.special();
    let parts: Vec<&str> = args.prompt.split("<image>").collect();
    if parts.len() - 1 != args.images.len() {
        bail!(
            "the prompt has {} <image> marker(s) but {} --image file(s) were given",
            parts.len() - 1,
            args.images.len()
        );
    }
    let mut tokens = vec![special.bos];
    for (i, text) in parts.iter().enumerate() {
        loaded.text.encode_into(text, &mut tokens)?;
        if let Some(path) = args.images.get(i) {
            tokens.extend(image_block(loaded, path, device)?);
        }
    }
    Ok(tokens)
}

/// Runs `cargo xtask generate`.
pub fn run(args: &GenerateArgs, device: &Device) -> Result<()> {
    let loaded = match (&args.run, &args.checkpoint) {
        (Some(run), _) => load_run(run, &args.cache, device)?,
        (None, Some(dir)) => {
            load_checkpoint(dir, args.tokenizer.as_deref(), args.decoder.as_deref(), &args.cache, device)?
        }
        (None, None) => bail!("give --run RUN or --checkpoint DIR"),
    };
    // An HF checkpoint's vocabulary_map may lack what a prompt's images need (what generation
    // needs, GenerateConfig::validate checks).
    if !args.images.is_empty() {
        let layout = loaded.text.layout();
        let feature = "a prompt with --image";
        layout.require_special(&[names::BEGIN_IMAGE, names::END_IMAGE], feature).map_err(|m| anyhow!(m))?;
        layout.require_images(feature).map_err(|m| anyhow!(m))?;
    }
    let prompt = prompt_tokens(args, &loaded, device)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;
    let sampling = Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args.repetition_penalty,
        greedy: args.greedy,
    };
    let vq = loaded.vq.as_ref();
    if vq.is_none() && !matches!(args.mode, ModeArg::Text) {
        bail!("this checkpoint has no image tokenizer (no vq_config): only --mode text can run");
    }
    let codes_per_image = vq.map_or(0, |v| v.config.codes_per_image());
    let max_new_tokens = args.max_new_tokens.unwrap_or(match args.mode {
        ModeArg::Image => codes_per_image + 2,
        _ => 256,
    });
    let max_len = loaded.model.config.max_seq_len;
    let limit = max_len.min(prompt.len() + max_new_tokens);
    if prompt.len() >= limit {
        bail!("the prompt is {} tokens; the model reads at most {max_len}: nothing can be generated", prompt.len());
    }
    if matches!(args.mode, ModeArg::Image) && prompt.len() + codes_per_image + 2 > limit {
        bail!(
            "an image takes {} tokens (begin, {codes_per_image} codes, end) but only {} fit after the {}-token prompt \
             (--max-new-tokens {}, model max_seq_len {max_len}); raise --max-new-tokens",
            codes_per_image + 2,
            limit - prompt.len(),
            prompt.len(),
            max_new_tokens
        );
    }
    let config = GenerateConfig {
        mode: match args.mode {
            ModeArg::Text => Mode::Text,
            ModeArg::Image => Mode::Image,
            ModeArg::Interleaved => Mode::Interleaved,
        },
        max_new_tokens,
        max_seq_len: loaded.model.config.max_seq_len,
        codes_per_image,
        text: sampling,
        image: Sampling { repetition_penalty: 1.0, ..sampling },
        guidance: (args.cfg_image != 1.0 || args.cfg_text != 1.0)
            .then_some(Guidance { image_scale: args.cfg_image, text_scale: args.cfg_text }),
        seed: args.seed,
        use_cache: true,
    };
    let layout = loaded.text.layout().clone();
    config.validate(&layout).map_err(|m| anyhow!("{m}"))?;
    // The current text run's ids and what of it is printed. Each run is decoded whole, so pieces
    // that join (byte pieces of one character, spaces) come out right; a character still missing
    // bytes (U+FFFD at the end) is held back until it completes.
    let (mut text_run, mut printed, mut images, mut transcript) = (Vec::new(), String::new(), 0usize, String::new());
    let mut failure: Option<anyhow::Error> = None;
    let mut stdout = std::io::stdout();
    generate(&loaded.model, &layout, &[prompt], &config, device, &mut |event| {
        let result = (|| -> Result<()> {
            match event {
                Event::Text { token, .. } if layout.modality(token) == Some(Modality::Text) => {
                    text_run.push(token);
                    let text = loaded.text.decode(&text_run)?;
                    let stable = text.trim_end_matches('\u{FFFD}');
                    if let Some(new) = stable.strip_prefix(printed.as_str()) {
                        print!("{new}");
                        printed = stable.to_string();
                    }
                    stdout.flush()?;
                }
                Event::Text { .. } => {}
                Event::ImageCode { codes, .. } => {
                    if let Some(k) = args.partial_every
                        && k > 0
                        && codes.len() % k == 0
                        && codes.len() < codes_per_image
                    {
                        // The codes not yet drawn are shown as code 0.
                        let mut padded = codes.clone();
                        padded.resize(codes_per_image, 0);
                        if let Some(vq) = vq {
                            let base = args.out.join(format!("image-{images}.partial-{:04}", codes.len()));
                            write_image(vq, &padded, &base, device)?;
                        }
                    }
                }
                Event::ImageDone { codes, .. } => {
                    transcript.push_str(&loaded.text.decode(&text_run)?);
                    if let Some(vq) = vq {
                        let path = write_image(vq, &codes, &args.out.join(format!("image-{images}")), device)?;
                        println!("\n[image: {}]", path.display());
                        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        transcript.push_str(&format!("\n<image: {name}>\n"));
                    }
                    (text_run, printed, images) = (Vec::new(), String::new(), images + 1);
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let last = loaded.text.decode(&text_run)?;
    println!("{}", last.strip_prefix(printed.as_str()).unwrap_or(""));
    transcript.push_str(&last);
    let path = args.out.join("response.txt");
    std::fs::write(&path, &transcript).with_context(|| format!("{}: cannot write", path.display()))?;
    tracing::info!("{} image(s) and the transcript in {}", images, args.out.display());
    Ok(())
}
