//! VAE encoder: (B, C, S, H, W) → μ, log σ² of shape (B, Cz, S, H/f, W/f).

use super::blocks::{ResBlock, conv3, down_conv, downsample, with_geometry};
use super::config::VaeConfig;
use crate::ops::space_to_depth;
use crate::precision::like;
use burn::module::Param;
use burn::nn::conv::Conv3d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;

/// One resolution level: residual blocks, then a downsampling conv except at the last level.
#[derive(Module, Debug)]
pub struct EncoderLevel {
    blocks: Vec<ResBlock>,
    down: Option<Conv3d>,
}

/// Sets the bias of the output channels `cz..2cz` (log σ²) to `value`, and of μ to 0.
fn with_logvar_bias(mut conv: Conv3d, cz: usize, value: f64, device: &Device) -> Conv3d {
    let mut bias = vec![0.0f32; 2 * cz];
    bias[cz..].fill(value as f32);
    conv.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(bias, [2 * cz]),
        device,
    )));
    conv
}

#[derive(Module, Debug)]
pub struct Encoder {
    conv_in: Conv3d,
    levels: Vec<EncoderLevel>,
    norm_out: GroupNorm,
    conv_out: Conv3d,
    latent_channels: usize,
    geometry_channels: usize,
    patch: usize,
    logvar_clamp: f64,
}

impl Encoder {
    pub(crate) fn new(cfg: &VaeConfig, device: &Device) -> Self {
        let ch = &cfg.channels;
        let levels = ch
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let cin = if i == 0 { c } else { ch[i - 1] };
                EncoderLevel {
                    blocks: (0..cfg.blocks_per_level)
                        .map(|b| ResBlock::new(if b == 0 { cin } else { c }, c, cfg.groups, device))
                        .collect(),
                    down: (i + 1 < ch.len()).then(|| down_conv(c, device)),
                }
            })
            .collect();
        let last = *ch.last().expect("validated: channels non-empty");
        Self {
            conv_in: conv3(
                (cfg.in_channels + cfg.geometry_channels) * cfg.patch() * cfg.patch(),
                ch[0],
                device,
            ),
            levels,
            norm_out: GroupNormConfig::new(cfg.groups, last).init(device),
            conv_out: with_logvar_bias(
                conv3(last, 2 * cfg.latent_channels, device),
                cfg.latent_channels,
                cfg.logvar_init,
                device,
            ),
            latent_channels: cfg.latent_channels,
            geometry_channels: cfg.geometry_channels,
            patch: cfg.patch(),
            logvar_clamp: cfg.logvar_clamp,
        }
    }

    /// Mean and clamped log-variance of the latent.
    /// `geometry` holds the full-resolution microstructure features when the config has
    /// geometry channels.
    /// Computes in the weights' float type (see [`crate::precision`]) and returns the
    /// input's.
    pub fn forward(&self, x: Tensor<5>, geometry: Option<Tensor<5>>) -> (Tensor<5>, Tensor<5>) {
        let dtype = x.dtype();
        let weights = &self.conv_in.weight;
        let (x, geometry) = (like(x, weights), geometry.map(|g| like(g, weights)));
        let x = with_geometry(x, geometry, self.geometry_channels);
        let mut h = self.conv_in.forward(space_to_depth(x, self.patch));
        for level in &self.levels {
            for block in &level.blocks {
                h = block.forward(h);
            }
            if let Some(conv) = &level.down {
                h = downsample(conv, h);
            }
        }
        let h = self.conv_out.forward(silu(self.norm_out.forward(h)));
        let cz = self.latent_channels;
        let mu = h.clone().narrow(1, 0, cz);
        let logvar = h
            .narrow(1, cz, cz)
            .clamp(-self.logvar_clamp, self.logvar_clamp);
        (mu.cast(dtype), logvar.cast(dtype))
    }
}
