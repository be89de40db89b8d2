//! Small generated data for tests, benchmarks and examples across the workspace: caption pairs
//! with distinct images, a tiny random image tokenizer, and the tokenizer model this crate ships
//! as a test fixture. Nothing here is downloaded.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use chameleon_model::checkpoint::{CheckpointError, save_vq_checkpoint};
use chameleon_model::vq::{VqConfig, VqVae};

/// The 400-piece sentencepiece model in `chameleon-data/tests/fixtures/tokenizer/` (see its
/// README for how it was made).
pub fn tokenizer_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tokenizer.model")
}

/// Writes the same tokenizer model (compiled into the binary, 6 kB) to `dir/tokenizer.model`,
/// for a binary that runs away from the source tree (`cargo xtask device-check` on a GPU machine).
pub fn write_tokenizer_model(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("tokenizer.model");
    std::fs::write(&path, include_bytes!("../tests/fixtures/tokenizer/tokenizer.model"))?;
    Ok(path)
}

/// A distinct 20×20 PNG for each `seed`.
pub fn write_png(path: &Path, seed: u8) -> Result<(), image::ImageError> {
    image::RgbImage::from_fn(20, 20, |x, y| image::Rgb([seed.wrapping_mul(40), (x * 12) as u8, (y * 12) as u8]))
        .save(path)
}

/// `n` caption pairs in `dir`: `img<i>.png` and `pairs.jsonl` naming them with `caption(i)`.
/// A valid 1×1 grey PNG whose header then declares `width`×`height` pixels (its CRC fixed):
/// what a hostile file looks like to a decoder that trusts headers.
pub fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = Vec::new();
    image::GrayImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("PNG in memory");
    // IHDR: after the 8-byte signature, its length (4) and type (4), width then height; its
    // CRC covers type and data and follows the 13 data bytes.
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

pub fn write_caption_pairs(dir: &Path, n: u8, caption: impl Fn(u8) -> String) -> std::io::Result<PathBuf> {
    let mut lines = String::new();
    for i in 0..n {
        write_png(&dir.join(format!("img{i}.png")), i).map_err(std::io::Error::other)?;
        let line = serde_json::json!({ "image": format!("img{i}.png"), "caption": caption(i) });
        lines.push_str(&format!("{line}\n"));
    }
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines)?;
    Ok(path)
}

/// A tiny random image tokenizer (16 px images, 4×4 = 16 codes from 32 entries), saved in `dir`.
pub fn tiny_vq(dir: &Path, device: &Device) -> Result<VqVae, CheckpointError> {
    let model = VqConfig::new()
        .with_resolution(16)
        .with_base_channels(32)
        .with_channel_multiplier(vec![1, 1, 1])
        .with_num_res_blocks(1)
        .with_latent_channels(32)
        .with_embed_dim(8)
        .with_num_embeddings(32)
        .init(device);
    save_vq_checkpoint(&model, dir)?;
    Ok(model)
}
