//! `cargo xtask data check|tokenizer|stats` as a user runs them.

mod common;

use common::{arg, stderr, xtask};

fn png(path: &std::path::Path) {
    image::RgbImage::from_pixel(40, 40, image::Rgb([200, 30, 30])).save(path).unwrap();
}

#[test]
fn check_lists_counts_then_each_bad_record_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    png(&dir.path().join("ok.png"));
    let bytes = std::fs::read(dir.path().join("ok.png")).unwrap();
    std::fs::write(dir.path().join("cut.png"), &bytes[..bytes.len() / 2]).unwrap();
    let jsonl = dir.path().join("pairs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"image\": \"ok.png\", \"caption\": \"a red square\"}\n\
         {\"image\": \"cut.png\", \"caption\": \"half a square\"}\n\
         {\"image\": \"gone.png\", \"caption\": \"nothing\"}\n\
         {oops\n",
    )
    .unwrap();
    let out = xtask(&["data", "check", "caption", arg(&jsonl)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    for line in ["pairs.jsonl:2", "pairs.jsonl:3", "pairs.jsonl:4"] {
        assert!(stdout.contains(line), "missing {line} in:\n{stdout}");
    }
    assert!(!stdout.contains("pairs.jsonl:1:"), "{stdout}");
    assert!(stderr(&out).contains("3 bad record"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));

    // A clean source passes.
    std::fs::write(&jsonl, "{\"image\": \"ok.png\", \"caption\": \"a red square\"}\n").unwrap();
    let out = xtask(&["data", "check", "caption", arg(&jsonl)]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn check_of_a_missing_path_names_it() {
    let out = xtask(&["data", "check", "webdataset", "/nonexistent/shards"]);
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("/nonexistent/shards"), "{text}");
    assert!(!text.contains("panicked"));
}

#[test]
fn stats_of_a_corrupt_shard_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("broken.shard");
    std::fs::write(&shard, b"CHMSHARD but nothing else").unwrap();
    let out = xtask(&["data", "stats", arg(&shard)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("broken.shard"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}
