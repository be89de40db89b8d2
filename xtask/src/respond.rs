//! `cargo xtask respond`: a prompt set answered by one run, or by two side by side, written as
//! text and PNGs per prompt plus one self-contained HTML page for the paper's relative
//! evaluation: per prompt, the two answers in a blind order and a choice (A, B or tie) that the
//! page tallies and saves as JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use chameleon_data::Segment;
use chameleon_data::source::{Conversation, SftSource};
use chameleon_eval::generate::{Event, GenerateConfig, Guidance, Mode, Sampling, generate};
use chameleon_model::Modality;
use serde::Serialize;
use serde_json::json;

use crate::trained::{Loaded, image_block, load_run, write_image};

/// The page, with `/*DATA*/` where the answers go.
const PAGE: &str = include_str!("respond.html");

/// Arguments of `cargo xtask respond`.
#[derive(clap::Args, Debug)]
pub struct RespondArgs {
    /// The run whose answers are "A": a run directory (its newest checkpoint) or one of its
    /// checkpoint directories.
    #[arg(long)]
    pub run: PathBuf,
    /// A second run (or checkpoint directory), whose answers are "B", shown beside A's.
    #[arg(long)]
    pub vs: Option<PathBuf>,
    /// Prompts: SFT-format JSONL (`{"category", "messages"}`); a final assistant message is kept
    /// as the reference answer.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output folder: A/ and B/ with each prompt's answer, answers.json, and index.html.
    #[arg(long, default_value = "responses")]
    pub out: PathBuf,
    /// Most tokens per answer (an image takes its codes + 2).
    #[arg(long, default_value_t = 160)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0.7, top-p 0.9 and guidance as `generate`'s defaults).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Greedy decoding instead of sampling.
    #[arg(long)]
    pub greedy: bool,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cache folder for data.
    #[arg(long, default_value = ".cache")]
    pub cache: PathBuf,
}

/// One part of a prompt or an answer, as the page shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
enum Part {
    /// Text.
    Text(String),
    /// An image as a `data:` URL, and the file it was written to (answers) or read from.
    Image { src: String, file: String },
}

fn data_url(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mime = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "image/png",
    };
    Ok(format!("data:{mime};base64,{}", base64(&bytes)))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn parts(segments: &[Segment]) -> Result<Vec<Part>> {
    let mut out = Vec::new();
    for s in segments {
        match s {
            Segment::Text(t) => out.push(Part::Text(t.clone())),
            Segment::Image(chameleon_data::ImageRef::File(p)) => {
                out.push(Part::Image { src: data_url(p)?, file: p.display().to_string() })
            }
            Segment::Image(other) => out.push(Part::Text(format!("[image {}]", other.origin()))),
            Segment::EndOfTurn => out.push(Part::Text("\n".into())),
        }
    }
    Ok(out)
}

/// The prompt as tokens: `<s>`, its turns (images through the run's image tokenizer), each
/// closed by end-of-turn; the answer comes next.
fn prompt_tokens(loaded: &Loaded, conversation: &Conversation, device: &Device) -> Result<Vec<u32>> {
    let special = loaded.text.layout().special();
    let mut tokens = vec![special.bos];
    for s in conversation.prompt() {
        match s {
            Segment::Text(t) => loaded.text.encode_into(&t, &mut tokens)?,
            Segment::Image(chameleon_data::ImageRef::File(p)) => tokens.extend(image_block(loaded, &p, device)?),
            Segment::Image(other) => bail!("{}: image {} is not a file", conversation.location, other.origin()),
            Segment::EndOfTurn => tokens.push(special.end_of_turn),
        }
    }
    Ok(tokens)
}

/// Answers every prompt with `loaded`, writing `dir/NNN/answer.txt` and its images.
fn answer_all(
    loaded: &Loaded,
    prompts: &[Conversation],
    args: &RespondArgs,
    dir: &Path,
    device: &Device,
) -> Result<Vec<Vec<Part>>> {
    let vq = loaded.vq.as_ref().with_context(|| format!("{}: the run has no image tokenizer", dir.display()))?;
    let layout = loaded.text.layout().clone();
    let sampling =
        Sampling { temperature: args.temperature, top_p: 0.9, top_k: 0, repetition_penalty: 1.2, greedy: args.greedy };
    let bar = indicatif::ProgressBar::new(prompts.len() as u64);
    let mut answers = Vec::new();
    for (i, conversation) in prompts.iter().enumerate() {
        let prompt = prompt_tokens(loaded, conversation, device)?;
        let max_len = loaded.model.config.max_seq_len;
        if prompt.len() >= max_len {
            bail!(
                "{}: the prompt is {} tokens; the model reads at most {max_len}",
                conversation.location,
                prompt.len()
            );
        }
        let config = GenerateConfig {
            mode: Mode::Interleaved,
            max_new_tokens: args.max_new_tokens,
            max_seq_len: max_len,
            codes_per_image: vq.config.codes_per_image(),
            text: sampling,
            image: Sampling { repetition_penalty: 1.0, ..sampling },
            guidance: Some(Guidance { image_scale: 1.2, text_scale: 3.0 }),
            seed: args.seed.wrapping_add(i as u64),
            use_cache: true,
        };
        config.validate(&layout).map_err(|m| anyhow::anyhow!("{m}"))?;
        let out = dir.join(format!("{i:03}"));
        std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
        let (mut text, mut answer, mut images) = (Vec::new(), Vec::new(), Vec::new());
        generate(&loaded.model, &layout, &[prompt], &config, device, &mut |event| match event {
            Event::Text { token, .. } if layout.modality(token) == Some(Modality::Text) => text.push(token),
            Event::ImageDone { codes, .. } => {
                answer.push(Err(std::mem::take(&mut text)));
                answer.push(Ok(codes));
            }
            _ => {}
        });
        answer.push(Err(text));
        let mut shown = Vec::new();
        let mut transcript = String::new();
        for piece in answer {
            match piece {
                Err(ids) if !ids.is_empty() => {
                    let t = loaded.text.decode(&ids)?;
                    transcript.push_str(&t);
                    shown.push(Part::Text(t));
                }
                Err(_) => {}
                Ok(codes) => {
                    let path = write_image(vq, &codes, &out.join(format!("image-{}", images.len())), device)?;
                    transcript.push_str(&format!("<image: {}>", path.display()));
                    shown.push(Part::Image { src: data_url(&path)?, file: path.display().to_string() });
                    images.push(path);
                }
            }
        }
        let path = out.join("answer.txt");
        std::fs::write(&path, &transcript).with_context(|| format!("{}: cannot write", path.display()))?;
        answers.push(shown);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(answers)
}

/// Which side shows run A for prompt `i`: a fixed coin per prompt, so the page is blind.
fn a_on_left(i: usize) -> bool {
    (i.wrapping_mul(0x9E37_79B9) >> 7).is_multiple_of(2)
}

/// Answers the prompts with one or two runs and writes the page.
pub fn run(args: &RespondArgs, device: &Device) -> Result<()> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!("--temperature {} must be 0 or more", args.temperature);
    }
    let prompts: Vec<Conversation> = SftSource::open_prompts(&args.prompts)?.collect::<Result<_, _>>()?;
    if prompts.is_empty() {
        bail!("{}: no prompts", args.prompts.display());
    }
    let runs: Vec<(&str, &Path)> =
        std::iter::once(("A", args.run.as_path())).chain(args.vs.as_deref().map(|b| ("B", b))).collect();
    let mut answers = Vec::new();
    for (label, run) in &runs {
        let loaded = load_run(run, &args.cache, device)?;
        println!("{label}: {} answering {} prompts", run.display(), prompts.len());
        answers.push(answer_all(&loaded, &prompts, args, &args.out.join(label), device)?);
    }
    let mut items = Vec::new();
    for (i, c) in prompts.iter().enumerate() {
        let mut by_run = serde_json::Map::new();
        for (k, (label, _)) in runs.iter().enumerate() {
            by_run.insert(label.to_string(), serde_json::to_value(&answers[k][i])?);
        }
        let prompt = c.prompt();
        items.push(json!({
            "id": i,
            "category": c.category,
            "source": c.location.to_string(),
            // Without the closing end-of-turn, which only opens the answer.
            "prompt": parts(&prompt[..prompt.len() - 1])?,
            "reference": c.answer().map(parts).transpose()?,
            "answers": by_run,
            "a_left": a_on_left(i),
        }));
    }
    let data = json!({
        "prompts_file": args.prompts.display().to_string(),
        "runs": runs.iter().map(|(l, r)| json!({"label": l, "run": r.display().to_string()})).collect::<Vec<_>>(),
        "items": items,
    });
    std::fs::write(args.out.join("answers.json"), serde_json::to_string_pretty(&data)?)
        .with_context(|| format!("{}: cannot write", args.out.join("answers.json").display()))?;
    // No `<` inside the script at all (`</script>`, `<!--` would end or confuse it): in JSON
    // strings it may be written `\u003c`.
    let script_safe = serde_json::to_string(&data)?.replace('<', "\\u003c");
    let page = args.out.join("index.html");
    std::fs::write(&page, PAGE.replace("/*DATA*/null", &script_safe))
        .with_context(|| format!("{}: cannot write", page.display()))?;
    println!("{} (answers in {}/A{})", page.display(), args.out.display(), if runs.len() > 1 { " and B" } else { "" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn about_half_the_prompts_show_a_on_the_left() {
        let left = (0..200).filter(|&i| a_on_left(i)).count();
        assert!((70..130).contains(&left), "{left}");
    }
}
