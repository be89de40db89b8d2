//! The VQGAN building blocks: residual block, spatial self-attention, down- and upsampling.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Tensor};

/// GroupNorm with 32 groups and ε = 1e-6, as everywhere in the VQGAN.
pub fn normalize(channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(32, channels).with_epsilon(1e-6).init(device)
}

/// A 3×3 convolution with padding 1 (or a 1×1 one without padding).
pub fn conv(c_in: usize, c_out: usize, kernel: usize, device: &Device) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

/// `norm → swish → conv → norm → swish → conv`, plus a 1×1 `nin_shortcut` when the channels change.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    /// First norm.
    pub norm1: GroupNorm,
    /// First 3×3 conv.
    pub conv1: Conv2d,
    /// Second norm.
    pub norm2: GroupNorm,
    /// Second 3×3 conv.
    pub conv2: Conv2d,
    /// Channel change of the skip path.
    pub nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    /// A fresh block.
    pub fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        Self {
            norm1: normalize(c_in, device),
            conv1: conv(c_in, c_out, 3, device),
            norm2: normalize(c_out, device),
            conv2: conv(c_out, c_out, 3, device),
            nin_shortcut: (c_in != c_out).then(|| conv(c_in, c_out, 1, device)),
        }
    }

    /// `x`: `[batch, channels, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let skip = match &self.nin_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        skip + h
    }
}

/// Single-head self-attention over the pixels of a feature map, with 1×1 q/k/v/out convs.
#[derive(Module, Debug)]
pub struct AttnBlock {
    /// Norm before q/k/v.
    pub norm: GroupNorm,
    /// Query projection.
    pub q: Conv2d,
    /// Key projection.
    pub k: Conv2d,
    /// Value projection.
    pub v: Conv2d,
    /// Output projection.
    pub proj_out: Conv2d,
}

impl AttnBlock {
    /// A fresh block.
    pub fn new(c: usize, device: &Device) -> Self {
        Self {
            norm: normalize(c, device),
            q: conv(c, c, 1, device),
            k: conv(c, c, 1, device),
            v: conv(c, c, 1, device),
            proj_out: conv(c, c, 1, device),
        }
    }

    /// `x`: `[batch, channels, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let n = self.norm.forward(x.clone());
        let q = self.q.forward(n.clone()).reshape([b, c, h * w]).swap_dims(1, 2); // [b, hw, c]
        let k = self.k.forward(n.clone()).reshape([b, c, h * w]); // [b, c, hw]
        let v = self.v.forward(n).reshape([b, c, h * w]).swap_dims(1, 2); // [b, hw, c]
        let weights = softmax(q.matmul(k).mul_scalar((c as f64).powf(-0.5)), 2); // [b, hw_q, hw_k]
        let out = weights.matmul(v).swap_dims(1, 2).reshape([b, c, h, w]);
        x + self.proj_out.forward(out)
    }
}

/// Pad right and bottom by one, then a 3×3 conv with stride 2: halves the side.
#[derive(Module, Debug)]
pub struct Downsample {
    /// The strided conv.
    pub conv: Conv2d,
}

impl Downsample {
    /// A fresh downsampler.
    pub fn new(c: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new([c, c], [3, 3])
            .with_stride([2, 2])
            // (top, left, bottom, right): PyTorch's F.pad(x, (0, 1, 0, 1)).
            .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
            .init(device);
        Self { conv }
    }

    /// `x`: `[batch, channels, h, w]` -> `[batch, channels, h/2, w/2]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

/// Nearest-neighbour upsampling by 2, then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample {
    /// The conv after upsampling.
    pub conv: Conv2d,
}

impl Upsample {
    /// A fresh upsampler.
    pub fn new(c: usize, device: &Device) -> Self {
        Self { conv: conv(c, c, 3, device) }
    }

    /// `x`: `[batch, channels, h, w]` -> `[batch, channels, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let up = x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w]);
        self.conv.forward(up)
    }
}
