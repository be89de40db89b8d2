//! A language-model experiment file: `[model]`, `[data]`, `[optim]`, `[schedule]`, `[train]`.
//! Every unknown key and bad value is refused before any work starts, with the file and key named.

use std::path::Path;

use chameleon_data::DataConfig;
use chameleon_model::{ChameleonConfig, Precision};
use serde::{Deserialize, Serialize};

use crate::config_file::{ConfigError, only_sections, read_table, section};
use crate::optim::{OptimConfig, Schedule};

/// The `[train]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Rows (of `seq_len + 1` tokens) per forward pass.
    pub micro_batch: usize,
    /// Tokens per optimizer step; a multiple of `micro_batch · seq_len` (gradient accumulation
    /// makes up the rest).
    pub batch_tokens: usize,
    /// z-loss coefficient: `z_loss · mean(log² Z)` over the positions that carry loss.
    pub z_loss: f64,
    /// Steps between held-out evaluations (0: never); the last step of the schedule evaluates too.
    pub eval_every: usize,
    /// Held-out batches, drawn once at the start of a run: every evaluation scores the same ones.
    pub eval_batches: usize,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Seed of initialisation, dropout and sampling.
    pub seed: u64,
    /// Steps between stability probes (max attention logit, block-output RMS: a few reductions
    /// and reads back to the host per micro-batch); 1 probes every step. The first and last steps
    /// of the schedule are always probed.
    pub probe_every: usize,
    /// Compute precision: `f32`, or `bf16`: matmuls, attention and the FFN in bf16 on f32 master
    /// weights and f32 AdamW state; as under PyTorch's autocast, the embedding table, the
    /// residual stream, the norms, cross-entropy and `log Z` in f32.
    pub precision: Precision,
    /// Packed documents attend only to themselves (a block-diagonal causal mask from the `bos`
    /// that opens each): SFT packs several prompt/answer pairs per row, and a pair's answer must
    /// not read the pairs before it. Pre-training leaves it off, as Chameleon does.
    pub within_documents: bool,
    /// Whether image-code targets carry loss. `false` masks it: images are still read as
    /// context, never generated. The paper's control (its Figure 6b): without image generation,
    /// Chameleon-7B trained stably.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub image_loss: bool,
    /// Start from these weights instead of a fresh initialisation: a checkpoint directory of a
    /// run of ours (`RUN/checkpoint-NNNNNNN`, its `model.bpk`). The optimizer starts fresh.
    /// `cargo xtask sft --from RUN` sets it to the run's newest checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            micro_batch: 8,
            batch_tokens: 2048,
            z_loss: 1e-5,
            eval_every: 0,
            eval_batches: 4,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            seed: 0,
            probe_every: 1,
            precision: Precision::F32,
            within_documents: false,
            image_loss: true,
            init_from: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

/// The `[sft]` section of a fine-tuning experiment (`cargo xtask sft`): what it starts from.
/// The `[model]` is the pre-trained run's, with this dropout; the data must use the run's text
/// and image tokenizers, which `cargo xtask sft` sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    /// The pre-trained run (its newest checkpoint), or one of its checkpoint directories.
    pub from: std::path::PathBuf,
    /// Attention and residual dropout during fine-tuning (the paper: 0.05).
    pub dropout: f64,
    /// Held-out conversations per category scored before and after fine-tuning.
    pub eval_prompts: usize,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self { from: "runs/stability/qk-swin-z1e-5-drop0-imgloss-lr1e0-seed0".into(), dropout: 0.05, eval_prompts: 100 }
    }
}

impl SftConfig {
    /// Whether an experiment file has an `[sft]` section (a fine-tuning experiment).
    pub fn present(path: &Path) -> Result<bool, ConfigError> {
        Ok(read_table(path)?.contains_key("sft"))
    }

    /// Reads the `[sft]` section of an experiment file (defaults when it has none).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let table = read_table(path)?;
        let sft: SftConfig = section(&table, "sft", &SftConfig::default(), &[], path)?;
        if !(0.0..1.0).contains(&sft.dropout) {
            return Err(ConfigError::new(path, format!("`sft.dropout` = {} must lie in [0, 1)", sft.dropout)));
        }
        Ok(sft)
    }
}

/// A whole experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// The transformer; `vocab_size` comes from the prepared data.
    pub model: ChameleonConfig,
    /// Sources, tokenizer, stages.
    pub data: DataConfig,
    /// AdamW and the clip.
    pub optim: OptimConfig,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Steps, batch, loss, checkpoints.
    pub train: TrainConfig,
}

impl Experiment {
    /// Reads and validates an experiment file. An `[ablation]` section is allowed (and read by
    /// [`crate::ablation::Grid::load`]; this is the grid's base experiment), and so is `[sft]`
    /// ([`SftConfig::load`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let table = read_table(path)?;
        only_sections(&table, &["model", "data", "optim", "schedule", "train", "ablation", "sft"], path)?;
        let model_default = ChameleonConfig::new(0, 256, 4, 4);
        let model: ChameleonConfig = section(&table, "model", &model_default, &["n_kv_heads", "ffn_dim"], path)?;
        let data = DataConfig::load(path).map_err(|e| ConfigError::new(path, e.message))?;
        let optim: OptimConfig = section(&table, "optim", &OptimConfig::default(), &[], path)?;
        let schedule: Schedule = section(&table, "schedule", &Schedule::default(), &[], path)?;
        let train: TrainConfig = section(&table, "train", &TrainConfig::default(), &["init_from", "image_loss"], path)?;
        let exp = Self { model, data, optim, schedule, train };
        exp.validate().map_err(|m| ConfigError::new(path, m))?;
        Ok(exp)
    }

    /// Micro-batches per optimizer step.
    pub fn accumulation(&self) -> usize {
        self.train.batch_tokens / (self.train.micro_batch * self.data.seq_len)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let mut probe = self.model.clone();
        probe.vocab_size = probe.vocab_size.max(1);
        probe.validate().map_err(|e| format!("[model]: {e}"))?;
        let t = &self.train;
        for (key, v) in [("steps", t.steps), ("micro_batch", t.micro_batch), ("batch_tokens", t.batch_tokens)] {
            if v == 0 {
                return Err(format!("`train.{key}` must be at least 1"));
            }
        }
        let micro_tokens = t.micro_batch * self.data.seq_len;
        if !t.batch_tokens.is_multiple_of(micro_tokens) {
            return Err(format!(
                "`train.batch_tokens` = {} must be a multiple of micro_batch × seq_len = {micro_tokens}",
                t.batch_tokens
            ));
        }
        if t.probe_every == 0 {
            return Err("`train.probe_every` must be at least 1".into());
        }
        if t.eval_every > 0 && t.eval_batches == 0 {
            return Err("`train.eval_batches` must be at least 1 when `train.eval_every` is set".into());
        }
        if !(t.z_loss.is_finite() && t.z_loss >= 0.0) {
            return Err(format!("`train.z_loss` = {} must be non-negative", t.z_loss));
        }
        let o = &self.optim;
        if !(o.learning_rate.is_finite() && o.learning_rate > 0.0) {
            return Err(format!("`optim.learning_rate` = {} must be positive", o.learning_rate));
        }
        if !(0.0..1.0).contains(&o.beta_1) || !(0.0..1.0).contains(&o.beta_2) {
            return Err("`optim.beta_1` and `optim.beta_2` must lie in [0, 1)".into());
        }
        if self.model.max_seq_len < self.data.seq_len {
            return Err(format!(
                "`model.max_seq_len` = {} is shorter than `data.seq_len` = {}",
                self.model.max_seq_len, self.data.seq_len
            ));
        }
        Ok(())
    }

    /// The resolved experiment as TOML (written beside a run's metrics).
    pub fn to_toml(&self) -> Result<String, String> {
        let mut table = toml::Table::new();
        let mut put = |name: &str, v: Result<toml::Value, toml::ser::Error>| -> Result<(), String> {
            table.insert(name.into(), v.map_err(|e| e.to_string())?);
            Ok(())
        };
        put("model", toml::Value::try_from(&self.model))?;
        put("data", toml::Value::try_from(&self.data))?;
        put("optim", toml::Value::try_from(&self.optim))?;
        put("schedule", toml::Value::try_from(&self.schedule))?;
        put("train", toml::Value::try_from(&self.train))?;
        toml::to_string_pretty(&table).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn smoke_with(extra_model_keys: &str) -> (tempfile::TempDir, PathBuf) {
        let smoke = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../experiments/smoke.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exp.toml");
        std::fs::write(&path, smoke.replace("[model]\n", &format!("[model]\n{extra_model_keys}\n"))).unwrap();
        (dir, path)
    }

    #[test]
    fn optional_model_fields_can_be_set_and_unknown_ones_are_refused() {
        let (dir, path) = smoke_with("n_kv_heads = 1\nffn_dim = 96");
        let exp = Experiment::load(&path).unwrap();
        assert_eq!((exp.model.n_kv_heads, exp.model.ffn_dim), (Some(1), Some(96)));
        // The resolved config written beside a run reads back the same.
        let again = dir.path().join("resolved.toml");
        std::fs::write(&again, exp.to_toml().unwrap()).unwrap();
        assert_eq!(Experiment::load(&again).unwrap(), exp);

        let (_dir, path) = smoke_with("n_kv_head = 1");
        let e = Experiment::load(&path).unwrap_err().to_string();
        assert!(e.contains("model.n_kv_head") && e.contains("n_kv_heads"), "{e}");
    }
}
