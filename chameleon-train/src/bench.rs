//! The benchmark workloads, shared by `cargo xtask bench` (which times them against PyTorch) and
//! the criterion benches in `benches/`. Each is built once (`new`) and then run repeatedly
//! (`run`); `run` returns only after the device has finished, so wall-clock time is honest on
//! asynchronous backends.
//!
//! - P1 [`TrainStep`]: the trainer's own step (forward, masked CE + z-loss, backward, global
//!   clip, AdamW) on random tokens, on a step without the stability probes (see
//!   `train.probe_every`), as PyTorch's reference computes none.
//! - P2 [`Decode`]: greedy decoding with the KV cache: a prompt, then one token at a time.
//! - P3 [`VqEncode`]: VQ-VAE image → codes.
//! - P5 [`Loader`]: packed batches from prepared shards.

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use chameleon_data::{Batch, Mixture, VocabLayout};
use chameleon_model::vq::{VqConfig, VqVae};
use chameleon_model::{Chameleon, ChameleonConfig, KvCache, Precision};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::optim::{OptimConfig, clip_global};
use crate::trainer::{LossSpec, losses};

/// The model for P1 and P2: d 256, 4 layers, 4 heads, vocab 4096 (1024 image codes),
/// with the two architectural fixes on or off.
pub fn bench_model(fixes: bool) -> ChameleonConfig {
    let placement =
        if fixes { chameleon_model::NormPlacement::Reordered } else { chameleon_model::NormPlacement::PreNorm };
    ChameleonConfig::new(4096, 256, 4, 4).with_qk_norm(fixes).with_norm_placement(placement).with_max_seq_len(512)
}

/// The VQ for P3: resolution 32, base 32, multipliers [1, 1, 1], 2 res-blocks, attention
/// at 8, latent 32, embed 32, 256 codes.
pub fn bench_vq() -> VqConfig {
    VqConfig::new()
        .with_resolution(32)
        .with_base_channels(32)
        .with_channel_multiplier(vec![1, 1, 1])
        .with_num_res_blocks(2)
        .with_attn_resolutions(vec![8])
        .with_latent_channels(32)
        .with_embed_dim(32)
        .with_num_embeddings(256)
}

fn random_batch(vocab: usize, batch: usize, seq: usize, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let row_len = seq + 1;
    let tokens = (0..batch * row_len).map(|_| rng.random_range(7..vocab as u32)).collect();
    Batch { batch_size: batch, row_len, tokens, loss: vec![1; batch * row_len], sources: vec![0; batch] }
}

/// P1: one optimizer step of the trainer on a fixed random batch.
pub struct TrainStep {
    model: Option<Chameleon>,
    optim: ModuleOptimizer,
    batch: Batch,
    layout: VocabLayout,
    precision: Precision,
    device: Device,
}

impl TrainStep {
    /// `batch` rows of `seq` tokens; z-loss 1e-5, AdamW as in the paper, clip 1.0.
    pub fn new(config: &ChameleonConfig, batch: usize, seq: usize, precision: Precision, device: &Device) -> Self {
        let device = device.clone().autodiff();
        device.seed(0);
        let model = config.init(&device);
        let layout = VocabLayout::contiguous(1024, config.vocab_size - 7 - 1024);
        let optim = OptimConfig { learning_rate: 1e-4, ..OptimConfig::default() }.init();
        let batch = random_batch(config.vocab_size, batch, seq, 0);
        Self { model: Some(model), optim, batch, layout, precision, device }
    }

    /// Tokens trained per step.
    pub fn tokens(&self) -> usize {
        self.batch.batch_size * (self.batch.row_len - 1)
    }

    /// One step; returns the loss.
    pub fn run(&mut self) -> f64 {
        let model = self.model.take().expect("the model is put back after every step");
        let compute = self.precision.compute_copy(&model);
        let spec = LossSpec { z_loss: 1e-5, image_loss: true, within_documents: false };
        let (l, _) = losses(&compute, &self.batch, &self.layout, spec, false, &self.device);
        let loss = l.total.clone().detach().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(l.total.backward(), &model);
        let (grads, _) = clip_global(&model, grads, 1.0);
        let model = self.optim.step(1e-4, model, grads);
        // Wait for the update (the next step would, anyway).
        let _ = model.norm.weight.val().slice([0..1]).into_data();
        self.model = Some(model);
        loss
    }
}

/// P2: greedy decoding of `new_tokens` after a `prompt`-token prompt, `batch` rows at once.
pub struct Decode {
    model: Chameleon,
    prompt: Tensor<2, Int>,
    new_tokens: usize,
}

impl Decode {
    /// A random model and random prompts.
    pub fn new(config: &ChameleonConfig, batch: usize, prompt: usize, new_tokens: usize, device: &Device) -> Self {
        device.seed(0);
        let model = config.init(device);
        let ids: Vec<i64> =
            random_batch(config.vocab_size, batch, prompt - 1, 1).tokens.iter().map(|&t| t as i64).collect();
        let prompt = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, prompt]), device);
        Self { model, prompt, new_tokens }
    }

    /// Tokens generated per run (all rows).
    pub fn tokens(&self) -> usize {
        self.prompt.dims()[0] * self.new_tokens
    }

    /// Prefill (which gives the first token), then `new_tokens - 1` one-token steps; each
    /// token's ids come back to the host, as a sampler's would, and the last read waits for the
    /// device. Returns the last ids.
    pub fn run(&self) -> Vec<i64> {
        let mut cache = KvCache::new(&self.model);
        let [b, _] = self.prompt.dims();
        let mut logits = self.model.forward_cached(self.prompt.clone(), &mut cache);
        let mut ids = Vec::new();
        for i in 0..self.new_tokens {
            let [_, t, v] = logits.dims();
            let next = logits.narrow(1, t - 1, 1).reshape([b, v]).argmax(1);
            ids = next.clone().into_data().convert::<i64>().try_to_vec::<i64>().unwrap_or_default();
            if i + 1 == self.new_tokens {
                break;
            }
            logits = self.model.forward_cached(next, &mut cache);
        }
        ids
    }
}

/// P3: VQ-VAE encoding of a batch of images.
pub struct VqEncode {
    vq: VqVae,
    pixels: Tensor<4>,
}

impl VqEncode {
    /// A random VQ and random images in [-1, 1].
    pub fn new(config: &VqConfig, batch: usize, device: &Device) -> Self {
        device.seed(0);
        let vq = config.init(device);
        let r = config.resolution;
        let pixels = Tensor::<4>::random([batch, config.in_channels, r, r], Distribution::Uniform(-1.0, 1.0), device);
        Self { vq, pixels }
    }

    /// Images per run.
    pub fn images(&self) -> usize {
        self.pixels.dims()[0]
    }

    /// Encodes the batch; returns the first image's first code.
    pub fn run(&self) -> i64 {
        let codes = self.vq.encode(self.pixels.clone());
        codes.slice([0..1, 0..1]).into_data().convert::<i64>().try_to_vec::<i64>().unwrap_or_default()[0]
    }
}

/// P5: packed training batches from prepared shards (no tensors: the loader alone).
pub struct Loader {
    mixture: Mixture,
    batch: usize,
}

impl Loader {
    /// Batches of `batch` rows from an opened mixture.
    pub fn new(mixture: Mixture, batch: usize) -> Self {
        Self { mixture, batch }
    }

    /// One batch; returns its token count.
    pub fn run(&mut self) -> usize {
        let b = self.mixture.next_batch(0.0, self.batch);
        b.batch_size * (b.row_len - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workloads_run_and_a_train_step_lowers_the_loss_on_its_batch() {
        let device = Device::flex();
        let config = ChameleonConfig::new(1200, 32, 2, 2).with_qk_norm(true).with_max_seq_len(32);
        let mut step = TrainStep::new(&config, 2, 16, Precision::F32, &device);
        assert_eq!(step.tokens(), 32);
        let first = step.run();
        let later = (0..5).map(|_| step.run()).last().unwrap();
        assert!(first.is_finite() && later < first, "{first} -> {later}");

        let decode = Decode::new(&config, 2, 4, 3, &device);
        let ids = decode.run();
        assert_eq!((decode.tokens(), ids.len()), (6, 2));
        assert!(ids.iter().all(|&i| (0..1200).contains(&i)));

        let vq = VqEncode::new(&bench_vq().with_attn_resolutions(vec![]).with_base_channels(32), 1, &device);
        assert!((0..256).contains(&vq.run()));
    }
}
