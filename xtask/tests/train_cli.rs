//! `cargo xtask train` and `ablate`: a run killed with SIGKILL after a checkpoint and resumed with
//! `--resume RUN` writes the same losses, to the last bit, as a run that was never interrupted.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chameleon_data::fixtures;
use chameleon_train::fixtures::written;
use common::{arg, caption_experiment as experiment, stderr, xtask};

fn losses(run: &Path) -> Vec<(u64, String, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string(), v["grad_norm"].to_string())
        })
        .collect()
}

/// Waits (up to 2 minutes) until `file` exists: a checkpoint a running process writes.
fn wait_for(file: &Path) {
    let start = Instant::now();
    while !file.exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "{} did not appear", file.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_run_killed_after_a_checkpoint_resumes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let steps = 300;
    let exp = experiment(root, steps);
    let cache = root.join("cache");

    let whole = root.join("whole");
    let out = xtask(&["train", "--config", arg(&exp), "--run-dir", arg(&whole), "--cache", arg(&cache)]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Start again, and SIGKILL it as soon as its second checkpoint is on disk.
    let killed = root.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["train", "--config", arg(&exp), "--run-dir", arg(&killed), "--cache", arg(&cache)])
        .spawn()
        .unwrap();
    wait_for(&killed.join("checkpoint-0000010/state.json"));
    child.kill().unwrap();
    child.wait().unwrap();
    let status = std::fs::read_to_string(killed.join("status.json")).unwrap();
    assert!(status.contains("running"), "the run finished before it was killed: {status}");
    let partial = losses(&killed);
    assert!(partial.len() < steps, "killed after {} steps", partial.len());

    let out = xtask(&["train", "--resume", arg(&killed), "--cache", arg(&cache)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (a, b) = (losses(&whole), losses(&killed));
    assert_eq!(a.len(), steps);
    assert_eq!(a, b, "the resumed run's losses differ");
}

#[test]
fn a_bad_experiment_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), 10);
    let text = std::fs::read_to_string(&exp).unwrap();
    for (bad, key) in [
        (text.replace("n_heads = 2", "n_heads = 3"), "n_heads"),
        (text.replace("seed = 4", "seed = 4\nsede = 5"), "sede"),
        (text.replace("weights = { pairs = 1.0 }", "weights = { pairs = 0.0 }"), "weight 0"),
        (text.replace("batch_tokens = 160", "batch_tokens = 100"), "batch_tokens"),
        (text.replace("seed = 4", "seed = 4\neval_every = 5\neval_batches = 0"), "eval_batches"),
    ] {
        std::fs::write(&exp, bad).unwrap();
        let out = xtask(&["train", "--config", arg(&exp), "--run-dir", arg(&dir.path().join("r"))]);
        assert!(!out.status.success());
        let e = stderr(&out);
        assert!(e.contains("exp.toml") && e.contains(key), "{key}: {e}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(!dir.path().join("r").exists(), "work started for a bad config");
    }
}

#[test]
fn the_grid_outlives_a_diverging_run_and_resumes_a_killed_one_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let steps = 100;
    let exp = experiment(root, steps);
    // One run that blows up at once (a learning rate of a million), one that trains; both
    // evaluate on the held-out set every 50 steps.
    let text = std::fs::read_to_string(&exp).unwrap().replace("seed = 4", "seed = 4\neval_every = 50")
        + "\n[ablation]\nlearning_rate = [1e6, 3e-3]\n";
    std::fs::write(&exp, text).unwrap();
    let cache = root.join("cache");

    let whole = root.join("whole");
    let ablate = |dir: &Path, jobs: &str| {
        xtask(&["ablate", arg(&exp), "--runs-dir", arg(dir), "--cache", arg(&cache), "--jobs", jobs])
    };
    let out = ablate(&whole, "1");
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    // One variant at two learning rates, one seed: cells, then every run with its status.
    let row = |start: &str| table.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start}: {table}"));
    assert!(row("lr1e6 ").contains("diverged@") && row("lr3e-3 ").contains(" done "), "{table}");
    assert!(table.contains("The findings"), "{table}");
    // The trained run's held-out CE is its evaluation at its last step, as metrics.jsonl has it;
    // the run that diverged at once never evaluated.
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(whole.join("lr3e-3/metrics.jsonl")).unwrap().lines().last().unwrap(),
    )
    .unwrap();
    let held_out = format!("{:.3}", last["eval_ce"].as_f64().unwrap());
    // The runs table's columns: run, status, steps, CE at the end, held-out CE, ...
    let held_out_of = |name: &str| row(&format!("{name} ")).split_whitespace().nth(4).unwrap().to_string();
    assert_eq!(held_out_of("lr3e-3"), held_out, "{table}");
    assert_eq!(held_out_of("lr1e6"), "-", "{table}");
    assert!(whole.join("grid.json").is_file());
    // It ends with the report: markdown beside its plots, the curves of the cross-entropy.
    let report = std::fs::read_to_string(whole.join("report/report.md")).unwrap();
    assert!(report.contains("](ce.png)") && whole.join("report/ce.png").is_file(), "{report}");
    assert_eq!(losses(&whole.join("lr3e-3")).len(), steps);

    // Two runs side by side, each in a worker process of its own, train to the same bits.
    let parallel = root.join("parallel");
    let out = ablate(&parallel, "2");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 at a time"));
    for run in ["lr1e6", "lr3e-3"] {
        assert_eq!(losses(&whole.join(run)), losses(&parallel.join(run)), "{run} differs in a worker process");
    }
    // A worker told `stop` on its standard input (the monitor's `q`) checkpoints and stops; the
    // grid resumes it, to the same bits.
    let stopped = root.join("stopped");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["grid-worker", arg(&exp), "--runs-dir", arg(&stopped), "--run", "lr3e-3", "--cache", arg(&cache)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&stopped.join("lr3e-3/checkpoint-0000010/state.json"));
    std::io::Write::write_all(worker.stdin.as_mut().unwrap(), b"stop\n").unwrap();
    assert!(worker.wait().unwrap().success());
    let status = std::fs::read_to_string(stopped.join("lr3e-3/status.json")).unwrap();
    assert!(status.contains("stopped"), "{status}");
    assert!(losses(&stopped.join("lr3e-3")).len() < steps, "the worker ran to the end");
    let out = ablate(&stopped, "2");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(losses(&whole.join("lr3e-3")), losses(&stopped.join("lr3e-3")));

    // Run again: nothing to do.
    let out = ablate(&whole, "1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("already done"), "{}", stderr(&out));

    // SIGKILL a second grid (training in its own process) in its second run, after a
    // checkpoint; running it again resumes that run and writes the same losses to the last bit.
    let killed = root.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["ablate", arg(&exp), "--runs-dir", arg(&killed), "--cache", arg(&cache), "--jobs", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&killed.join("lr3e-3/checkpoint-0000010/state.json"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(losses(&killed.join("lr3e-3")).len() < steps, "the run finished before it was killed");
    let out = ablate(&killed, "1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));
    assert_eq!(losses(&whole.join("lr3e-3")), losses(&killed.join("lr3e-3")));
    let evals = |run: &Path| written(&run.join("lr3e-3"), "eval_ce");
    assert_eq!(evals(&whole), evals(&killed));
    assert_eq!(evals(&whole).len(), 2, "steps 50 and 100");

    // The trained run generates: text only, one image, or both, with an image in the prompt.
    let png = root.join("prompt.png");
    fixtures::write_png(&png, 9).unwrap();
    let run = arg(&whole.join("lr3e-3")).to_string();
    let cache_arg = arg(&cache).to_string();
    let generate = |mode: &str, out: &Path, extra: &[&str]| {
        let mut args = vec!["generate", "--run", &run, "--mode", mode, "--out", arg(out), "--cache", &cache_arg];
        args.extend_from_slice(extra);
        xtask(&args)
    };
    let out = generate("image", &root.join("g-image"), &["--prompt", "picture 3 of a", "--partial-every", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let img = image::open(root.join("g-image/image-0.png")).unwrap();
    assert_eq!(img.width(), img.height());
    assert!(root.join("g-image/image-0.partial-0004.png").is_file());
    let prompt = ["--prompt", "picture <image> of a", "--image", arg(&png), "--max-new-tokens", "24", "--greedy"];
    let out = generate("text", &root.join("g-text"), &prompt);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.join("g-text/image-0.png").exists());
    assert!(!std::fs::read_to_string(root.join("g-text/response.txt")).unwrap().contains("<image"));
    let out = generate("interleaved", &root.join("g-mixed"), &prompt);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = generate("text", &root.join("g-bad"), &["--prompt", "two <image> markers <image>", "--image", arg(&png)]);
    assert!(!out.status.success() && stderr(&out).contains("marker"), "{}", stderr(&out));

    // The run exports to HF's layout (transformers' check: scripts/hf_reference.py
    // check-run-export); generating from the export gives the run's transcript, token for token.
    let exported = root.join("exported");
    let out = xtask(&["export", "--checkpoint", &run, "--output", arg(&exported), "--cache", &cache_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in ["config.json", "model.safetensors", "tokenizer.model", "vocab.json"] {
        assert!(exported.join(f).is_file(), "{f} missing from the export");
    }
    let g_export = root.join("g-export");
    let mut args = vec!["generate", "--checkpoint", arg(&exported), "--mode", "interleaved", "--out", arg(&g_export)];
    args.extend_from_slice(&prompt);
    let out = xtask(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let transcript = |dir: &str| std::fs::read_to_string(root.join(dir).join("response.txt")).unwrap();
    assert_eq!(transcript("g-export"), transcript("g-mixed"));

    // And evaluates: eval.json with every measure, and the sample sheet.
    let out = xtask(&[
        "eval",
        "--run",
        &run,
        "--out",
        arg(&root.join("eval")),
        "--cache",
        &cache_arg,
        "--max-docs",
        "4",
        "--max-pairs",
        "5",
        "--distractors",
        "3",
        "--samples",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("eval/eval.json")).unwrap()).unwrap();
    // The fixture holds out 1 in 10 of its 24 pairs; --max-pairs caps at 5.
    let n = report["pairs"].as_u64().unwrap();
    assert!((1..=5).contains(&n), "{n} pairs");
    // Every caption differs, so each image is ranked against min(3, n − 1) distractors.
    assert!(n >= 2, "the fixture holds out at least two pairs");
    assert_eq!(report["choice_ranked"], n);
    assert_eq!(report["choice_chance"].as_f64().unwrap(), 1.0 / (3.min(n - 1) + 1) as f64);
    for key in ["nll", "perplexity"] {
        assert!(report["text"][key].as_f64().unwrap() > 0.0 && report["image"][key].as_f64().unwrap() > 0.0);
    }
    assert!(report["image_nll_given_caption"].as_f64().unwrap().is_finite());
    let sheet = image::open(root.join("eval/eval-samples.png")).unwrap();
    assert!(sheet.height() > sheet.width() / 2, "two rows of true | generated");
    assert!(String::from_utf8_lossy(&out.stdout).contains("caption choice accuracy"));

    // Another process can follow the runs: without a terminal, `monitor` prints the table.
    let out = xtask(&["monitor", arg(&killed)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("lr3e-3") && shown.contains("done") && shown.contains("diverged@"), "{shown}");
    for command in ["monitor", "report"] {
        let out = xtask(&[command, arg(&root.join("nowhere"))]);
        assert!(!out.status.success() && stderr(&out).contains("nowhere"), "{}", stderr(&out));
    }

    // A grid that names a switch it does not have is refused before any work.
    let bad = std::fs::read_to_string(&exp).unwrap().replace("learning_rate = [", "learning_rates = [");
    std::fs::write(&exp, bad).unwrap();
    let out = xtask(&["ablate", arg(&exp), "--runs-dir", arg(&root.join("bad")), "--cache", arg(&cache)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exp.toml") && stderr(&out).contains("learning_rates"), "{}", stderr(&out));
    assert!(!root.join("bad").exists());
}
