//! VAE decoder: latent (B, Cz, S, h, w) → field (B, C, S, h·f, w·f), linear output.

use super::blocks::{ResBlock, conv3, upsample};
use super::config::VaeConfig;
use burn::nn::conv::Conv3d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;

/// One resolution level, deepest first: residual blocks, then an upsampling conv to the
/// next (shallower) width except at the last level.
#[derive(Module, Debug)]
pub struct DecoderLevel {
    blocks: Vec<ResBlock>,
    up: Option<Conv3d>,
}

#[derive(Module, Debug)]
pub struct Decoder {
    conv_in: Conv3d,
    levels: Vec<DecoderLevel>,
    norm_out: GroupNorm,
    conv_out: Conv3d,
}

impl Decoder {
    pub(crate) fn new(cfg: &VaeConfig, device: &Device) -> Self {
        let rev: Vec<usize> = cfg.channels.iter().rev().copied().collect();
        let levels = rev
            .iter()
            .enumerate()
            .map(|(i, &c)| DecoderLevel {
                blocks: (0..cfg.blocks_per_level)
                    .map(|_| ResBlock::new(c, c, cfg.groups, device))
                    .collect(),
                up: rev.get(i + 1).map(|&next| conv3(c, next, device)),
            })
            .collect();
        let first = cfg.channels[0];
        Self {
            conv_in: conv3(cfg.latent_channels, rev[0], device),
            levels,
            norm_out: GroupNormConfig::new(cfg.groups, first).init(device),
            conv_out: conv3(first, cfg.in_channels, device),
        }
    }

    pub fn forward(&self, z: Tensor<5>) -> Tensor<5> {
        let mut h = self.conv_in.forward(z);
        for level in &self.levels {
            for block in &level.blocks {
                h = block.forward(h);
            }
            if let Some(conv) = &level.up {
                h = upsample(conv, h);
            }
        }
        self.conv_out.forward(silu(self.norm_out.forward(h)))
    }
}

#[cfg(test)]
mod tests {
    use crate::vae::VaeConfig;
    use burn::prelude::*;
    use burn::tensor::Distribution;

    #[test]
    fn shapes_follow_the_latent_contract() {
        let dev = Device::flex();
        dev.seed(1);
        let cfg = VaeConfig::new();
        let vae = cfg.init(&dev).unwrap();
        let x = Tensor::<5>::random([2, 3, 5, 16, 24], Distribution::Normal(0.0, 1.0), &dev);
        let out = vae.forward(x, true);
        assert_eq!(out.mu.dims(), [2, 8, 5, 4, 6]);
        assert_eq!(out.logvar.dims(), [2, 8, 5, 4, 6]);
        assert_eq!(out.reconstruction.dims(), [2, 3, 5, 16, 24]);
        let lv: Vec<f32> = out.logvar.into_data().try_into_vec().unwrap();
        assert!(lv.iter().all(|v| v.abs() <= 10.0));
    }

    #[test]
    fn slices_are_coupled_by_the_3d_convolutions() {
        // Changing one slice of the input changes the latent of its neighbour slice.
        let dev = Device::flex();
        dev.seed(2);
        let vae = VaeConfig::new().init(&dev).unwrap();
        let x = Tensor::<5>::random([1, 3, 4, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let mut y = x.clone();
        y = y.slice_assign(
            [0..1, 0..3, 2..3, 0..8, 0..8],
            Tensor::<5>::ones([1, 3, 1, 8, 8], &dev),
        );
        let (a, _) = vae.encoder.forward(x);
        let (b, _) = vae.encoder.forward(y);
        let diff = |s: usize| {
            (a.clone().narrow(2, s, 1) - b.clone().narrow(2, s, 1))
                .abs()
                .sum()
                .into_scalar::<f32>()
        };
        assert!(diff(1) > 0.0 && diff(3) > 0.0);
    }
}
