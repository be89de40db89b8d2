//! A run stopped after a checkpoint and resumed writes, from there on, the same losses to the
//! last bit as an uninterrupted run (dropout, gradient accumulation and z-loss all on). Also: bf16
//! mixed precision, and data-parallel replicas against one device.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use chameleon_model::ChameleonConfig;
use chameleon_model::Precision;
use chameleon_train::data_parallel::GradSync;
use chameleon_train::experiment::Experiment;
use chameleon_train::fixtures::{tiny_experiment, written};
use chameleon_train::run_dir::State;
use chameleon_train::speed::{Peak, flops_per_token};
use chameleon_train::trainer::{METRICS_FILE, RunOptions, train};

fn losses(run: &Path) -> BTreeMap<u64, (String, String)> {
    std::fs::read_to_string(run.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), (v["loss"].to_string(), v["grad_norm"].to_string()))
        })
        .collect()
}

/// burn's RNG (dropout, initialisation) is one per process and tests run on threads of one
/// process: each test holds this while it trains, or the runs would draw from each other's stream.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A test's tiny experiment (gradient accumulation 2, z-loss on) and its data, prepared in a
/// temporary directory of its own, with the RNG lock held.
struct Fixture {
    dir: tempfile::TempDir,
    _rng: std::sync::MutexGuard<'static, ()>,
    device: Device,
    exp: Experiment,
    prepared: chameleon_data::Prepared,
}

fn setup(dropout: bool) -> Fixture {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let (mut exp, prepared) = tiny_experiment(dir.path(), &device).unwrap();
    assert_eq!(exp.accumulation(), 2);
    if !dropout {
        exp.model = exp.model.clone().with_residual_dropout(0.0).with_attention_dropout(0.0);
    }
    Fixture { dir, _rng, device, exp, prepared }
}

/// Trains the 8-step experiment into `run`: 4 steps on one device, then resumed with `then`.
fn train_in_two_parts(
    exp: &Experiment,
    prepared: &chameleon_data::Prepared,
    run: &Path,
    device: &Device,
    then: RunOptions,
) {
    let first = RunOptions { max_steps: Some(4), ..RunOptions::default() };
    assert_eq!(train(exp, prepared, run, device, &first).unwrap().step, 4);
    assert_eq!(train(exp, prepared, run, device, &RunOptions { resume: true, ..then }).unwrap().step, 8);
}

#[test]
fn resume_after_a_checkpoint_is_bit_exact() {
    let Fixture { dir, _rng, device, exp, prepared } = setup(true);
    let root = dir.path();

    let whole = root.join("whole");
    let status = train(&exp, &prepared, &whole, &device, &RunOptions::default()).unwrap();
    assert_eq!((status.state, status.step), (State::Done, 8));

    let split = root.join("split");
    train_in_two_parts(&exp, &prepared, &split, &device, RunOptions::default());

    let (a, b) = (losses(&whole), losses(&split));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "losses and gradient norms differ after resume");
    // The losses are real numbers that moved: not a constant that would match trivially.
    let first_loss: f64 = a[&1].0.parse().unwrap();
    let last_loss: f64 = a[&8].0.parse().unwrap();
    assert!(first_loss.is_finite() && first_loss > 1.0 && last_loss != first_loss);

    // A run with another seed differs (initialisation and dropout depend on it).
    let mut other = exp.clone();
    other.train.seed = 12;
    let third = root.join("other");
    train(&other, &prepared, &third, &device, &RunOptions { max_steps: Some(2), ..RunOptions::default() }).unwrap();
    assert_ne!(losses(&third)[&2], a[&2]);
}

#[test]
fn bf16_mixed_precision_with_accumulation_follows_f32_and_metrics_carry_mfu_and_sparse_probes() {
    let Fixture { dir, _rng, device, exp, prepared } = setup(true);
    let root = dir.path();
    let peak = Some(Peak { flops: 1e9, source: "test".into() });
    let f32_run = root.join("f32");
    train(
        &exp,
        &prepared,
        &f32_run,
        &device,
        &RunOptions { max_steps: Some(6), peak: peak.clone(), ..RunOptions::default() },
    )
    .unwrap();

    let mut mixed = exp.clone();
    mixed.train.precision = Precision::Bf16;
    mixed.train.probe_every = 4;
    let bf16_run = root.join("bf16");
    let status =
        train(&mixed, &prepared, &bf16_run, &device, &RunOptions { max_steps: Some(6), peak, ..RunOptions::default() })
            .unwrap();
    assert_eq!(status.step, 6);

    let rows = |run: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join(METRICS_FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (full, half) = (rows(&f32_run), rows(&bf16_run));
    for (a, b) in full.iter().zip(&half) {
        let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((la - lb).abs() < 0.05 * la, "step {}: f32 loss {la}, bf16 loss {lb}", a["step"]);
        let mfu = b["mfu"].as_f64().unwrap();
        let model = ChameleonConfig { vocab_size: prepared.manifest.vocab_size, ..exp.model.clone() };
        let expected = b["tokens_per_s"].as_f64().unwrap() * flops_per_token(&model, 40) / 1e9;
        assert!((mfu - expected).abs() <= 1e-9 * expected, "{mfu} vs {expected}");
    }
    // Probed: steps 0 and 4 (rows 1 and 5) and the schedule's last (row 8, not reached); the
    // others carry no probes. The schedule does not depend on --max-steps.
    let probed: Vec<u64> =
        half.iter().filter(|r| r.get("max_attn_logit").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(probed, vec![1, 5]);
    assert!(full.iter().all(|r| r.get("max_attn_logit").is_some()), "probe_every defaults to every step");
}

#[test]
fn resume_is_exact_with_sparse_probes_and_no_dropout() {
    let Fixture { dir, _rng, device, mut exp, prepared } = setup(false);
    let root = dir.path();
    exp.train.probe_every = 3;
    // Every 3 steps, and at the last step (8), which 3 does not divide.
    exp.train.eval_every = 3;
    let whole = root.join("whole");
    train(&exp, &prepared, &whole, &device, &RunOptions::default()).unwrap();
    let split = root.join("split");
    train_in_two_parts(&exp, &prepared, &split, &device, RunOptions::default());
    assert_eq!(losses(&whole), losses(&split), "a resumed run with sparse probes differs");
    assert_eq!(losses(&whole).len(), 8);
    // Every evaluation scores the same held-out batches, so a resumed run evaluates as the
    // uninterrupted one did, and the held-out loss falls as the model learns.
    let eval_ces = |run: &Path| written(run, "eval_ce").into_iter().collect::<BTreeMap<_, _>>();
    let evals = eval_ces(&whole);
    assert_eq!(evals.keys().copied().collect::<Vec<_>>(), vec![3, 6, 8]);
    assert_eq!(evals, eval_ces(&split), "a resumed run evaluates on other held-out data");
    let ce = |step| evals[&step].parse::<f64>().unwrap();
    assert!(ce(8) < ce(3), "held-out CE should fall over training: {evals:?}");
    // By modality too: the caption pairs hold text and image targets.
    let last = std::fs::read_to_string(whole.join(METRICS_FILE)).unwrap().lines().last().map(str::to_string).unwrap();
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    let (text, image) = (last["eval_ce_text"].as_f64().unwrap(), last["eval_ce_image"].as_f64().unwrap());
    assert!(text.is_finite() && image.is_finite() && text > 0.0 && image > 0.0, "text {text}, image {image}");
}

/// Losses and gradient norms of two runs agree within `rel` at every step.
fn assert_close(a: &BTreeMap<u64, (String, String)>, b: &BTreeMap<u64, (String, String)>, rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: a different number of steps");
    for ((step, (la, ga)), (lb, gb)) in a.iter().zip(b.values()) {
        let close = |x: &String, y: &String| {
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            (x - y).abs() <= rel * x.abs()
        };
        assert!(close(la, lb) && close(ga, gb), "{what}, step {step}: loss {la} vs {lb}, grad norm {ga} vs {gb}");
    }
}

/// Two replicas on the CPU (threads; gradients summed by the main thread, as where NCCL is not
/// available) against one device. With two micro-batches a step, the replicas' sum adds the same
/// two gradients as one device's accumulation, so the runs match to the last bit, and the
/// losses that the worker measures on its own replica show that it took the same AdamW steps as
/// the main one. With four, the sum associates differently, (a+c)+(b+d) against ((a+b)+c)+d, so
/// the runs agree to rounding. A replica that stopped stepping would be off by 1e-2.
#[test]
fn data_parallel_replicas_train_as_one_device_does() {
    let Fixture { dir, _rng, device, exp, prepared } = setup(false);
    let root = dir.path();
    let two = RunOptions { replicas: vec![Device::flex()], grad_sync: GradSync::Host, ..RunOptions::default() };

    let one_device = root.join("one");
    train(&exp, &prepared, &one_device, &device, &RunOptions::default()).unwrap();
    let parallel = root.join("two");
    assert_eq!(train(&exp, &prepared, &parallel, &device, &two).unwrap().step, 8);
    let reference = losses(&one_device);
    assert_eq!(reference, losses(&parallel), "two replicas differ from one device");
    let (first, last): (f64, f64) = (reference[&1].0.parse().unwrap(), reference[&8].0.parse().unwrap());
    assert!(first - last > 0.1, "the loss should fall: {first} -> {last}");
    // Resuming a one-device run on two replicas: the worker starts from the checkpoint's AdamW
    // state too.
    let switched = root.join("switched");
    train_in_two_parts(&exp, &prepared, &switched, &device, two.clone());
    assert_eq!(reference, losses(&switched), "resumed on two replicas, the run differs");

    // Four micro-batches a step: two for each replica.
    let mut four = exp.clone();
    four.train.batch_tokens = 320;
    four.train.steps = 4;
    assert_eq!(four.accumulation(), 4);
    let (a, b) = (root.join("four-one"), root.join("four-two"));
    train(&four, &prepared, &a, &device, &RunOptions::default()).unwrap();
    train(&four, &prepared, &b, &device, &two).unwrap();
    assert_close(&losses(&a), &losses(&b), 1e-5, "four micro-batches on two replicas");

    // Micro-batches that the replicas cannot share equally are refused, naming the setting.
    let three = RunOptions { replicas: vec![Device::flex(), Device::flex()], ..RunOptions::default() };
    let e = train(&exp, &prepared, &root.join("three"), &device, &three).unwrap_err();
    assert!(e.to_string().contains("batch_tokens") && e.to_string().contains("3 replicas"), "{e}");
}

#[test]
fn a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_exactly_from_the_one_before() {
    let Fixture { dir, _rng, device, exp, prepared } = setup(false);
    let root = dir.path();
    let whole = root.join("whole");
    train(&exp, &prepared, &whole, &device, &RunOptions::default()).unwrap();

    let run = root.join("damaged");
    let first = RunOptions { max_steps: Some(4), checkpoint_every: Some(2), ..RunOptions::default() };
    assert_eq!(train(&exp, &prepared, &run, &device, &first).unwrap().step, 4);
    let newest = run.join("checkpoint-0000004");
    let weights = newest.join("model.bpk");
    let mut bytes = std::fs::read(&weights).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&weights, &bytes).unwrap();

    // Loading that checkpoint by name is refused, naming the file.
    let msg = chameleon_train::trainer::verify_checkpoint(&newest).unwrap_err().to_string();
    assert!(msg.contains("model.bpk") && msg.contains("CRC-32"), "{msg}");
    // Resuming takes step 2's checkpoint, sets step 4's aside, and trains on as if unbroken.
    let status = train(&exp, &prepared, &run, &device, &RunOptions { resume: true, ..RunOptions::default() }).unwrap();
    assert_eq!(status.step, 8);
    assert!(run.join("checkpoint-0000004.damaged/model.bpk").is_file());
    assert_eq!(losses(&whole), losses(&run));
}

#[test]
fn a_run_killed_before_its_first_checkpoint_starts_over_and_a_second_process_is_refused() {
    use chameleon_train::run_lock::RunLock;
    use chameleon_train::trainer::{STATUS_FILE, read_status};
    let Fixture { dir, _rng, device, exp, prepared } = setup(false);
    let root = dir.path();
    let whole = root.join("whole");
    train(&exp, &prepared, &whole, &device, &RunOptions::default()).unwrap();

    // What a process killed at step 1 leaves: a metrics row, status `running`, no checkpoint.
    for resume in [true, false] {
        let run = root.join(format!("killed-{resume}"));
        std::fs::create_dir_all(&run).unwrap();
        let first_row = std::fs::read_to_string(whole.join(METRICS_FILE)).unwrap().lines().next().unwrap().to_string();
        std::fs::write(run.join(METRICS_FILE), format!("{first_row}\n")).unwrap();
        std::fs::write(run.join(STATUS_FILE), r#"{"state":"running","step":1}"#).unwrap();
        let status = train(&exp, &prepared, &run, &device, &RunOptions { resume, ..RunOptions::default() }).unwrap();
        assert_eq!((status.state, status.step), (State::Done, 8), "resume = {resume}");
        assert_eq!(losses(&whole), losses(&run), "resume = {resume}");
    }

    // A run that ended before its first checkpoint (diverged at step 1) is a result: kept.
    let ended = root.join("ended");
    std::fs::create_dir_all(&ended).unwrap();
    std::fs::write(ended.join(METRICS_FILE), "{\"step\":1}\n").unwrap();
    std::fs::write(ended.join(STATUS_FILE), r#"{"state":"diverged","step":1,"reason":"loss NaN"}"#).unwrap();
    let e = train(&exp, &prepared, &ended, &device, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("already holds a run"), "{e}");
    assert_eq!(read_status(&ended).unwrap().state, State::Diverged, "an early refusal leaves the status alone");

    // A second process on a held run is refused, and told who holds it.
    let held = RunLock::acquire(&whole, "train --resume").unwrap();
    let e = train(&exp, &prepared, &whole, &device, &RunOptions { resume: true, ..RunOptions::default() }).unwrap_err();
    assert!(e.to_string().contains(&format!("in use by pid {}", std::process::id())), "{e}");
    drop(held);

    // An error mid-run (here the checkpoint's temporary directory cannot be made) leaves
    // status `failed` with the reason, not `running`.
    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("checkpoint-0000004.tmp"), "in the way").unwrap();
    let e = train(&exp, &prepared, &broken, &device, &RunOptions::default()).unwrap_err();
    let status = read_status(&broken).unwrap();
    assert_eq!(status.state, State::Failed);
    assert!(status.reason.unwrap().contains("checkpoint-0000004.tmp"), "{e}");
}
