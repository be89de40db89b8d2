//! `cargo xtask sft` and `cargo xtask respond` end to end on small fixtures: fine-tuning a
//! pre-trained run on SFT JSONL in three categories (loss per category, the realised mixture,
//! exact resume, the before/after evaluation), then the side-by-side page, exercised in a real
//! headless Chromium.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use chameleon_data::fixtures;
use common::{arg, caption_experiment, stderr, xtask};

const PAIRS: usize = 40;

/// SFT conversations in three categories over `PAIRS` images; returns the JSONL file.
fn sft_data(root: &Path) -> PathBuf {
    let dir = root.join("sft");
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = String::new();
    for i in 0..PAIRS {
        let image = format!("shape{i}.png");
        fixtures::write_png(&dir.join(&image), 100 + i as u8).unwrap();
        let name = format!("shape number {i}");
        let user = |content: serde_json::Value| serde_json::json!({"role": "user", "content": content});
        let assistant = |content: serde_json::Value| serde_json::json!({"role": "assistant", "content": content});
        let records = [
            (
                "visual-chat",
                user(serde_json::json!([{"image": image}, {"text": "What is this?"}])),
                assistant(format!("This is {name}.").into()),
            ),
            (
                "image-generation",
                user(format!("Draw {name}.").into()),
                assistant(serde_json::json!([{"image": image}])),
            ),
            ("text", user(format!("Count to {i}.").into()), assistant(format!("{i} is the number.").into())),
        ];
        for (category, u, a) in records {
            lines.push_str(&format!("{}\n", serde_json::json!({"category": category, "messages": [u, a]})));
        }
    }
    let path = dir.join("sft.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

fn sft_experiment(root: &Path, from: &Path, data: &Path) -> PathBuf {
    let source = |name: &str| {
        format!(
            "[[data.sources]]\nname = \"{name}\"\nformat = \"sft\"\npath = \"{}\"\ncategory = \"{name}\"\n",
            data.display()
        )
    };
    let toml = format!(
        r#"
[sft]
from = "{from}"
dropout = 0.05
eval_prompts = 20
[data]
seq_len = 40
held_out_every = 4
[data.images]
vq_checkpoint = "ignored: the pre-trained run's is used"
{chat}{draw}{text}
[[data.stages]]
start = 0.0
weights = {{ visual-chat = 1.0, image-generation = 2.0, text = 1.0 }}
[optim]
learning_rate = 1e-2
[schedule]
warmup_steps = 2
decay = "cosine"
[train]
steps = 8
micro_batch = 2
batch_tokens = 160
checkpoint_every = 4
keep_checkpoints = 3
within_documents = true
"#,
        from = from.display(),
        chat = source("visual-chat"),
        draw = source("image-generation"),
        text = source("text"),
    );
    let path = root.join("sft.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The page's DOM after a real browser ran its script, with `query` (e.g. `?choose=A,B`).
fn chromium_dom(page: &Path, query: &str) -> String {
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("Chromium is needed for this test (Debian: apt-get install chromium; .ci/run installs it)");
    let url = format!("file://{}{query}", page.canonicalize().unwrap().display());
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", &url])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains("Answer 1 is better"), "the page did not render: {}\n{dom}", stderr(&out));
    dom
}

/// What a real browser shows after `?choose=…`: the page's own JSON export and its tally.
fn choices_in_chromium(page: &Path, choose: &str) -> serde_json::Value {
    let dom = chromium_dom(page, &format!("?choose={choose}"));
    let start = dom.find("<pre id=\"export\">").expect("no export block") + "<pre id=\"export\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let json = dom[start..end].replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&");
    serde_json::from_str(&json).unwrap()
}

#[test]
fn sft_fine_tunes_resumes_exactly_evaluates_and_the_page_tallies_choices() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cache = root.join("cache");
    let pre = root.join("pre");
    let out = xtask(&[
        "train",
        "--config",
        arg(&caption_experiment(root, 6)),
        "--run-dir",
        arg(&pre),
        "--cache",
        arg(&cache),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let data = sft_data(root);
    let exp = sft_experiment(root, &pre, &data);
    let run = root.join("sft-run");
    let sft = |run: &Path, extra: &[&str]| {
        let mut args = vec!["sft", "--config", arg(&exp), "--run-dir", arg(run), "--cache", arg(&cache), "--no-tui"];
        args.extend_from_slice(extra);
        xtask(&args)
    };
    let out = sft(&run, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The resolved config starts from the pre-trained run, with its model and the SFT dropout.
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("init_from") && resolved.contains("checkpoint-0000006"), "{resolved}");
    assert!(resolved.contains("within_documents = true") && resolved.contains("residual_dropout = 0.05"));

    // Every step logs the loss per category.
    let rows = metrics(&run);
    assert_eq!(rows.len(), 8);
    let names = ["visual-chat", "image-generation", "text"];
    for row in &rows {
        let per = row["ce_by_source"].as_object().unwrap();
        assert!(!per.is_empty() && per.keys().all(|k| names.contains(&k.as_str())), "{per:?}");
        assert!(per.values().all(|v| v.as_f64().unwrap().is_finite()));
    }
    // The realised mixture is reported next to the intended one.
    let proportions: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("proportions.json")).unwrap()).unwrap();
    let streams = proportions[0]["streams"].as_object().unwrap();
    let rows_drawn: u64 = streams.values().map(|v| v[0].as_u64().unwrap()).sum();
    assert_eq!(rows_drawn, 8 * 4, "steps x rows per step");
    assert!((streams["image-generation"][2].as_f64().unwrap() - 0.5).abs() < 1e-9);

    // Stopped half-way and resumed, the fine-tuning writes the same losses.
    let split = root.join("sft-split");
    assert!(sft(&split, &["--max-steps", "4"]).status.success());
    let out = sft(&split, &["--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let loss = |rows: Vec<serde_json::Value>| rows.iter().map(|r| r["loss"].to_string()).collect::<Vec<_>>();
    assert_eq!(loss(metrics(&split)), loss(metrics(&run)));

    // Before and after, per category, on the held-out conversations (1 in 4: 10 per category).
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("sft-eval.json")).unwrap()).unwrap();
    for side in ["before", "after"] {
        for name in names {
            let c = &eval[side][name];
            assert_eq!(c["prompts"], 10, "{side} {name}: {c}");
            assert!(c["answer_nats_per_token"].as_f64().unwrap() > 0.0);
        }
        assert!(eval[side]["visual-chat"]["choice_accuracy"].as_f64().is_some());
        assert!(eval[side]["image-generation"]["image_nats_per_code"].as_f64().is_some());
        assert!(eval[side]["image-generation"]["choice_accuracy"].is_null());
    }
    assert_ne!(eval["before"], eval["after"]);
    // And on conversations the run drew: each row of a category packs at least one of its
    // conversations, so at least as many as its rows were drawn (up to eval_prompts = 20).
    for name in names {
        let rows = streams[name][0].as_u64().unwrap();
        let scored = eval["after_trained"][name]["prompts"].as_u64().unwrap();
        assert!(scored >= rows.min(20) && scored <= 20, "{name}: {scored} scored, {rows} rows drawn");
    }

    // Side by side: the fine-tuned run (A, its newest checkpoint) against the checkpoint it
    // started from (B, named as a checkpoint directory).
    let started_from = pre.join("checkpoint-0000006");
    let prompts = root.join("sft/prompts.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&data).unwrap().lines().take(4).map(str::to_string).collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let page_dir = root.join("respond");
    let out = xtask(&[
        "respond",
        "--run",
        arg(&run),
        "--vs",
        arg(&started_from),
        "--prompts",
        arg(&prompts),
        "--out",
        arg(&page_dir),
        "--max-new-tokens",
        "24",
        "--cache",
        arg(&cache),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for label in ["A", "B"] {
        for i in 0..4 {
            assert!(page_dir.join(format!("{label}/{i:03}/answer.txt")).is_file());
        }
    }
    let page = page_dir.join("index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("data:image/png;base64,"), "prompt images are embedded");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "the page is self-contained");

    // The blind order: "Answer 1" is run A's answer exactly where answers.json says A is left.
    let answers: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(page_dir.join("answers.json")).unwrap()).unwrap();
    assert_eq!(answers["runs"][1]["run"], started_from.display().to_string());
    let lefts: Vec<bool> =
        answers["items"].as_array().unwrap().iter().map(|i| i["a_left"].as_bool().unwrap()).collect();
    assert!(lefts.contains(&true) && lefts.contains(&false), "{lefts:?}");
    let dom = chromium_dom(&page, "");
    for (i, a_left) in lefts.iter().enumerate() {
        let first =
            dom.find(&format!("name=\"choice-{i}\" value=\"")).unwrap() + format!("name=\"choice-{i}\" value=\"").len();
        assert_eq!(
            &dom[first..first + 1],
            if *a_left { "A" } else { "B" },
            "prompt {i}: answer 1 is not where A was placed"
        );
    }

    let shown = choices_in_chromium(&page, "A,B,tie");
    assert_eq!(shown["tally"], serde_json::json!({"A": 1, "B": 1, "tie": 1, "undecided": 1}));
    // Undecided gaps and extra values replay without breaking the page.
    let gaps = choices_in_chromium(&page, "B,,A,,tie,A");
    assert_eq!(gaps["tally"], serde_json::json!({"A": 1, "B": 1, "tie": 0, "undecided": 2}));
    let chosen: Vec<&serde_json::Value> = shown["choices"].as_array().unwrap().iter().map(|c| &c["choice"]).collect();
    assert_eq!(
        chosen,
        [&serde_json::json!("A"), &serde_json::json!("B"), &serde_json::json!("tie"), &serde_json::Value::Null]
    );
    assert_eq!(shown["choices"][1]["category"], "image-generation");
}
