//! The denoiser network: a U-Net (Ronneberger et al., MICCAI 2015) in the diffusion form
//! of Ho et al. (2020) and Dhariwal & Nichol (2021), with 3D convolutions that keep the
//! slice count and resample only h and w.

use super::blocks::{BlockShape, Downsample, SliceNorm, Stage, Upsample, conv, conv_config};
use super::config::UNetConfig;
use super::embedding::TimeEmbedding;
use crate::error::ModelError;
use crate::precision::like;
use burn::nn::Initializer;
use burn::nn::conv::Conv3d;
use burn::prelude::*;
use burn::tensor::activation::silu;

/// One decoder level, deepest first: stages on [upsampled ⊕ skip], then an upsampling
/// step to the next shallower width except at the first level.
#[derive(Module, Debug)]
pub struct DecoderLevel {
    stages: Vec<Stage>,
    up: Option<Upsample>,
}

/// Conditional denoiser over latents `(B, C, S, h, w)` → `(B, out_channels, S, h, w)`.
///
/// Encoder level i: `blocks_per_level` stages at width features[i] (attention after each
/// block where configured), skip saved, 2×2 average pooling except at the last level.
/// Bottleneck at the deepest width: stage (with that level's attention) + stage. Decoder
/// level i: concatenate the skip, the same stages, nearest ×2 + conv to features[i − 1].
/// Output: norm → SiLU → zero-initialised conv, so an untrained network returns exactly 0.
#[derive(Module, Debug)]
pub struct UNet {
    time: Option<TimeEmbedding>,
    conv_in: Conv3d,
    encoder: Vec<Vec<Stage>>,
    down: Downsample,
    middle: Vec<Stage>,
    decoder: Vec<DecoderLevel>,
    norm_out: SliceNorm,
    pub(super) conv_out: Conv3d,
    #[module(skip)]
    config: UNetConfig,
}

impl UNet {
    /// Builds the layers of a validated configuration with its parsed attention heads
    /// per level (see `UNetConfig::init`).
    pub(super) fn new(cfg: &UNetConfig, heads: &[Option<usize>], device: &Device) -> Self {
        let f = &cfg.features;
        let k = cfg.slice_kernel;
        let shape = BlockShape {
            groups: cfg.groups,
            slice_kernel: k,
            time_dim: cfg.time_conditioned.then_some(cfg.time_mlp_dim),
            dropout: cfg.dropout,
        };
        let stages = |first_in: usize, level: usize| -> Vec<Stage> {
            (0..cfg.blocks_per_level)
                .map(|b| {
                    let cin = if b == 0 { first_in } else { f[level] };
                    Stage::new(cin, f[level], heads[level], &shape, device)
                })
                .collect()
        };
        let encoder = (0..f.len())
            .map(|i| stages(if i == 0 { f[0] } else { f[i - 1] }, i))
            .collect();
        let last = f.len() - 1;
        let middle = vec![
            Stage::new(f[last], f[last], heads[last], &shape, device),
            Stage::new(f[last], f[last], None, &shape, device),
        ];
        let decoder = (0..f.len())
            .rev()
            .map(|i| DecoderLevel {
                stages: stages(2 * f[i], i),
                up: (i > 0).then(|| Upsample::new(f[i], f[i - 1], k, device)),
            })
            .collect();
        Self {
            time: cfg
                .time_conditioned
                .then(|| TimeEmbedding::new(cfg.time_embedding_dim, cfg.time_mlp_dim, device)),
            conv_in: conv(cfg.in_channels, f[0], k, device),
            encoder,
            down: Downsample::new(),
            middle,
            decoder,
            norm_out: SliceNorm::new(cfg.groups, f[0], device),
            conv_out: conv_config(f[0], cfg.out_channels, k)
                .with_initializer(Initializer::Zeros)
                .init(device),
            config: cfg.clone(),
        }
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Checks input dims `(B, C, S, h, w)` against the configuration.
    pub fn check_input(&self, dims: [usize; 5]) -> Result<(), ModelError> {
        self.config.check_input(dims)
    }

    /// Predicts from `x` `(B, in_channels, S, h, w)` and `t`, one float timestep per
    /// sample. A time-conditioned network needs `Some(t)` of length B; one built with
    /// `time_conditioned = false` takes `None`, so a timestep is never silently ignored.
    /// Only shapes are checked here (no device sync); timesteps are expected finite.
    /// Computes in the weights' float type (see [`crate::precision`]) and returns `x`'s.
    pub fn forward(&self, x: Tensor<5>, t: Option<Tensor<1>>) -> Result<Tensor<5>, ModelError> {
        let dims = x.dims();
        self.check_input(dims)?;
        let time = match (&self.time, t) {
            (Some(emb), Some(t)) => {
                if t.dims() != [dims[0]] {
                    return Err(ModelError::Input(format!(
                        "{} timesteps for a batch of {}",
                        t.dims()[0],
                        dims[0]
                    )));
                }
                Some(silu(emb.forward(t)))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ModelError::Input(
                    "this denoiser is time-conditioned but no timesteps were given".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ModelError::Input(
                    "this network has no time input (time_conditioned = false) but timesteps were given"
                        .into(),
                ));
            }
        };
        let time = time.as_ref();

        let dtype = x.dtype();
        let mut h = self.conv_in.forward(like(x, &self.conv_in.weight));
        let mut skips = Vec::with_capacity(self.encoder.len());
        for (i, level) in self.encoder.iter().enumerate() {
            for stage in level {
                h = stage.forward(h, time);
            }
            skips.push(h.clone());
            if i + 1 < self.encoder.len() {
                h = self.down.forward(h);
            }
        }
        for stage in &self.middle {
            h = stage.forward(h, time);
        }
        for level in &self.decoder {
            let skip = skips.pop().expect("one skip per level");
            h = Tensor::cat(vec![h, skip], 1);
            for stage in &level.stages {
                h = stage.forward(h, time);
            }
            if let Some(up) = &level.up {
                h = up.forward(h);
            }
        }
        Ok(self
            .conv_out
            .forward(silu(self.norm_out.forward(h)))
            .cast(dtype))
    }
}
