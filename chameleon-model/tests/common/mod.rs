//! Shared pieces of the integration tests: fixture paths, golden files, comparisons.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

/// The golden fixtures written by `scripts/hf_reference.py fixtures`.
pub const CASES: [&str; 5] = [
    "prenorm_mha",
    "swin_gqa_theta_sharded_v4config",
    "prenorm_gqa8to2_bf16",
    "swin_bias_f16",
    "transformers_test_vocab",
];

pub fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(case)
}

/// `input_ids` `[batch, seq]` and raw HF logits `[batch, seq, vocab]` of a fixture.
pub fn golden(case: &str, device: &Device) -> (Tensor<2, Int>, Tensor<3>) {
    let bytes = std::fs::read(fixture(case).join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    assert_eq!(ids.dtype(), Dtype::I64);
    let shape = [ids.shape()[0], ids.shape()[1]];
    let ids: Vec<i64> = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    let logits = st.tensor("logits").unwrap();
    assert_eq!(logits.dtype(), Dtype::F32);
    let lshape = [logits.shape()[0], logits.shape()[1], logits.shape()[2]];
    let logits: Vec<f32> = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (Tensor::from_data(TensorData::new(ids, shape), device), Tensor::from_data(TensorData::new(logits, lshape), device))
}

/// Largest absolute elementwise difference.
pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

/// A float tensor of a golden file, onto a device.
pub fn golden_f32<const D: usize>(file: &std::path::Path, name: &str, device: &Device) -> Tensor<D> {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    let shape: [usize; D] = t.shape().try_into().unwrap();
    let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// An int64 tensor of a golden file, as a flat vector with its shape.
pub fn golden_i64(file: &std::path::Path, name: &str) -> (Vec<usize>, Vec<i64>) {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    let v = t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    (t.shape().to_vec(), v)
}

/// The VQ golden fixtures written by `scripts/hf_reference.py vq-fixtures`.
pub const VQ_CASES: [&str; 2] = ["attn_nin_latent_ne_embed", "plain_one_block"];

pub fn vq_fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vq").join(case)
}

/// An int tensor's values as i64, whatever int type the backend stores.
pub fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data_as::<i64>().try_to_vec::<i64>().unwrap()
}
