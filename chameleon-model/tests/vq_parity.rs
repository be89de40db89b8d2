//! The VQ-VAE against HF's ChameleonVQVAE (encoder, quant_conv, codes) and against the decoder
//! restated from Meta's vqgan.py, on the committed golden fixtures.

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_model::checkpoint::{load_vq_checkpoint, save_vq_checkpoint};
use common::{VQ_CASES, golden_f32, golden_i64, ints, max_abs_diff, vq_fixture};

fn codes_of(case: &str) -> Vec<i64> {
    golden_i64(&vq_fixture(case).join("golden.safetensors"), "codes").1
}

#[test]
fn encoder_latent_and_codes_match_hf_and_decoder_matches_meta() {
    let device = Device::flex();
    for case in VQ_CASES {
        let dir = vq_fixture(case);
        let golden = dir.join("golden.safetensors");
        let vq = load_vq_checkpoint(&dir, Some(&dir.join("decoder.safetensors")), &device)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let pixels: Tensor<4> = golden_f32(&golden, "pixels", &device);
        let encoder_out = vq.encoder.forward(pixels.clone());
        let diff = max_abs_diff(encoder_out, golden_f32(&golden, "encoder_out", &device));
        assert!(diff < 1e-4, "{case}: encoder differs from HF by {diff}");
        let latent = vq.latent(pixels.clone());
        let diff = max_abs_diff(latent, golden_f32(&golden, "latent", &device));
        assert!(diff < 1e-4, "{case}: quant_conv output differs from HF by {diff}");
        let codes = ints(vq.encode(pixels));
        assert_eq!(codes, codes_of(case), "{case}: codes differ from HF");
        let (shape, want) = golden_i64(&golden, "codes");
        let codes = Tensor::<2, Int>::from_data(TensorData::new(want, [shape[0], shape[1]]), &device);
        let decoded = vq.decode(codes).expect("decoder loaded");
        let diff = max_abs_diff(decoded, golden_f32(&golden, "decoded", &device));
        assert!(diff < 1e-4, "{case}: decoder differs from Meta's by {diff}");
    }
}

#[test]
fn without_a_decoder_file_an_hf_checkpoint_encodes_but_cannot_decode() {
    let device = Device::flex();
    let dir = vq_fixture("plain_one_block");
    let vq = load_vq_checkpoint(&dir, None, &device).unwrap();
    assert!(vq.decoder.is_none());
    let (shape, codes) = golden_i64(&dir.join("golden.safetensors"), "codes");
    let codes = Tensor::<2, Int>::from_data(TensorData::new(codes, [shape[0], shape[1]]), &device);
    assert!(vq.decode(codes).is_none());
}

#[test]
fn our_own_format_round_trips_exactly() {
    let device = Device::flex();
    let dir = vq_fixture("attn_nin_latent_ne_embed");
    let vq = load_vq_checkpoint(&dir, Some(&dir.join("decoder.safetensors")), &device).unwrap();
    let saved = tempfile::tempdir().unwrap();
    save_vq_checkpoint(&vq, saved.path()).unwrap();
    let back = load_vq_checkpoint(saved.path(), None, &device).unwrap();
    assert_eq!(back.config, vq.config);
    let golden = dir.join("golden.safetensors");
    let pixels: Tensor<4> = golden_f32(&golden, "pixels", &device);
    let codes = back.encode(pixels.clone());
    assert_eq!(ints(codes.clone()), ints(vq.encode(pixels)));
    let diff = max_abs_diff(back.decode(codes.clone()).unwrap(), vq.decode(codes).unwrap());
    assert_eq!(diff, 0.0);
}

#[test]
fn a_decoder_that_disagrees_with_the_config_is_refused_by_name() {
    let device = Device::flex();
    // The decoder of one fixture does not fit the config of the other.
    let dir = vq_fixture("plain_one_block");
    let wrong = vq_fixture("attn_nin_latent_ne_embed").join("decoder.safetensors");
    let err = load_vq_checkpoint(&dir, Some(&wrong), &device).unwrap_err().to_string();
    assert!(err.contains("decoder.safetensors") && err.contains("decoder."), "{err}");
}
