//! VAE encoder: (B, C, S, H, W) → μ, log σ² of shape (B, Cz, S, H/f, W/f).

use super::blocks::{ResBlock, conv3, down_conv, downsample};
use super::config::VaeConfig;
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

#[derive(Module, Debug)]
pub struct Encoder {
    conv_in: Conv3d,
    levels: Vec<EncoderLevel>,
    norm_out: GroupNorm,
    conv_out: Conv3d,
    latent_channels: usize,
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
            conv_in: conv3(cfg.in_channels, ch[0], device),
            levels,
            norm_out: GroupNormConfig::new(cfg.groups, last).init(device),
            conv_out: conv3(last, 2 * cfg.latent_channels, device),
            latent_channels: cfg.latent_channels,
            logvar_clamp: cfg.logvar_clamp,
        }
    }

    /// Mean and clamped log-variance of the latent.
    pub fn forward(&self, x: Tensor<5>) -> (Tensor<5>, Tensor<5>) {
        let mut h = self.conv_in.forward(x);
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
        (mu, logvar)
    }
}
