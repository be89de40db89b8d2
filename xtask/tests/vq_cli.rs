//! `cargo xtask vq encode|decode` on the committed VQ fixtures, as a user runs them.

mod common;

#[path = "../src/npy.rs"]
#[allow(dead_code)]
mod npy;

use common::{arg as s, stderr, xtask};
use safetensors::SafeTensors;

fn golden(case: &str, name: &str) -> Vec<u8> {
    let bytes = std::fs::read(common::fixture("vq", case).join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name).unwrap().data().to_vec()
}

fn golden_codes(case: &str) -> Vec<i64> {
    golden(case, "codes").chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

const CASE: &str = "attn_nin_latent_ne_embed";

#[test]
fn encode_npy_pixels_gives_hf_codes_and_decode_gives_meta_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let ck = common::fixture("vq", CASE);
    let codes = dir.path().join("codes.npy");
    let out =
        xtask(&["vq", "encode", "--checkpoint", s(&ck), "--input", s(&ck.join("pixels.npy")), "--output", s(&codes)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = npy::read_ints(&codes).unwrap();
    assert_eq!(got.shape, vec![2, 64]);
    assert_eq!(got.data, golden_codes(CASE));

    let pixels = dir.path().join("decoded.npy");
    let decoder = ck.join("decoder.safetensors");
    let out = xtask(&[
        "vq",
        "decode",
        "--checkpoint",
        s(&ck),
        "--decoder",
        s(&decoder),
        "--input",
        s(&codes),
        "--output",
        s(&pixels),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = npy::read_f32(&pixels).unwrap();
    assert_eq!(got.shape, vec![2, 3, 16, 16]);
    let want: Vec<f32> =
        golden(CASE, "decoded").chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let diff = got.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "decoded pixels differ by {diff}");

    // PNG output: one file per image.
    let pngs = dir.path().join("img.png");
    let out = xtask(&[
        "vq",
        "decode",
        "--checkpoint",
        s(&ck),
        "--decoder",
        s(&decoder),
        "--input",
        s(&codes),
        "--output",
        s(&pngs),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for i in 0..2 {
        let img = image::open(dir.path().join(format!("img-{i}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
    }
}

#[test]
fn encode_image_files_matches_encoding_their_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let ck = common::fixture("vq", CASE);
    // Two 16x16 PNGs whose pixels are exact in 8 bits.
    let mut paths = Vec::new();
    for k in 0..2u32 {
        let img = image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 16 + k * 40) as u8, (y * 16) as u8, ((x + y) * 8) as u8])
        });
        let p = dir.path().join(format!("in{k}.png"));
        img.save(&p).unwrap();
        paths.push(p);
    }
    let codes = dir.path().join("codes.npy");
    let out =
        xtask(&["vq", "encode", "--checkpoint", s(&ck), "--input", s(&paths[0]), s(&paths[1]), "--output", s(&codes)]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The same pixels through .npy give the same codes.
    let mut flat = Vec::new();
    for p in &paths {
        let img = image::open(p).unwrap().to_rgb8();
        for c in 0..3 {
            for y in 0..16 {
                for x in 0..16 {
                    flat.push(img.get_pixel(x, y)[c] as f32 / 127.5 - 1.0);
                }
            }
        }
    }
    let px = dir.path().join("px.npy");
    npy::write_f32(&px, &[2, 3, 16, 16], &flat).unwrap();
    let codes2 = dir.path().join("codes2.npy");
    let out = xtask(&["vq", "encode", "--checkpoint", s(&ck), "--input", s(&px), "--output", s(&codes2)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(npy::read_ints(&codes).unwrap().data, npy::read_ints(&codes2).unwrap().data);
}

#[test]
fn bad_inputs_name_the_file_and_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let ck = common::fixture("vq", CASE);
    let fail = |args: &[&str]| {
        let out = xtask(args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let out = dir.path().join("out.npy");
    // A truncated PNG.
    let cut = dir.path().join("cut.png");
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3]))
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = fail(&["vq", "encode", "--checkpoint", s(&ck), "--input", s(&cut), "--output", s(&out)]);
    assert!(err.contains("cut.png"), "{err}");
    // Pixels of the wrong resolution.
    let small = dir.path().join("small.npy");
    npy::write_f32(&small, &[1, 3, 8, 8], &[0.0; 192]).unwrap();
    let err = fail(&["vq", "encode", "--checkpoint", s(&ck), "--input", s(&small), "--output", s(&out)]);
    assert!(err.contains("small.npy") && err.contains("16"), "{err}");
    // Codes outside the codebook (64 entries).
    let codes = dir.path().join("codes.npy");
    let mut bad = vec![0i64; 64];
    bad[5] = 64;
    npy::write_i64(&codes, &[1, 64], &bad).unwrap();
    let decoder = ck.join("decoder.safetensors");
    let err = fail(&[
        "vq",
        "decode",
        "--checkpoint",
        s(&ck),
        "--decoder",
        s(&decoder),
        "--input",
        s(&codes),
        "--output",
        s(&out),
    ]);
    assert!(err.contains("codes.npy") && err.contains("[0, 5]") && err.contains("64"), "{err}");
    // An HF checkpoint has no decoder: say what to pass.
    npy::write_i64(&codes, &[1, 64], &[3; 64]).unwrap();
    let err = fail(&["vq", "decode", "--checkpoint", s(&ck), "--input", s(&codes), "--output", s(&out)]);
    assert!(err.contains("--decoder"), "{err}");
}
