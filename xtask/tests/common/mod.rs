//! Helpers of the CLI tests: run the built binary, read its stderr, find fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use chameleon_data::fixtures;

/// A fixture directory of chameleon-model (`hf/<case>` or `vq/<case>`).
pub fn fixture(kind: &str, case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../chameleon-model/tests/fixtures").join(kind).join(case)
}

/// Runs `cargo xtask` (the built binary) with `args`.
pub fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().unwrap()
}

/// The command's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path as a command-line argument.
pub fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Caption pairs, a tiny VQ tokenizer and an experiment file that uses them.
pub fn caption_experiment(root: &Path, steps: usize) -> PathBuf {
    let pairs = fixtures::write_caption_pairs(root, 24, |i| format!("picture {i} of a queen")).unwrap();
    fixtures::tiny_vq(&root.join("vq"), &Device::flex()).unwrap();
    let tokenizer = fixtures::tokenizer_model();
    let toml = format!(
        r#"
[model]
d_model = 32
n_layers = 2
n_heads = 2
residual_dropout = 0.1
[data]
seq_len = 40
[data.tokenizer]
model = "{tok}"
[data.images]
vq_checkpoint = "{vq}"
[[data.sources]]
name = "pairs"
format = "caption"
path = "{pairs}"
[[data.stages]]
start = 0.0
weights = {{ pairs = 1.0 }}
[schedule]
warmup_steps = 3
[train]
steps = {steps}
micro_batch = 2
batch_tokens = 160
checkpoint_every = 5
keep_checkpoints = 3
seed = 4
"#,
        tok = tokenizer.display(),
        vq = root.join("vq").display(),
        pairs = pairs.display(),
    );
    let path = root.join("exp.toml");
    std::fs::write(&path, toml).unwrap();
    path
}
