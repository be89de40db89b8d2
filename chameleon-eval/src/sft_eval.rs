//! Evaluation of supervised fine-tuning on held-out SFT prompts, per category (one source of the
//! SFT mixture each): the answer's loss, a choice among answers (the true one against other
//! prompts' answers) for text answers, and the likelihood of the true image for image answers,
//! given its own prompt and given another prompt.
//!
//! Every held-out conversation is split at its last `end-of-turn`: the prompt is
//! `<s> … end-of-turn` (earlier turns included), the final answer what follows, closed by `</s>`.

use std::collections::BTreeMap;

use burn::tensor::Device;
use chameleon_model::Chameleon;
use chameleon_model::{Modality, VocabLayout};
use serde::{Deserialize, Serialize};

use crate::evaluate::token_log_probs;

/// Answers each true answer is ranked against (it makes a 1-in-10 choice).
pub const DISTRACTORS: usize = 9;

/// One category's numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryEval {
    /// Held-out conversations scored.
    pub prompts: usize,
    /// Answer tokens scored (the closing `</s>` included).
    pub answer_tokens: u64,
    /// Mean nats per answer token.
    pub answer_nats_per_token: f64,
    /// For text answers: how often the true answer has the highest mean log-probability per token
    /// among itself and [`DISTRACTORS`] other prompts' (different) answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_accuracy: Option<f64>,
    /// For image answers: nats per code of the answer's image after its own prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_nats_per_code: Option<f64>,
    /// The same image after another held-out prompt of the category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_nats_per_code_other_prompt: Option<f64>,
}

/// A held-out conversation as tokens: `(prompt with its bos and last end-of-turn, final answer
/// with eos)`.
fn split_conversation(tokens: &[u32], layout: &VocabLayout) -> Option<(Vec<u32>, Vec<u32>)> {
    let s = layout.special();
    let cut = tokens.iter().rposition(|&t| t == s.end_of_turn)?;
    let mut prompt = vec![s.bos];
    prompt.extend_from_slice(&tokens[..=cut]);
    let mut answer = tokens[cut + 1..].to_vec();
    answer.push(s.eos);
    (answer.len() > 1).then_some((prompt, answer))
}

/// Log-probabilities of `answer`'s tokens after `prompt`.
fn answer_log_probs(model: &Chameleon, prompt: &[u32], answer: &[u32], device: &Device) -> Vec<f64> {
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(answer);
    let lp = token_log_probs(model, &seq, device);
    lp[prompt.len() - 1..].iter().map(|&x| x as f64).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Scores one category's held-out conversations (`docs`: their tokens, in a fixed order).
pub fn evaluate_category(model: &Chameleon, docs: &[Vec<u32>], layout: &VocabLayout, device: &Device) -> CategoryEval {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = docs.iter().filter_map(|d| split_conversation(d, layout)).collect();
    let is_image = |t: &u32| layout.modality(*t) == Some(Modality::Image);
    let mut eval = CategoryEval { prompts: pairs.len(), ..CategoryEval::default() };
    let (mut nats, mut choices, mut image, mut image_other) = (0.0, Vec::new(), Vec::new(), Vec::new());
    for (i, (prompt, answer)) in pairs.iter().enumerate() {
        let lp = answer_log_probs(model, prompt, answer, device);
        nats -= lp.iter().sum::<f64>();
        eval.answer_tokens += lp.len() as u64;
        if answer.iter().any(is_image) {
            let codes: Vec<f64> = lp.iter().zip(answer).filter(|(_, t)| is_image(t)).map(|(l, _)| -l).collect();
            image.push(mean(&codes));
            let (other, _) = &pairs[(i + 1) % pairs.len()];
            let lp = answer_log_probs(model, other, answer, device);
            let codes: Vec<f64> = lp.iter().zip(answer).filter(|(_, t)| is_image(t)).map(|(l, _)| -l).collect();
            image_other.push(mean(&codes));
        } else {
            // Other prompts' answers, different from this one, in a fixed order.
            let mut distractors: Vec<&Vec<u32>> = Vec::new();
            for k in 1..pairs.len() {
                let candidate = &pairs[(i + k) % pairs.len()].1;
                if candidate != answer && !distractors.contains(&candidate) {
                    distractors.push(candidate);
                }
                if distractors.len() == DISTRACTORS {
                    break;
                }
            }
            if distractors.len() == DISTRACTORS {
                let truth = mean(&lp);
                let beaten = distractors.iter().any(|d| mean(&answer_log_probs(model, prompt, d, device)) >= truth);
                choices.push(if beaten { 0.0 } else { 1.0 });
            }
        }
    }
    eval.answer_nats_per_token = nats / eval.answer_tokens.max(1) as f64;
    eval.choice_accuracy = (!choices.is_empty()).then(|| mean(&choices));
    eval.image_nats_per_code = (!image.is_empty()).then(|| mean(&image));
    eval.image_nats_per_code_other_prompt = (!image_other.is_empty()).then(|| mean(&image_other));
    eval
}

/// Before and after fine-tuning, per category.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SftComparison {
    /// The model fine-tuning started from.
    pub before: BTreeMap<String, CategoryEval>,
    /// The fine-tuned model.
    pub after: BTreeMap<String, CategoryEval>,
    /// The fine-tuned model on conversations it was trained on: what it learned, against what
    /// carries over to held-out prompts.
    pub after_trained: BTreeMap<String, CategoryEval>,
}

impl SftComparison {
    /// A Markdown table: one row per category and measure, before and after.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| category | held-out prompts | answer nats/token (before → after) | answer choice, 1 of 10 | \
             image nats/code: own prompt | image nats/code: other prompt | trained prompts, after: nats/token, \
             choice |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        let pair = |a: Option<f64>, b: Option<f64>, digits: usize| match (a, b) {
            (Some(a), Some(b)) => format!("{a:.digits$} → {b:.digits$}"),
            _ => "–".into(),
        };
        for (name, after) in &self.after {
            let before = self.before.get(name).cloned().unwrap_or_default();
            let trained = self.after_trained.get(name).map_or("–".into(), |t| {
                let choice = t.choice_accuracy.map_or(String::new(), |c| format!(", {c:.3}"));
                format!("{:.3}{choice}", t.answer_nats_per_token)
            });
            out.push_str(&format!(
                "| {name} | {} | {} | {} | {} | {} | {trained} |\n",
                after.prompts,
                pair(Some(before.answer_nats_per_token), Some(after.answer_nats_per_token), 3),
                pair(before.choice_accuracy, after.choice_accuracy, 3),
                pair(before.image_nats_per_code, after.image_nats_per_code, 3),
                pair(before.image_nats_per_code_other_prompt, after.image_nats_per_code_other_prompt, 3),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_split_at_the_first_end_of_turn() {
        let layout = VocabLayout::contiguous(8, 100);
        let s = layout.special();
        let doc = vec![20, 21, s.end_of_turn, 30, 31];
        let (prompt, answer) = split_conversation(&doc, &layout).unwrap();
        assert_eq!(prompt, vec![s.bos, 20, 21, s.end_of_turn]);
        assert_eq!(answer, vec![30, 31, s.eos]);
        assert_eq!(split_conversation(&[20, 21], &layout), None);
        assert_eq!(split_conversation(&[20, s.end_of_turn], &layout), None);
        // Several turns: the earlier ones are prompt, the final answer is scored.
        let turns = vec![20, s.end_of_turn, 30, s.end_of_turn, 21, s.end_of_turn, 31];
        let (prompt, answer) = split_conversation(&turns, &layout).unwrap();
        assert_eq!(prompt, [&[s.bos][..], &turns[..6]].concat());
        assert_eq!(answer, vec![31, s.eos]);
    }
}
