//! Chameleon's optimizer recipe: AdamW (β1 0.9, β2 0.95, ε 1e-5, weight decay 0.1), a
//! **global** gradient-norm clip (burn's `GradientClipping::Norm` clips each tensor on its own),
//! and the learning-rate schedules (linear warmup, then exponential decay to 0 for
//! pre-training; cosine for SFT). The learning rate is a pure function of the step, so a
//! resumed run needs no scheduler state.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// AdamW settings and the clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW β1.
    pub beta_1: f32,
    /// AdamW β2 (the paper: 0.95; burn's default 0.999).
    pub beta_2: f32,
    /// AdamW ε.
    pub epsilon: f32,
    /// Decoupled weight decay (the paper: 0.1; burn's default 1e-4).
    pub weight_decay: f32,
    /// Global gradient-norm clip (0: none).
    pub grad_clip: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { learning_rate: 1e-3, beta_1: 0.9, beta_2: 0.95, epsilon: 1e-5, weight_decay: 0.1, grad_clip: 1.0 }
    }
}

impl OptimConfig {
    /// The AdamW optimizer with these settings (no per-tensor clipping: see [`clip_global`]).
    pub fn init(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
            .init()
    }
}

/// The shape of the learning-rate curve after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// `exp(-k·p)`, shifted and scaled to fall from 1 at the end of warmup to exactly 0 at the
    /// last step (pre-training, as in the paper).
    Exponential,
    /// Half a cosine from 1 to 0 (SFT).
    Cosine,
    /// Constant after warmup.
    Constant,
}

/// Linear warmup, then a decay to 0 by `total_steps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Steps of linear warmup from 0.
    pub warmup_steps: usize,
    /// The curve after warmup.
    pub decay: Decay,
    /// Rate of the exponential decay: the curve is `exp(-rate·p)` for progress `p` in [0, 1],
    /// rescaled to end at 0.
    pub decay_rate: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self { warmup_steps: 100, decay: Decay::Exponential, decay_rate: 5.0 }
    }
}

impl Schedule {
    /// The learning rate at `step` (0-based) of `total_steps`, for a peak of `peak`.
    pub fn lr(&self, peak: f64, step: usize, total_steps: usize) -> f64 {
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let p = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        let shape = match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            Decay::Exponential => {
                let k = self.decay_rate;
                ((-k * p).exp() - (-k).exp()) / (1.0 - (-k).exp())
            }
        };
        peak * shape
    }
}

/// Sums the squares of every parameter's gradient.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// Multiplies every parameter's gradient by one factor.
struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    factor: Tensor<1>,
}

impl ModuleVisitor for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let f: Tensor<D> = self.factor.clone().unsqueeze();
            self.grads.register::<D>(param.id, g * f);
        }
    }
}

/// The global L2 norm of all gradients, and the gradients scaled so that it is at most
/// `max_norm` (unchanged when it already is, or when `max_norm` is 0). Returns the norm before
/// clipping, for the metrics.
pub fn clip_global<M: Module>(model: &M, grads: GradientsParams, max_norm: f32) -> (GradientsParams, f32) {
    let mut visitor = SquaredNorm { grads: &grads, sum: None };
    model.visit(&mut visitor);
    let Some(sum) = visitor.sum else { return (grads, 0.0) };
    let norm = sum.sqrt();
    let value: f32 = norm.clone().into_scalar();
    (scale_to_max(model, grads, norm, value, max_norm), value)
}

/// The gradients scaled as [`clip_global`] scales them when their global norm is `norm` (read
/// back from the device that computed it). A data-parallel replica takes the main replica's
/// norm this way, so that every replica scales by the same factor: two GPUs may reduce in
/// different orders and round the norm differently, and the replicas would drift apart.
pub fn clip_to_norm<M: Module>(
    model: &M,
    grads: GradientsParams,
    norm: f32,
    max_norm: f32,
    device: &Device,
) -> GradientsParams {
    let tensor = Tensor::<1>::from_data(TensorData::from([norm]), device);
    scale_to_max(model, grads, tensor, norm, max_norm)
}

fn scale_to_max<M: Module>(
    model: &M,
    mut grads: GradientsParams,
    norm: Tensor<1>,
    value: f32,
    max_norm: f32,
) -> GradientsParams {
    if max_norm > 0.0 && value.is_finite() && value > max_norm {
        let factor = norm.add_scalar(1e-6).recip().mul_scalar(max_norm);
        model.visit(&mut ScaleGrads { grads: &mut grads, factor });
    }
    grads
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Two {
        a: Linear,
        b: Linear,
    }

    fn grads_of(model: &Two, scale: f32, device: &Device) -> GradientsParams {
        let x = Tensor::<2>::ones([3, 4], device);
        let y = model.b.forward(model.a.forward(x)).sum().mul_scalar(scale);
        GradientsParams::from_grads(y.backward(), model)
    }

    fn norm_of(model: &Two, grads: &GradientsParams) -> f32 {
        let mut v = SquaredNorm { grads, sum: None };
        model.visit(&mut v);
        v.sum.unwrap().sqrt().into_scalar()
    }

    #[test]
    fn the_clip_is_global_not_per_tensor() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let model = Two { a: LinearConfig::new(4, 5).init(&device), b: LinearConfig::new(5, 2).init(&device) };
        let grads = grads_of(&model, 100.0, &device);
        let before_a = grads.get::<2>(model.a.weight.id).unwrap();
        let before_b = grads.get::<2>(model.b.weight.id).unwrap();
        let total = norm_of(&model, &grads);
        assert!(total > 1.0);
        let (clipped, reported) = clip_global(&model, grads, 1.0);
        assert!((reported - total).abs() <= 1e-4 * total);
        assert!((norm_of(&model, &clipped) - 1.0).abs() < 1e-4);
        // Every tensor is scaled by the same factor: directions and ratios are kept.
        let factor = 1.0 / total;
        let after_a = clipped.get::<2>(model.a.weight.id).unwrap();
        let after_b = clipped.get::<2>(model.b.weight.id).unwrap();
        let diff = |x: Tensor<2>, y: Tensor<2>| (x - y.mul_scalar(factor)).abs().max().into_scalar::<f32>();
        assert!(diff(after_a, before_a) < 1e-5);
        assert!(diff(after_b, before_b) < 1e-5);
        // Given the same norm, a data-parallel replica scales to the same bits.
        let replica = clip_to_norm(&model, grads_of(&model, 100.0, &device), reported, 1.0, &Device::flex());
        let bits = |g: &GradientsParams| g.get::<2>(model.a.weight.id).unwrap().into_data();
        assert_eq!(bits(&replica), bits(&clipped));
        // Small gradients are left alone.
        let small = grads_of(&model, 1e-4, &device);
        let n = norm_of(&model, &small);
        let (kept, _) = clip_global(&model, small, 1.0);
        assert_eq!(norm_of(&model, &kept), n);
    }

    #[test]
    fn warmup_then_decay_to_zero() {
        let s = Schedule { warmup_steps: 10, decay: Decay::Exponential, decay_rate: 5.0 };
        assert!((s.lr(1.0, 0, 110) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 9, 110) - 1.0).abs() < 1e-12);
        assert!((s.lr(1.0, 10, 110) - 1.0).abs() < 1e-12);
        assert!(s.lr(1.0, 110, 110).abs() < 1e-12);
        let mid = s.lr(1.0, 60, 110);
        assert!(mid > 0.0 && mid < 0.5 * (1.0 + (-5.0f64).exp()), "exponential falls faster than linear: {mid}");
        let lrs: Vec<f64> = (10..=110).map(|t| s.lr(2.0, t, 110)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
        let c = Schedule { warmup_steps: 0, decay: Decay::Cosine, decay_rate: 0.0 };
        assert!((c.lr(1.0, 50, 100) - 0.5).abs() < 1e-12);
        assert!(c.lr(1.0, 100, 100).abs() < 1e-12);
    }

    #[test]
    fn one_adamw_step_decays_then_moves_by_lr_times_the_sign() {
        // First AdamW step: m̂ = g, v̂ = g², so w' = w·(1 − lr·wd) − lr·g / (|g| + ε).
        let device = Device::flex().autodiff();
        device.seed(5);
        let model = Two { a: LinearConfig::new(4, 5).init(&device), b: LinearConfig::new(5, 2).init(&device) };
        let config = OptimConfig::default();
        let grads = grads_of(&model, 1.0, &device);
        let g: Vec<f32> = grads.get::<2>(model.a.weight.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let w: Vec<f32> = model.a.weight.val().into_data().try_to_vec::<f32>().unwrap();
        let lr = 0.01;
        let stepped = config.init().step(lr, model, grads);
        let after: Vec<f32> = stepped.a.weight.val().into_data().try_to_vec::<f32>().unwrap();
        for ((w, g), a) in w.iter().zip(&g).zip(&after) {
            let want = w * (1.0 - lr as f32 * config.weight_decay) - lr as f32 * g / (g.abs() + config.epsilon);
            assert!((a - want).abs() < 1e-6, "{a} vs {want}");
        }
    }
}
