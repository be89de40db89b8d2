//! The VQGAN encoder: image `[b, 3, R, R]` -> latent `[b, latent, R/2^(L-1), R/2^(L-1)]`.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::VqConfig;
use super::blocks::{AttnBlock, Downsample, ResnetBlock, conv, normalize};

/// One resolution level of the encoder (`encoder.down.N`).
#[derive(Module, Debug)]
pub struct DownLevel {
    /// Residual blocks.
    pub block: Vec<ResnetBlock>,
    /// Attention after each block (empty, or one per block).
    pub attn: Vec<AttnBlock>,
    /// Halving at the end of every level but the last.
    pub downsample: Option<Downsample>,
}

/// The middle of encoder and decoder: block, attention, block (`mid.*`).
#[derive(Module, Debug)]
pub struct Mid {
    /// First block.
    pub block_1: ResnetBlock,
    /// Attention.
    pub attn_1: AttnBlock,
    /// Second block.
    pub block_2: ResnetBlock,
}

impl Mid {
    /// A fresh middle at `c` channels.
    pub fn new(c: usize, device: &Device) -> Self {
        Self {
            block_1: ResnetBlock::new(c, c, device),
            attn_1: AttnBlock::new(c, device),
            block_2: ResnetBlock::new(c, c, device),
        }
    }

    /// Block, attention, block.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.block_2.forward(self.attn_1.forward(self.block_1.forward(x)))
    }
}

/// The encoder (`encoder.*`).
#[derive(Module, Debug)]
pub struct Encoder {
    /// Pixels to base channels.
    pub conv_in: Conv2d,
    /// Levels, highest resolution first.
    pub down: Vec<DownLevel>,
    /// Middle.
    pub mid: Mid,
    /// Final norm.
    pub norm_out: GroupNorm,
    /// To latent channels.
    pub conv_out: Conv2d,
}

impl Encoder {
    /// A fresh encoder.
    pub fn new(c: &VqConfig, device: &Device) -> Self {
        let base = c.base_channels;
        let levels = c.channel_multiplier.len();
        let mut res = c.resolution;
        let mut block_in = base;
        let mut down = Vec::with_capacity(levels);
        for (i, &mult) in c.channel_multiplier.iter().enumerate() {
            let block_out = base * mult;
            let mut block = Vec::new();
            let mut attn = Vec::new();
            for _ in 0..c.num_res_blocks {
                block.push(ResnetBlock::new(block_in, block_out, device));
                block_in = block_out;
                if c.attn_resolutions.contains(&res) {
                    attn.push(AttnBlock::new(block_in, device));
                }
            }
            let downsample = (i + 1 != levels).then(|| Downsample::new(block_in, device));
            if downsample.is_some() {
                res /= 2;
            }
            down.push(DownLevel { block, attn, downsample });
        }
        Self {
            conv_in: conv(c.in_channels, base, 3, device),
            down,
            mid: Mid::new(block_in, device),
            norm_out: normalize(block_in, device),
            conv_out: conv(block_in, c.latent_channels, 3, device),
        }
    }

    /// `x`: pixels in [-1, 1], `[batch, channels, R, R]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.conv_in.forward(x);
        for level in &self.down {
            for (i, block) in level.block.iter().enumerate() {
                h = block.forward(h);
                if let Some(attn) = level.attn.get(i) {
                    h = attn.forward(h);
                }
            }
            if let Some(down) = &level.downsample {
                h = down.forward(h);
            }
        }
        let h = self.mid.forward(h);
        self.conv_out.forward(silu(self.norm_out.forward(h)))
    }
}
