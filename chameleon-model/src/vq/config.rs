//! Shape of the VQGAN image tokenizer (taming-transformers layout, as Chameleon uses it).

use burn::config::Config;

/// Configuration of the VQ-VAE image tokenizer. Field names follow HF's `ChameleonVQVAEConfig`.
///
/// Chameleon's released tokenizer: resolution 512, base 128, multipliers [1, 1, 2, 2, 4],
/// 2 res-blocks, no attention outside the middle, latent 256, embed 256, 8192 codes: a
/// 512×512 image becomes 32×32 = 1024 codes.
#[derive(Config, Debug, PartialEq)]
pub struct VqConfig {
    /// Side of the square input image, in pixels.
    #[config(default = 512)]
    pub resolution: usize,
    /// Image channels (3 for RGB).
    #[config(default = 3)]
    pub in_channels: usize,
    /// Channels of the first level; every level's channels must be a multiple of 32 (GroupNorm).
    #[config(default = 128)]
    pub base_channels: usize,
    /// Channel multiplier of each level; `len - 1` halvings of the resolution.
    #[config(default = "vec![1, 1, 2, 2, 4]")]
    pub channel_multiplier: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more).
    #[config(default = 2)]
    pub num_res_blocks: usize,
    /// Resolutions (feature-map sides) at which attention blocks follow the residual blocks.
    #[config(default = "vec![]")]
    pub attn_resolutions: Vec<usize>,
    /// Channels of the encoder output / decoder input.
    #[config(default = 256)]
    pub latent_channels: usize,
    /// Width of a codebook vector.
    #[config(default = 256)]
    pub embed_dim: usize,
    /// Number of codebook entries.
    #[config(default = 8192)]
    pub num_embeddings: usize,
    /// Weight of the commitment term of the legacy VQ loss.
    #[config(default = 0.25)]
    pub beta: f64,
}

impl VqConfig {
    /// The largest value each size may take: about 16× Chameleon's tokenizer in every direction,
    /// far below what would exhaust memory by itself, so that a corrupt or hostile
    /// `vq_config.json` is refused before anything is allocated.
    pub const LIMITS: [(&'static str, usize); 9] = [
        ("resolution", 8192),
        ("in_channels", 16),
        ("base_channels", 2048),
        ("channel_multiplier (levels)", 8),
        ("channel_multiplier (largest)", 64),
        ("num_res_blocks", 32),
        ("latent_channels", 4096),
        ("embed_dim", 4096),
        ("num_embeddings", 1 << 20),
    ];

    /// Side of the latent grid: `resolution / 2^(levels - 1)`.
    pub fn latent_size(&self) -> usize {
        self.resolution >> (self.channel_multiplier.len().saturating_sub(1))
    }

    /// An upper bound on the parameters of encoder and decoder: every 3×3 convolution counted at
    /// the widest level's channels. Chameleon's tokenizer: 2.0e8 by this bound.
    pub fn params_bound(&self) -> u128 {
        let widest = self.base_channels as u128 * self.channel_multiplier.iter().max().copied().unwrap_or(1) as u128;
        let convs_per_level = 2 * (self.num_res_blocks as u128 + 1) + 1;
        let levels = self.channel_multiplier.len() as u128 + 1;
        2 * levels * convs_per_level * 9 * widest * widest
            + 2 * 9 * widest * self.latent_channels.max(self.in_channels) as u128
            + self.num_embeddings as u128 * self.embed_dim as u128
    }

    /// The most parameters a tokenizer may have by [`VqConfig::params_bound`]: 2^31.
    pub const MAX_PARAMS: u128 = 1 << 31;

    /// Codes per image: `latent_size²`.
    pub fn codes_per_image(&self) -> usize {
        self.latent_size() * self.latent_size()
    }

    /// Checks that the config builds a network of a sane size (within [`VqConfig::LIMITS`]).
    /// The message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.channel_multiplier.is_empty() || self.channel_multiplier.contains(&0) {
            return Err("`channel_multiplier` must be a non-empty list of positive numbers".into());
        }
        let levels = self.channel_multiplier.len();
        let widest = self.channel_multiplier.iter().max().copied().unwrap_or(1);
        for (name, v) in [
            ("resolution", self.resolution),
            ("in_channels", self.in_channels),
            ("base_channels", self.base_channels),
            ("channel_multiplier (levels)", levels),
            ("channel_multiplier (largest)", widest),
            ("num_res_blocks", self.num_res_blocks),
            ("latent_channels", self.latent_channels),
            ("embed_dim", self.embed_dim),
            ("num_embeddings", self.num_embeddings),
        ] {
            let (_, limit) = Self::LIMITS.iter().find(|(n, _)| *n == name).expect("every field has a limit");
            if v > *limit {
                return Err(format!("`{name}` = {v} is beyond this toolkit's limit of {limit}"));
            }
        }
        for (name, v) in [
            ("in_channels", self.in_channels),
            ("num_res_blocks", self.num_res_blocks),
            ("latent_channels", self.latent_channels),
            ("embed_dim", self.embed_dim),
            ("num_embeddings", self.num_embeddings),
        ] {
            if v == 0 {
                return Err(format!("`{name}` must be at least 1"));
            }
        }
        if self.params_bound() > Self::MAX_PARAMS {
            return Err(format!(
                "the tokenizer would have up to {:.2e} parameters, beyond this toolkit's limit of {:.2e}",
                self.params_bound() as f64,
                Self::MAX_PARAMS as f64
            ));
        }
        let halvings = self.channel_multiplier.len() - 1;
        if self.resolution == 0 || !self.resolution.is_multiple_of(1 << halvings) {
            return Err(format!(
                "`resolution` = {} must be a positive multiple of 2^{halvings} (one halving per level after the first)",
                self.resolution
            ));
        }
        for m in &self.channel_multiplier {
            if !(self.base_channels * m).is_multiple_of(32) || self.base_channels == 0 {
                return Err(format!(
                    "`base_channels` × multiplier = {} is not a positive multiple of 32 (GroupNorm uses 32 groups)",
                    self.base_channels * m
                ));
            }
        }
        if !self.latent_channels.is_multiple_of(32) {
            return Err(format!("`latent_channels` = {} must be a multiple of 32", self.latent_channels));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chameleon_default_gives_1024_codes_for_512_pixels() {
        let c = VqConfig::new();
        assert_eq!(c.latent_size(), 32);
        assert_eq!(c.codes_per_image(), 1024);
        assert!(c.validate().is_ok());
        assert!((1.9e8..2.1e8).contains(&(c.params_bound() as f64)), "{}", c.params_bound());
        let bad = VqConfig::new().with_base_channels(48);
        assert!(bad.validate().unwrap_err().contains("base_channels"));
        let bad = VqConfig::new().with_resolution(100);
        assert!(bad.validate().unwrap_err().contains("resolution"));
    }

    #[test]
    fn sizes_beyond_the_limits_are_refused_before_any_arithmetic_overflows() {
        // 69 levels once overflowed `1 << halvings`; 2^20 pixels or 10^8 blocks aborted on allocation.
        let cases = [
            (VqConfig::new().with_channel_multiplier(vec![1; 69]), "channel_multiplier (levels)"),
            (VqConfig::new().with_resolution(1 << 20), "resolution"),
            (VqConfig::new().with_num_res_blocks(100_000_000), "num_res_blocks"),
            (VqConfig::new().with_base_channels(usize::MAX / 2), "base_channels"),
            (VqConfig::new().with_channel_multiplier(vec![1, usize::MAX]), "channel_multiplier (largest)"),
            // Each size within its limit, together 6e11 parameters: refused as a whole.
            (VqConfig::new().with_base_channels(2048).with_channel_multiplier(vec![64; 8]), "parameters"),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(field) && err.contains("limit"), "{field}: {err}");
        }
    }
}
