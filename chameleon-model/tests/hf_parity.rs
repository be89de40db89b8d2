//! Our model against HF transformers' Chameleon on the committed golden fixtures.

mod common;

use burn::tensor::Device;
use chameleon_model::checkpoint::load_hf_checkpoint;
use chameleon_model::{Modality, NormPlacement};
use common::{CASES, fixture, golden, max_abs_diff};

#[test]
fn logits_match_hf_within_1e_4_for_every_fixture() {
    let device = Device::flex();
    for case in CASES {
        let loaded = load_hf_checkpoint(&fixture(case), &device).unwrap_or_else(|e| panic!("{case}: {e}"));
        let (ids, expected) = golden(case, &device);
        let diff = max_abs_diff(loaded.model.forward(ids.clone()), expected.clone());
        assert!(diff < 1e-4, "{case}: max |logit diff| vs HF = {diff}");
        // The probed (unfused attention) path computes the same logits.
        let (logits, _) = loaded.model.forward_diagnosed(ids);
        let diff = max_abs_diff(logits, expected);
        assert!(diff < 1e-4, "{case}: diagnosed path differs from HF by {diff}");
    }
}

#[test]
fn fixtures_cover_the_required_variants() {
    let device = Device::flex();
    let load = |case| load_hf_checkpoint(&fixture(case), &device).unwrap();
    let mha = load("prenorm_mha");
    assert_eq!(mha.model.config.norm_placement, NormPlacement::PreNorm);
    assert_eq!(mha.model.config.kv_heads(), mha.model.config.n_heads);
    let swin = load("swin_gqa_theta_sharded_v4config");
    assert_eq!(swin.model.config.norm_placement, NormPlacement::Reordered);
    assert_eq!((swin.model.config.n_heads, swin.model.config.kv_heads()), (4, 2));
    assert_eq!(swin.model.config.rope_theta, 500000.0, "transformers 4.x top-level rope_theta");
    assert!(fixture("swin_gqa_theta_sharded_v4config").join("model.safetensors.index.json").is_file());
    let gqa = load("prenorm_gqa8to2_bf16");
    assert_eq!((gqa.model.config.n_heads, gqa.model.config.kv_heads()), (8, 2));
    let f16 = load("swin_bias_f16");
    assert!(f16.model.config.attention_bias && f16.model.config.mlp_bias);
    assert_eq!(f16.model.config.rope_theta, 1234.0, "transformers 5.x rope_parameters");
    // Image ids neither start at 4 nor follow codebook order; the layout comes from names.
    let vocab = mha.vocab.expect("vocabulary_map");
    let first = vocab.image_token(0).unwrap();
    assert_ne!(first, 4);
    assert!(vocab.image_tokens().windows(2).any(|w| w[1] != w[0] + 1));
    assert_eq!(vocab.modality(first), Some(Modality::Image));
    assert_eq!(vocab.image_code(first), Some(0));
    assert_eq!(vocab.special().begin_image, 100);

    // transformers' own test vocabulary: no end-of-turn or image-block tokens, bos and eos only
    // as config.json ids, image tokens named by token id. Logits load (checked above against
    // HF); the features that need what is missing are refused by name.
    let tester = load("transformers_test_vocab").vocab.expect("vocabulary_map");
    assert_eq!((tester.special().bos, tester.special().eos, tester.special().pad), (0, 2, 1));
    assert_eq!(tester.missing_special(), &["<racm3:break>", "<eoss>", "<reserved08706>"]);
    assert!(tester.require_special(&["<reserved08706>"], "SFT").unwrap_err().contains("SFT"));
    assert!(tester.require_images("image generation").unwrap_err().contains("not dense"));
}
