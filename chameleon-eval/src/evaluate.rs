//! Evaluations of a trained model on held-out data, by modality.
//!
//! - **Perplexity by modality**: cross-entropy of every held-out document (framed `<s> … </s>`,
//!   cut into windows of the model's length that never split an image), summed separately over
//!   targets that are text pieces and targets that are image codes.
//! - **Image understanding**, on held-out image-caption pairs:
//!   - captioning: greedy text after `<s>` + the image block, scored against the true caption
//!     with corpus BLEU-4 (add-one smoothing for 2- to 4-grams, Lin & Och 2004) and exact match;
//!   - choice accuracy: the true caption ranked by likelihood (mean log-probability per caption
//!     token, `</s>` included) against `distractors` other held-out captions.
//! - **Image generation**: the likelihood of the true image codes after `<s>` + caption +
//!   begin-image (nats per code), against the same without the caption and against a uniform
//!   guess (`ln codebook`), plus decoded samples for a PNG sheet.

use std::collections::HashMap;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_model::{Chameleon, Modality, VocabLayout};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::generate::{GenerateConfig, Guidance, Mode, Sampling, generate};

/// What to evaluate and how much.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Held-out documents per source for perplexity (0: all).
    pub max_docs: usize,
    /// Held-out caption pairs for the image-understanding and generation measures (0: all).
    pub max_pairs: usize,
    /// Wrong captions ranked against the true one.
    pub distractors: usize,
    /// Longest greedy caption, in tokens.
    pub caption_tokens: usize,
    /// Images generated for the sample sheet.
    pub samples: usize,
    /// Codes of one image.
    pub codes_per_image: usize,
    /// Seed of the distractor choice and the samples.
    pub seed: u64,
}

/// Cross-entropy over one kind of target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Perplexity {
    /// Targets counted.
    pub tokens: u64,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    /// `exp(nll)`.
    pub perplexity: f64,
}

/// One held-out caption pair.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Caption text pieces.
    pub caption: Vec<u32>,
    /// Image codes (codebook indices).
    pub codes: Vec<u32>,
}

/// A greedy caption next to the true one.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionSample {
    /// The true caption.
    pub reference: String,
    /// What the model wrote.
    pub generated: String,
}

/// All measures.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Perplexity over text-piece targets.
    pub text: Perplexity,
    /// Perplexity over image-code targets.
    pub image: Perplexity,
    /// Held-out caption pairs used.
    pub pairs: usize,
    /// Corpus BLEU-4 of greedy captions (smoothed), in [0, 1].
    pub caption_bleu4: f64,
    /// Greedy captions equal to the true one.
    pub caption_exact: f64,
    /// Some captions, for reading.
    pub caption_samples: Vec<CaptionSample>,
    /// Images ranked (those with at least one distractor).
    pub choice_ranked: usize,
    /// Share of ranked images whose true caption ranks first.
    pub choice_accuracy: f64,
    /// Accuracy of a random ranking: the mean of `1 / (distractors + 1)`.
    pub choice_chance: f64,
    /// Nats per code of the true image after its caption.
    pub image_nll_given_caption: f64,
    /// Nats per code of the true image with no caption.
    pub image_nll_unconditioned: f64,
    /// `ln codebook`: a uniform guess.
    pub image_nll_uniform: f64,
}

/// Log-probability of each token after the ones before it: `out[k]` is `log p(tokens[k+1])`.
pub fn token_log_probs(model: &Chameleon, tokens: &[u32], device: &Device) -> Vec<f32> {
    let n = tokens.len();
    if n < 2 {
        return Vec::new();
    }
    let input: Vec<i64> = tokens[..n - 1].iter().map(|&t| t as i64).collect();
    let target: Vec<i64> = tokens[1..].iter().map(|&t| t as i64).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(input, [1, n - 1]), device);
    let y = Tensor::<2, Int>::from_data(TensorData::new(target, [1, n - 1]), device);
    let lp = log_softmax(model.forward(x), 2).gather(2, y.unsqueeze_dim::<3>(2));
    lp.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
}

/// Windows of at most `len` tokens that never cut an image block (unless one block is longer).
/// Each window starts at the previous one's last token, so every token but the first is a target
/// exactly once.
fn windows(tokens: &[u32], len: usize, layout: &VocabLayout) -> Vec<(usize, usize)> {
    let special = layout.special();
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < tokens.len() {
        let mut end = (start + len).min(tokens.len());
        if end < tokens.len()
            && let Some(b) = tokens[start + 1..end].iter().rposition(|&t| t == special.begin_image)
        {
            let b = start + 1 + b;
            let closed = tokens[b..end].contains(&special.end_image);
            if !closed && b > start + 1 {
                end = b;
            }
        }
        out.push((start, end));
        start = (end - 1).max(start + 1);
    }
    out
}

/// Perplexity by target modality over `docs` (each unframed, as in the shards).
pub fn perplexity(
    model: &Chameleon,
    layout: &VocabLayout,
    docs: &[Vec<u32>],
    device: &Device,
) -> (Perplexity, Perplexity) {
    let special = layout.special();
    let window = model.config.max_seq_len + 1;
    let (mut sums, mut counts) = ([0f64; 2], [0u64; 2]);
    for doc in docs {
        let mut framed = Vec::with_capacity(doc.len() + 2);
        framed.push(special.bos);
        framed.extend_from_slice(doc);
        framed.push(special.eos);
        for (a, b) in windows(&framed, window, layout) {
            let piece = &framed[a..b];
            for (k, lp) in token_log_probs(model, piece, device).into_iter().enumerate() {
                let slot = match layout.modality(piece[k + 1]) {
                    Some(Modality::Image) => 1,
                    Some(Modality::Text) => 0,
                    _ => continue,
                };
                sums[slot] -= lp as f64;
                counts[slot] += 1;
            }
        }
    }
    let make = |i: usize| {
        let nll = if counts[i] > 0 { sums[i] / counts[i] as f64 } else { f64::NAN };
        Perplexity { tokens: counts[i], nll, perplexity: nll.exp() }
    };
    (make(0), make(1))
}

/// The caption pair of a caption document (image block and text in either order).
pub fn pair_of(doc: &[u32], layout: &VocabLayout) -> Option<Pair> {
    let codes: Vec<u32> = doc.iter().filter_map(|&t| layout.image_code(t)).collect();
    let caption: Vec<u32> = doc.iter().copied().filter(|&t| layout.modality(t) == Some(Modality::Text)).collect();
    (!codes.is_empty() && !caption.is_empty()).then_some(Pair { caption, codes })
}

fn image_block(codes: &[u32], layout: &VocabLayout) -> Vec<u32> {
    let special = layout.special();
    let mut out = vec![special.begin_image];
    out.extend(codes.iter().filter_map(|&c| layout.image_token(c)));
    out.push(special.end_image);
    out
}

/// Mean log-probability of `continuation` after `prefix`.
fn mean_log_prob(model: &Chameleon, prefix: &[u32], continuation: &[u32], device: &Device) -> f64 {
    let mut seq = prefix.to_vec();
    seq.extend_from_slice(continuation);
    let lp = token_log_probs(model, &seq, device);
    let tail = &lp[prefix.len() - 1..];
    tail.iter().map(|&x| x as f64).sum::<f64>() / tail.len().max(1) as f64
}

/// Corpus BLEU-4 over whitespace words, lower-cased, with add-one smoothing of the 2- to
/// 4-gram precisions.
pub fn bleu4(pairs: &[(String, String)]) -> f64 {
    let words = |s: &str| s.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>();
    let (mut matched, mut total) = ([0f64; 4], [0f64; 4]);
    let (mut hyp_len, mut ref_len) = (0f64, 0f64);
    for (reference, hypothesis) in pairs {
        let (r, h) = (words(reference), words(hypothesis));
        hyp_len += h.len() as f64;
        ref_len += r.len() as f64;
        for n in 1..=4 {
            let grams = |w: &[String]| {
                let mut m: HashMap<Vec<String>, usize> = HashMap::new();
                for g in w.windows(n) {
                    *m.entry(g.to_vec()).or_default() += 1;
                }
                m
            };
            let (rg, hg) = (grams(&r), grams(&h));
            matched[n - 1] += hg.iter().map(|(g, c)| (*c).min(rg.get(g).copied().unwrap_or(0))).sum::<usize>() as f64;
            total[n - 1] += h.len().saturating_sub(n - 1) as f64;
        }
    }
    if hyp_len == 0.0 {
        return 0.0;
    }
    let mut log_p = 0.0;
    for n in 0..4 {
        let (m, t) = if n == 0 { (matched[0], total[0]) } else { (matched[n] + 1.0, total[n] + 1.0) };
        if m == 0.0 {
            return 0.0;
        }
        log_p += (m / t).ln() / 4.0;
    }
    let brevity = if hyp_len < ref_len { (1.0 - ref_len / hyp_len).exp() } else { 1.0 };
    brevity * log_p.exp()
}

/// Runs every measure. `docs` are held-out documents of every source (for perplexity),
/// `pairs` held-out caption pairs. Returns the report and, for the sheet, the sampled images'
/// codes (one per pair, in order).
pub fn evaluate(
    model: &Chameleon,
    layout: &VocabLayout,
    decode_text: &dyn Fn(&[u32]) -> String,
    docs: &[Vec<u32>],
    pairs: &[Pair],
    config: &EvalConfig,
    device: &Device,
) -> (EvalReport, Vec<Vec<u32>>) {
    let special = layout.special();
    let (text, image) = perplexity(model, layout, docs, device);

    // Captioning: greedy text after the image.
    let prompts: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| {
            let mut t = vec![special.bos];
            t.extend(image_block(&p.codes, layout));
            t
        })
        .collect();
    let greedy = GenerateConfig {
        mode: Mode::Text,
        max_new_tokens: config.caption_tokens,
        max_seq_len: model.config.max_seq_len,
        codes_per_image: config.codes_per_image,
        text: Sampling { repetition_penalty: 1.0, ..Sampling::greedy() },
        image: Sampling::greedy(),
        guidance: None,
        seed: config.seed,
        use_cache: true,
    };
    let captions = generate(model, layout, &prompts, &greedy, device, &mut |_| {});
    let text_of = |ids: &[u32]| {
        let ids: Vec<u32> = ids.iter().copied().filter(|&t| layout.modality(t) == Some(Modality::Text)).collect();
        decode_text(&ids).trim().to_string()
    };
    let scored: Vec<(String, String)> =
        pairs.iter().zip(&captions).map(|(p, c)| (text_of(&p.caption), text_of(c))).collect();
    let exact = scored.iter().filter(|(r, h)| r == h).count() as f64 / scored.len().max(1) as f64;

    // Choice: the true caption against distractors, by mean log-probability per token.
    // Distractors: a seeded shuffle of the other pairs with a different caption. Images with none
    // are skipped, and chance is the mean of 1 / (distractors + 1) over the images ranked.
    let (mut correct, mut ranked, mut chance) = (0usize, 0usize, 0.0f64);
    for (i, (p, prompt)) in pairs.iter().zip(&prompts).enumerate() {
        let score = |caption: &[u32]| {
            let mut c = caption.to_vec();
            c.push(special.eos);
            mean_log_prob(model, prompt, &c, device)
        };
        let mut others: Vec<usize> = (0..pairs.len()).filter(|&j| pairs[j].caption != p.caption).collect();
        let mut rng = StdRng::seed_from_u64(config.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        others.shuffle(&mut rng);
        // One distractor per distinct caption.
        let mut wrong: Vec<usize> = Vec::new();
        for j in others {
            if wrong.len() == config.distractors {
                break;
            }
            if !wrong.iter().any(|&w| pairs[w].caption == pairs[j].caption) {
                wrong.push(j);
            }
        }
        if wrong.is_empty() {
            continue;
        }
        let truth = score(&p.caption);
        ranked += 1;
        chance += 1.0 / (wrong.len() + 1) as f64;
        if wrong.iter().all(|&j| score(&pairs[j].caption) < truth) {
            correct += 1;
        }
    }

    // Image likelihood after the caption, and without it.
    let (mut with, mut without) = (0.0, 0.0);
    for p in pairs {
        let block = image_block(&p.codes, layout);
        let codes = &block[1..block.len() - 1];
        let mut prefix = vec![special.bos];
        prefix.extend_from_slice(&p.caption);
        prefix.push(special.begin_image);
        with -= mean_log_prob(model, &prefix, codes, device);
        without -= mean_log_prob(model, &[special.bos, special.begin_image], codes, device);
    }
    // No pairs: NaN (written as null), never a perfect-looking 0.
    let n = pairs.len() as f64;

    // Samples: one image per caption, with the official guidance.
    let take = config.samples.min(pairs.len());
    let sample_prompts: Vec<Vec<u32>> = pairs[..take]
        .iter()
        .map(|p| {
            let mut t = vec![special.bos];
            t.extend_from_slice(&p.caption);
            t
        })
        .collect();
    let sampling = GenerateConfig {
        mode: Mode::Image,
        max_new_tokens: config.codes_per_image + 2,
        text: Sampling::text(),
        image: Sampling::image(),
        guidance: Some(Guidance { image_scale: 1.2, text_scale: 3.0 }),
        ..greedy
    };
    let samples: Vec<Vec<u32>> = generate(model, layout, &sample_prompts, &sampling, device, &mut |_| {})
        .into_iter()
        .map(|t| t.iter().filter_map(|&x| layout.image_code(x)).collect())
        .collect();

    let report = EvalReport {
        text,
        image,
        pairs: pairs.len(),
        caption_bleu4: bleu4(&scored),
        caption_exact: exact,
        caption_samples: scored
            .iter()
            .take(12)
            .map(|(r, h)| CaptionSample { reference: r.clone(), generated: h.clone() })
            .collect(),
        choice_ranked: ranked,
        choice_accuracy: correct as f64 / ranked as f64,
        choice_chance: chance / ranked as f64,
        image_nll_given_caption: with / n,
        image_nll_unconditioned: without / n,
        image_nll_uniform: (layout.codebook_size() as f64).ln(),
    };
    (report, samples)
}

#[cfg(test)]
mod tests {
    use chameleon_model::ChameleonConfig;

    use super::*;

    #[test]
    fn bleu_is_one_for_identity_zero_for_disjoint_and_penalises_brevity() {
        let same = vec![("the red heart".to_string(), "the red heart".to_string())];
        assert!((bleu4(&same) - 1.0).abs() < 1e-12);
        assert_eq!(bleu4(&[("red heart".into(), "blue moon".into())]), 0.0);
        let short = bleu4(&[("a big red heart".into(), "red heart".into())]);
        let full = bleu4(&[("a big red heart".into(), "a big red heart".into())]);
        assert!(short > 0.0 && short < 0.5 * full, "{short}");
    }

    #[test]
    fn windows_never_cut_an_image_block() {
        let layout = VocabLayout::contiguous(8, 12);
        let s = layout.special();
        let (t, i) = (layout.ids_of(Modality::Text)[0], layout.image_tokens()[0]);
        let mut seq = vec![s.bos, t, t, t, s.begin_image, i, i, i, s.end_image, t, t, s.eos];
        let w = windows(&seq, 6, &layout);
        assert_eq!(w, [(0, 4), (3, 9), (8, 12)]);
        for &(a, b) in &w {
            // Every code a window predicts sees its begin-image in the same window.
            for k in a + 1..b {
                if layout.modality(seq[k]) == Some(Modality::Image) {
                    assert!(seq[a..k].contains(&s.begin_image), "window {a}..{b} cuts the block");
                }
            }
        }
        // Each token but the first is a target once.
        assert_eq!(w.iter().map(|(a, b)| b - a - 1).sum::<usize>(), seq.len() - 1);
        seq.truncate(4);
        assert_eq!(windows(&seq, 6, &layout), [(0, 4)]);
    }

    #[test]
    fn log_probs_and_perplexity_agree_with_the_model() {
        let device = Device::flex();
        let layout = VocabLayout::contiguous(8, 12);
        let model = ChameleonConfig::new(layout.vocab_size(), 16, 1, 2).with_max_seq_len(64).init(&device);
        let s = layout.special();
        let (t, i) = (layout.ids_of(Modality::Text), layout.image_tokens().to_vec());
        let doc = vec![t[0], t[1], s.begin_image, i[0], i[1], s.end_image, t[2]];
        let (text, image) = perplexity(&model, &layout, std::slice::from_ref(&doc), &device);
        // Targets: 3 text pieces; 2 codes (begin/end image, eos are not counted).
        assert_eq!((text.tokens, image.tokens), (3, 2));
        let mut framed = vec![s.bos];
        framed.extend(&doc);
        framed.push(s.eos);
        let lp = token_log_probs(&model, &framed, &device);
        let want_text = -(lp[0] + lp[1] + lp[6]) as f64 / 3.0;
        assert!((text.nll - want_text).abs() < 1e-5, "{} vs {want_text}", text.nll);
        assert!((image.perplexity - (-(lp[3] + lp[4]) as f64 / 2.0).exp()).abs() < 1e-4);
        // A random model is near uniform over the vocabulary.
        assert!((text.nll - (layout.vocab_size() as f64).ln()).abs() < 1.0);
        let pair = pair_of(&doc, &layout).unwrap();
        assert_eq!((pair.caption, pair.codes), (vec![t[0], t[1], t[2]], vec![0, 1]));
    }
}
