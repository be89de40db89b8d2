//! Rotary position embedding in the half-split ("rotate_half") layout of HF checkpoints:
//! the first and second halves of each head form the rotated pairs.

use burn::tensor::{Device, Int, Tensor};

/// Cosines and sines for a run of positions, each `[seq, head_dim]`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl RopeTable {
    /// The table for positions `start..start + len`.
    pub fn new(theta: f64, head_dim: usize, start: usize, len: usize, device: &Device) -> Self {
        let half = head_dim / 2;
        // As HF: inv_freq = 1 / theta^(2i / head_dim), in f32.
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        let inv_freq = Tensor::<1>::from_floats(inv_freq.as_slice(), device).reshape([1, half]);
        let pos = Tensor::<1, Int>::arange(start as i64..(start + len) as i64, device).float().reshape([len, 1]);
        // The outer product by broadcasting, not as a matmul: cubecl (CUDA) runs f32 matmuls on
        // TF32 tensor cores, which round inv_freq to 11 significant bits and would turn the angle
        // at position p by up to p·2⁻¹¹ rad (0.5 rad at p = 1024). A product is exact everywhere.
        let freqs = pos * inv_freq;
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 1);
        Self { cos: emb.clone().cos(), sin: emb.sin() }
    }

    /// Rotates `x`: `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let dtype = x.dtype();
        x * self.cos.clone().cast(dtype).unsqueeze::<4>() + rotated * self.sin.clone().cast(dtype).unsqueeze::<4>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn table_is_hf_f32_angles_at_long_positions() {
        // HF: angle = f32(position) * inv_freq, one f32 product, then cos and sin.
        let (theta, hd, start, len) = (10_000.0f64, 64, 4000, 96);
        let table = RopeTable::new(theta, hd, start, len, &Device::flex());
        let (cos, sin) = (values(table.cos), values(table.sin));
        let mut worst = 0.0f32;
        for p in 0..len {
            for j in 0..hd {
                let i = j % (hd / 2);
                let inv_freq = 1.0 / (theta as f32).powf((2 * i) as f32 / hd as f32);
                let angle = (start + p) as f32 * inv_freq;
                worst = worst.max((cos[p * hd + j] - angle.cos()).abs()).max((sin[p * hd + j] - angle.sin()).abs());
            }
        }
        assert!(worst <= 1e-6, "largest difference from the f32 formula: {worst:e}");
    }

    #[test]
    fn rotated_dot_products_depend_on_the_offset_only() {
        // q at position m and k at position n: <R(m) q, R(n) k> is a function of m - n.
        let device = Device::flex();
        let hd = 16;
        let q: Vec<f32> = (0..hd).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
        let k: Vec<f32> = (0..hd).map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.2).collect();
        let at = |v: &[f32], pos: usize| {
            let x = Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 1, 1, hd]), &device);
            RopeTable::new(10_000.0, hd, pos, 1, &device).apply(x).reshape([hd])
        };
        let dot = |m: usize, n: usize| at(&q, m).mul(at(&k, n)).sum().into_scalar::<f32>();
        let near = dot(5, 2);
        for shift in [10, 100, 1000] {
            let far = dot(5 + shift, 2 + shift);
            assert!((far - near).abs() < 1e-3, "shift {shift}: {far} vs {near}");
        }
        // Position 0 is the identity.
        let zero = at(&q, 0).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(zero, q);
    }
}
