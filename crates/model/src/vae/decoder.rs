//! VAE decoder: latent (B, Cz, S, h, w) → field (B, C, S, h·f, w·f), linear output.

use super::blocks::{ResBlock, conv3, upsample, with_geometry};
use super::config::VaeConfig;
use crate::ops::{avg_pool_hw, depth_to_space, space_to_depth};
use crate::precision::like;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;

/// One resolution level, deepest first: residual blocks, then an upsampling conv to the
/// next (shallower) width except at the last level.
#[derive(Module, Debug)]
pub struct DecoderLevel {
    /// 1×1×1 convolution mixing the level's features with the microstructure features.
    inject: Option<Conv3d>,
    blocks: Vec<ResBlock>,
    up: Option<Conv3d>,
}

#[derive(Module, Debug)]
pub struct Decoder {
    conv_in: Conv3d,
    levels: Vec<DecoderLevel>,
    norm_out: GroupNorm,
    conv_out: Conv3d,
    geometry_channels: usize,
    patch: usize,
}

impl Decoder {
    pub(crate) fn new(cfg: &VaeConfig, device: &Device) -> Self {
        let rev: Vec<usize> = cfg.channels.iter().rev().copied().collect();
        let levels = rev
            .iter()
            .enumerate()
            .map(|(i, &c)| DecoderLevel {
                inject: (cfg.geometry_channels > 0).then(|| {
                    let g = cfg.geometry_channels * cfg.patch() * cfg.patch();
                    Conv3dConfig::new([c + g, c], [1, 1, 1]).init(device)
                }),
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
            conv_out: conv3(first, cfg.in_channels * cfg.patch() * cfg.patch(), device),
            geometry_channels: cfg.geometry_channels,
            patch: cfg.patch(),
        }
    }

    /// `geometry` holds the full-resolution microstructure features when the config has
    /// geometry channels; each level sees them averaged to its own resolution.
    /// Computes in the weights' float type (see [`crate::precision`]) and returns the
    /// input's.
    pub fn forward(&self, z: Tensor<5>, geometry: Option<Tensor<5>>) -> Tensor<5> {
        let dtype = z.dtype();
        let weights = &self.conv_in.weight;
        let geometry = geometry.map(|g| like(g, weights));
        let mut h = self.conv_in.forward(like(z, weights));
        let levels = self.levels.len();
        let p = self.patch;
        for (i, level) in self.levels.iter().enumerate() {
            // Averaged to p× the level's resolution, then folded to it: the finest level
            // sees every pixel of the microstructure.
            let factor = 1 << (levels - 1 - i);
            let g = geometry
                .clone()
                .map(|g| space_to_depth(avg_pool_hw(g, factor), p));
            h = with_geometry(h, g, self.geometry_channels * p * p);
            if let Some(conv) = &level.inject {
                h = conv.forward(h);
            }
            for block in &level.blocks {
                h = block.forward(h);
            }
            if let Some(conv) = &level.up {
                h = upsample(conv, h);
            }
        }
        let out = self.conv_out.forward(silu(self.norm_out.forward(h)));
        depth_to_space(out, p).cast(dtype)
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
        let g = Tensor::<5>::random([2, 2, 5, 16, 24], Distribution::Uniform(0.0, 1.0), &dev);
        let shape = cfg.latent_shape(x.dims());
        assert_eq!(shape, [2, 8, 5, 4, 6]);
        let out = vae.forward(x, Some(g), Some(crate::vae::standard_noise(shape, &dev)));
        assert_eq!(out.mu.dims(), shape);
        assert_eq!(out.logvar.dims(), [2, 8, 5, 4, 6]);
        assert_eq!(out.reconstruction.dims(), [2, 3, 5, 16, 24]);
        let lv: Vec<f32> = out.logvar.into_data().try_into_vec().unwrap();
        assert!(lv.iter().all(|v| v.abs() <= 10.0));
        // The posterior starts narrow (logvar_init = −6).
        let mean = lv.iter().sum::<f32>() / lv.len() as f32;
        assert!((mean + 6.0).abs() < 1.5, "{mean}");
    }

    #[test]
    fn a_patched_vae_keeps_the_shapes_and_sees_every_geometry_pixel() {
        let dev = Device::flex();
        dev.seed(4);
        let cfg = VaeConfig::new()
            .with_patch(Some(2))
            .with_channels(vec![8, 16]);
        let vae = cfg.init(&dev).unwrap();
        let x = Tensor::<5>::random([2, 3, 5, 16, 24], Distribution::Normal(0.0, 1.0), &dev);
        let g = Tensor::<5>::random([2, 2, 5, 16, 24], Distribution::Uniform(0.0, 1.0), &dev);
        let shape = cfg.latent_shape(x.dims());
        assert_eq!(shape, [2, 8, 5, 4, 6]);
        let out = vae.forward(x, Some(g.clone()), None);
        assert_eq!(out.mu.dims(), shape);
        assert_eq!(out.reconstruction.dims(), [2, 3, 5, 16, 24]);
        // One geometry pixel changed (its 2×2 block mean kept by a swap with its
        // neighbour) still changes the decoded field: the finest level sees it unfolded.
        let z = Tensor::<5>::random([1, 8, 5, 4, 6], Distribution::Normal(0.0, 1.0), &dev);
        let g1 = g.clone().narrow(0, 0, 1);
        let a = g1.clone().slice([0..1, 0..2, 0..5, 0..1, 0..1]);
        let b = g1.clone().slice([0..1, 0..2, 0..5, 0..1, 1..2]);
        let swapped = g1
            .clone()
            .slice_assign([0..1, 0..2, 0..5, 0..1, 0..1], b)
            .slice_assign([0..1, 0..2, 0..5, 0..1, 1..2], a);
        let d1 = vae.decoder.forward(z.clone(), Some(g1));
        let d2 = vae.decoder.forward(z, Some(swapped));
        assert!((d1 - d2).abs().max().into_scalar::<f32>() > 1e-6);
    }

    #[test]
    fn the_decoder_sees_the_geometry() {
        let dev = Device::flex();
        dev.seed(3);
        let vae = VaeConfig::new()
            .with_channels(vec![8, 16])
            .with_groups(4)
            .init(&dev)
            .unwrap();
        let z = Tensor::<5>::random([1, 8, 3, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
        let g = Tensor::<5>::random([1, 2, 3, 8, 8], Distribution::Uniform(0.0, 1.0), &dev);
        let a = vae.decoder.forward(z.clone(), Some(g.clone()));
        let b = vae.decoder.forward(z, Some(g.mul_scalar(2.0)));
        assert_eq!(a.dims(), [1, 3, 3, 8, 8]);
        assert!((a - b).abs().max().into_scalar::<f32>() > 1e-4);
    }

    #[test]
    fn slices_are_coupled_by_the_3d_convolutions() {
        // Changing one slice of the input changes the latent of its neighbour slice.
        let dev = Device::flex();
        dev.seed(2);
        let vae = VaeConfig::new()
            .with_geometry_channels(0)
            .init(&dev)
            .unwrap();
        let x = Tensor::<5>::random([1, 3, 4, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let mut y = x.clone();
        y = y.slice_assign(
            [0..1, 0..3, 2..3, 0..8, 0..8],
            Tensor::<5>::ones([1, 3, 1, 8, 8], &dev),
        );
        let (a, _) = vae.encoder.forward(x, None);
        let (b, _) = vae.encoder.forward(y, None);
        let diff = |s: usize| {
            (a.clone().narrow(2, s, 1) - b.clone().narrow(2, s, 1))
                .abs()
                .sum()
                .into_scalar::<f32>()
        };
        assert!(diff(1) > 0.0 && diff(3) > 0.0);
    }
}
