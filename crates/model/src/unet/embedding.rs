//! Diffusion-time embedding: the sinusoidal position code of Vaswani et al., "Attention Is
//! All You Need" (NeurIPS 2017), as used for timesteps by Ho et al., "Denoising Diffusion
//! Probabilistic Models" (NeurIPS 2020), followed by a two-layer MLP. The formula matches
//! the reference U-Net's (sines first, raw integer step t) so its checkpoints' conventions
//! carry over.

use crate::precision::like;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::silu;

/// `[sin(t·f_0) … sin(t·f_{h−1}), cos(t·f_0) … cos(t·f_{h−1})]` with h = dim/2 and
/// f_i = exp(−ln(10000)·i/(h − 1)), sines first; `t` holds one (float) timestep per sample.
/// `dim` must be even and ≥ 4 (checked by `UNetConfig::validate`).
pub(super) fn sinusoidal_embedding(t: Tensor<1>, dim: usize) -> Tensor<2> {
    let half = dim / 2;
    // Computed in f64 and rounded once, so only the product t·f carries f32 error.
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10_000f64.ln()) * i as f64 / (half - 1) as f64).exp() as f32)
        .collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &t.device());
    let [b] = t.dims();
    let args =
        t.unsqueeze_dim::<2>(1).expand([b, half]) * freqs.unsqueeze_dim::<2>(0).expand([b, half]);
    Tensor::cat(vec![args.clone().sin(), args.cos()], 1)
}

/// Sinusoidal code → Linear → SiLU → Linear, giving the `(B, mlp_dim)` vector that every
/// residual block projects and adds to its features.
#[derive(Module, Debug)]
pub struct TimeEmbedding {
    linear1: Linear,
    linear2: Linear,
    dim: usize,
}

impl TimeEmbedding {
    pub(super) fn new(dim: usize, mlp_dim: usize, device: &Device) -> Self {
        Self {
            linear1: LinearConfig::new(dim, mlp_dim).init(device),
            linear2: LinearConfig::new(mlp_dim, mlp_dim).init(device),
            dim,
        }
    }

    pub fn forward(&self, t: Tensor<1>) -> Tensor<2> {
        // The code stays f32 (bf16 cannot even hold t = 999); the MLP runs in its weights'
        // type.
        let t = t.cast(FloatDType::F32);
        let e = like(sinusoidal_embedding(t, self.dim), &self.linear1.weight);
        self.linear2.forward(silu(self.linear1.forward(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        // dim 8: h = 4, f = 10000^(−i/3) = 1, 0.0464159, 0.00215443, 1e−4 (i = 0…3).
        // Values by hand: sin/cos of t·f for t = 0, 1, 500.
        let dev = Device::flex();
        let t = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 1.0, 500.0], [3]), &dev);
        let e: Vec<f32> = sinusoidal_embedding(t, 8)
            .into_data()
            .try_into_vec()
            .unwrap();
        #[rustfmt::skip]
        let expect: [f64; 24] = [
            0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0,
            0.841_470_98, 0.046_399_22, 0.002_154_433, 1.0e-4,
            0.540_302_3, 0.998_922_98, 0.999_997_68, 1.0,
            -0.467_771_8, -0.937_993_36, 0.880_642_85, 0.049_979_17,
            -0.883_849_27, -0.346_653_23, 0.473_780_72, 0.998_750_26,
        ];
        for (i, (a, b)) in e.iter().zip(expect).enumerate() {
            assert!((f64::from(*a) - b).abs() < 2e-5, "element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn mlp_output_has_the_mlp_width() {
        let dev = Device::flex();
        let emb = TimeEmbedding::new(16, 24, &dev);
        let t = Tensor::<1>::from_data(TensorData::new(vec![3.0f32, 7.0], [2]), &dev);
        assert_eq!(emb.forward(t).dims(), [2, 24]);
    }
}
