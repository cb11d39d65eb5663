//! Self-attention over every position of the volume, S·H·W tokens of C channels, so it
//! couples all slices (the reference's 2D U-Net attended within one slice only). Layout as
//! the reference's `SelfAttention` and ADM (Dhariwal & Nichol 2021): norm → multi-head
//! attention (Vaswani et al. 2017) → zero-initialised output projection → residual, so
//! each block starts as the identity.

use super::blocks::SliceNorm;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct SelfAttention {
    norm: SliceNorm,
    attn: MultiHeadAttention,
    proj: Linear,
}

impl SelfAttention {
    /// `heads` must divide `channels` (checked by `UNetConfig::validate`). No dropout on
    /// the attention weights, as in the reference.
    pub(super) fn new(channels: usize, heads: usize, groups: usize, device: &Device) -> Self {
        Self {
            norm: SliceNorm::new(groups, channels, device),
            attn: MultiHeadAttentionConfig::new(channels, heads)
                .with_dropout(0.0)
                .init(device),
            proj: LinearConfig::new(channels, channels)
                .with_initializer(Initializer::Zeros)
                .init(device),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, c, s, h, w] = x.dims();
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([b, c, s * h * w])
            .swap_dims(1, 2);
        let context = self.attn.forward(MhaInput::self_attn(tokens)).context;
        let out = self
            .proj
            .forward(context)
            .swap_dims(1, 2)
            .reshape([b, c, s, h, w]);
        x + out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn starts_as_the_identity() {
        let dev = Device::flex();
        let attn = SelfAttention::new(8, 2, 4, &dev);
        let x = Tensor::<5>::random([2, 8, 3, 2, 4], Distribution::Normal(0.0, 1.0), &dev);
        let d = (attn.forward(x.clone()) - x)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn every_position_sees_every_slice() {
        // With a non-zero projection, changing one voxel of slice 0 changes every
        // output position of slice 2 (softmax weights are all positive).
        let dev = Device::flex();
        let mut attn = SelfAttention::new(8, 2, 4, &dev);
        attn.proj = LinearConfig::new(8, 8).init(&dev);
        let x = Tensor::<5>::random([1, 8, 3, 2, 2], Distribution::Normal(0.0, 1.0), &dev);
        let bump = Tensor::<5>::ones([1, 8, 1, 1, 1], &dev);
        let y = x.clone().slice_assign([0..1, 0..8, 0..1, 0..1, 0..1], bump);
        let diff = (attn.forward(x) - attn.forward(y))
            .narrow(2, 2, 1)
            .abs()
            .sum_dim(1)
            .reshape([4]);
        let diff: Vec<f32> = diff.into_data().try_into_vec().unwrap();
        assert!(diff.iter().all(|&d| d > 0.0), "{diff:?}");
    }
}
