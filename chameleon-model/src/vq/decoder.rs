//! The VQGAN decoder of Meta's `vqgan.py` (HF's Chameleon has none): latent -> image.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::VqConfig;
use super::blocks::{AttnBlock, ResnetBlock, Upsample, conv, normalize};
use super::encoder::Mid;

/// One resolution level of the decoder (`decoder.up.N`, indexed like the encoder's levels).
#[derive(Module, Debug)]
pub struct UpLevel {
    /// `num_res_blocks + 1` residual blocks.
    pub block: Vec<ResnetBlock>,
    /// Attention after each block (empty, or one per block).
    pub attn: Vec<AttnBlock>,
    /// Doubling at the end of every level but level 0.
    pub upsample: Option<Upsample>,
}

/// The decoder (`decoder.*`).
#[derive(Module, Debug)]
pub struct Decoder {
    /// Latent to the lowest level's channels.
    pub conv_in: Conv2d,
    /// Middle.
    pub mid: Mid,
    /// Levels in encoder order (`up.0` is the highest resolution); run from last to first.
    pub up: Vec<UpLevel>,
    /// Final norm.
    pub norm_out: GroupNorm,
    /// To pixels.
    pub conv_out: Conv2d,
}

impl Decoder {
    /// A fresh decoder.
    pub fn new(c: &VqConfig, device: &Device) -> Self {
        let base = c.base_channels;
        let levels = c.channel_multiplier.len();
        let mut block_in = base * c.channel_multiplier[levels - 1];
        let mut res = c.latent_size();
        let conv_in = conv(c.latent_channels, block_in, 3, device);
        let mid = Mid::new(block_in, device);
        let mut up: Vec<UpLevel> = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let block_out = base * c.channel_multiplier[i];
            let mut block = Vec::new();
            let mut attn = Vec::new();
            for _ in 0..=c.num_res_blocks {
                block.push(ResnetBlock::new(block_in, block_out, device));
                block_in = block_out;
                if c.attn_resolutions.contains(&res) {
                    attn.push(AttnBlock::new(block_in, device));
                }
            }
            let upsample = (i != 0).then(|| Upsample::new(block_in, device));
            if upsample.is_some() {
                res *= 2;
            }
            up.insert(0, UpLevel { block, attn, upsample });
        }
        Self {
            conv_in,
            mid,
            up,
            norm_out: normalize(block_in, device),
            conv_out: conv(block_in, c.in_channels, 3, device),
        }
    }

    /// `z`: `[batch, latent, r, r]` -> pixels `[batch, channels, R, R]` (unclamped).
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut h = self.mid.forward(self.conv_in.forward(z));
        for level in self.up.iter().rev() {
            for (i, block) in level.block.iter().enumerate() {
                h = block.forward(h);
                if let Some(attn) = level.attn.get(i) {
                    h = attn.forward(h);
                }
            }
            if let Some(up) = &level.upsample {
                h = up.forward(h);
            }
        }
        self.conv_out.forward(silu(self.norm_out.forward(h)))
    }
}
