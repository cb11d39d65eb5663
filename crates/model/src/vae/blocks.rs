//! Building blocks of the VAE: pre-activation residual blocks and the resampling convs.

use crate::ops::{pad_for_downsample, upsample_hw};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::silu;

/// 3×3×3 convolution keeping the size (mixes each slice with its neighbours).
pub(crate) fn conv3(cin: usize, cout: usize, device: &Device) -> Conv3d {
    Conv3dConfig::new([cin, cout], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .init(device)
}

/// 3×3×3 convolution with stride (1, 2, 2) on an input padded by `pad_for_downsample`.
pub(crate) fn down_conv(ch: usize, device: &Device) -> Conv3d {
    Conv3dConfig::new([ch, ch], [3, 3, 3])
        .with_stride([1, 2, 2])
        .init(device)
}

/// Halves H and W (slices kept).
pub(crate) fn downsample(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    conv.forward(pad_for_downsample(x))
}

/// Doubles H and W by nearest-neighbour repetition, then convolves (no checkerboard).
pub(crate) fn upsample(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    conv.forward(upsample_hw(x, 2))
}

/// Appends the microstructure features to `x` along the channels. The networks are built
/// for `expected` feature channels and their callers (trainer, predictor) pass features
/// exactly when the config has them, so a mismatch is a bug, not a user error.
pub(crate) fn with_geometry(
    x: Tensor<5>,
    geometry: Option<Tensor<5>>,
    expected: usize,
) -> Tensor<5> {
    match geometry {
        Some(g) => {
            assert_eq!(
                g.dims()[1],
                expected,
                "geometry channels differ from the VAE config"
            );
            Tensor::cat(vec![x, g], 1)
        }
        None => {
            assert_eq!(expected, 0, "this VAE needs the microstructure features");
            x
        }
    }
}

/// GroupNorm → SiLU → conv, twice, plus a 1×1×1 projection of the input when the
/// channel count changes (He et al. 2016, pre-activation form).
#[derive(Module, Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv3d,
    norm2: GroupNorm,
    conv2: Conv3d,
    skip: Option<Conv3d>,
}

impl ResBlock {
    pub fn new(cin: usize, cout: usize, groups: usize, device: &Device) -> Self {
        Self {
            norm1: GroupNormConfig::new(groups, cin).init(device),
            conv1: conv3(cin, cout, device),
            norm2: GroupNormConfig::new(groups, cout).init(device),
            conv2: conv3(cout, cout, device),
            skip: (cin != cout).then(|| Conv3dConfig::new([cin, cout], [1, 1, 1]).init(device)),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let skip = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        h + skip
    }
}
