//! Building blocks of the denoiser: per-slice GroupNorm, the time-conditioned residual
//! block of Ho et al. (2020) / Dhariwal & Nichol, "Diffusion Models Beat GANs on Image
//! Synthesis" (NeurIPS 2021), and H,W-only resampling that keeps every slice.

use super::attention::SelfAttention;
use crate::ops::upsample_hw;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{
    Dropout, DropoutConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig3d,
};
use burn::prelude::*;
use burn::tensor::activation::silu;

/// `slice_kernel`×3×3 convolution keeping the size; a slice kernel of 3 mixes each slice
/// with its neighbours, 1 keeps slices independent (the reference's 2D denoiser).
pub(super) fn conv_config(cin: usize, cout: usize, slice_kernel: usize) -> Conv3dConfig {
    Conv3dConfig::new([cin, cout], [slice_kernel, 3, 3]).with_padding(PaddingConfig3d::Explicit(
        slice_kernel / 2,
        1,
        1,
    ))
}

pub(super) fn conv(cin: usize, cout: usize, slice_kernel: usize, device: &Device) -> Conv3d {
    conv_config(cin, cout, slice_kernel).init(device)
}

/// GroupNorm with statistics over each slice's (C/G, H, W) rather than the whole volume,
/// as the reference's 2D GroupNorm did. Slices then meet only in the `slice_kernel`
/// convolutions and in attention, so `slice_kernel = 1` without attention is exactly a
/// per-slice network; the un-normalised residual stream still carries the relative
/// scale of the slices.
#[derive(Module, Debug)]
pub struct SliceNorm {
    norm: GroupNorm,
}

impl SliceNorm {
    pub(super) fn new(groups: usize, channels: usize, device: &Device) -> Self {
        Self {
            norm: GroupNormConfig::new(groups, channels).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, c, s, h, w] = x.dims();
        let per_slice = x.swap_dims(1, 2).reshape([b * s, c, h, w]);
        self.norm
            .forward(per_slice)
            .reshape([b, s, c, h, w])
            .swap_dims(1, 2)
    }
}

/// Pre-activation residual block: norm → SiLU → conv, + projected time embedding,
/// norm → SiLU → dropout → conv, plus a 1×1×1 projection of the input when the channel
/// count changes (the ADM block without its scale-shift option).
#[derive(Module, Debug)]
pub struct ResBlock {
    norm1: SliceNorm,
    conv1: Conv3d,
    time_proj: Option<Linear>,
    norm2: SliceNorm,
    dropout: Dropout,
    conv2: Conv3d,
    skip: Option<Conv3d>,
}

/// Sizes shared by every block of one network.
pub(super) struct BlockShape {
    pub groups: usize,
    pub slice_kernel: usize,
    /// Width of the time embedding, `None` for a network without time input.
    pub time_dim: Option<usize>,
    pub dropout: f64,
}

impl ResBlock {
    pub(super) fn new(cin: usize, cout: usize, shape: &BlockShape, device: &Device) -> Self {
        let k = shape.slice_kernel;
        Self {
            norm1: SliceNorm::new(shape.groups, cin, device),
            conv1: conv(cin, cout, k, device),
            time_proj: shape
                .time_dim
                .map(|d| LinearConfig::new(d, cout).init(device)),
            norm2: SliceNorm::new(shape.groups, cout, device),
            dropout: DropoutConfig::new(shape.dropout).init(),
            conv2: conv(cout, cout, k, device),
            skip: (cin != cout).then(|| Conv3dConfig::new([cin, cout], [1, 1, 1]).init(device)),
        }
    }

    /// `time` is SiLU(time embedding), `(B, time_dim)`; it must be given exactly when the
    /// block was built with a time projection (the network guarantees this).
    pub fn forward(&self, x: Tensor<5>, time: Option<&Tensor<2>>) -> Tensor<5> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(time)) = (&self.time_proj, time) {
            let [b, c, s, hh, ww] = h.dims();
            let bias = proj.forward(time.clone()).reshape([b, c, 1, 1, 1]);
            h = h + bias.expand([b, c, s, hh, ww]);
        }
        let h = self
            .conv2
            .forward(self.dropout.forward(silu(self.norm2.forward(h))));
        let skip = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        h + skip
    }
}

/// A residual block, optionally followed by self-attention over all S·H·W positions.
#[derive(Module, Debug)]
pub struct Stage {
    res: ResBlock,
    attn: Option<SelfAttention>,
}

impl Stage {
    pub(super) fn new(
        cin: usize,
        cout: usize,
        heads: Option<usize>,
        shape: &BlockShape,
        device: &Device,
    ) -> Self {
        Self {
            res: ResBlock::new(cin, cout, shape, device),
            attn: heads.map(|n| SelfAttention::new(cout, n, shape.groups, device)),
        }
    }

    pub fn forward(&self, x: Tensor<5>, time: Option<&Tensor<2>>) -> Tensor<5> {
        let h = self.res.forward(x, time);
        match &self.attn {
            Some(attn) => attn.forward(h),
            None => h,
        }
    }
}

/// 2×2 average pooling in H and W, slice by slice. Chosen over the VAE's strided conv:
/// it has no parameters and no padded border (every output is the mean of exactly four
/// inputs), it cannot mix slices whatever `slice_kernel` is, and the next residual
/// block's convolutions do the learning (the reference used parameter-free max-pooling).
#[derive(Module, Debug)]
pub struct Downsample {
    pool: AvgPool2d,
}

impl Downsample {
    pub(super) fn new() -> Self {
        Self {
            pool: AvgPool2dConfig::new([2, 2]).init(),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, c, s, h, w] = x.dims();
        self.pool
            .forward(x.reshape([b, c * s, h, w]))
            .reshape([b, c, s, h / 2, w / 2])
    }
}

/// Nearest-neighbour ×2 in H and W, then a convolution to the shallower width: no
/// transposed-convolution checkerboard (Odena et al., Distill 2016).
#[derive(Module, Debug)]
pub struct Upsample {
    conv: Conv3d,
}

impl Upsample {
    pub(super) fn new(cin: usize, cout: usize, slice_kernel: usize, device: &Device) -> Self {
        Self {
            conv: conv(cin, cout, slice_kernel, device),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        self.conv.forward(upsample_hw(x, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn slice_norm_equals_group_norm_of_each_slice_alone() {
        let dev = Device::flex();
        let x = Tensor::<5>::random([2, 4, 3, 5, 6], Distribution::Normal(1.0, 2.0), &dev);
        let norm = SliceNorm::new(2, 4, &dev);
        let y = norm.forward(x.clone());
        for s in 0..3 {
            let alone = norm
                .norm
                .forward(x.clone().narrow(2, s, 1).reshape([2, 4, 5, 6]));
            let got = y.clone().narrow(2, s, 1).reshape([2, 4, 5, 6]);
            let d = (alone - got.clone()).abs().max().into_scalar::<f32>();
            assert!(d < 1e-5, "slice {s}: {d}");
            // Hand check: unit affine at init, so each (sample, group) is standardised.
            let g = got.reshape([2, 2, 60]);
            let mean: Vec<f32> = g.clone().mean_dim(2).into_data().try_into_vec().unwrap();
            let var: Vec<f32> = g.var_bias(2).into_data().try_into_vec().unwrap();
            assert!(mean.iter().all(|m| m.abs() < 1e-5), "{mean:?}");
            assert!(var.iter().all(|v| (v - 1.0).abs() < 1e-3), "{var:?}");
        }
    }

    #[test]
    fn downsampling_averages_two_by_two_blocks_per_slice() {
        let dev = Device::flex();
        let v: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let x = Tensor::<5>::from_data(TensorData::new(v, [1, 1, 2, 4, 4]), &dev);
        let y: Vec<f32> = Downsample::new()
            .forward(x)
            .into_data()
            .try_into_vec()
            .unwrap();
        // Slice 0 rows 0..4 = 0..4, 4..8, …: block (0,0) = (0+1+4+5)/4 = 2.5, etc.
        assert_eq!(y, vec![2.5, 4.5, 10.5, 12.5, 18.5, 20.5, 26.5, 28.5]);
    }

    #[test]
    fn time_embedding_reaches_the_block_output() {
        // Two identical samples: different time vectors must give different outputs, and
        // no time at all identical ones (so the difference comes from the projection).
        let dev = Device::flex();
        let shape = BlockShape {
            groups: 2,
            slice_kernel: 3,
            time_dim: Some(5),
            dropout: 0.0,
        };
        let block = ResBlock::new(4, 6, &shape, &dev);
        let x = Tensor::<5>::random([1, 4, 3, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
        let x2 = Tensor::cat(vec![x.clone(), x], 0);
        let gap = |y: Tensor<5>| {
            (y.clone().narrow(0, 0, 1) - y.narrow(0, 1, 1))
                .abs()
                .max()
                .into_scalar::<f32>()
        };
        let time = Tensor::<2>::random([2, 5], Distribution::Normal(0.0, 1.0), &dev);
        let y = block.forward(x2.clone(), Some(&time));
        assert_eq!(y.dims(), [2, 6, 3, 4, 4]);
        assert!(gap(y) > 1e-4);
        assert_eq!(gap(block.forward(x2, None)), 0.0);
    }
}
