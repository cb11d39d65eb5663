//! The refiner's configuration and layers.

use crate::batch::TensorBatch;
use crate::error::ModelError;
use crate::ops::{depth_to_space, space_to_depth};
use crate::vae::ResBlock;
use crate::vae::blocks::{conv3, downsample, upsample};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::silu;
use fiberflow_data::features::{GEOMETRY_CHANNELS, PRESSURE_CHANNELS};

/// How much the input is folded into channels before the first convolution.
const FOLD: usize = 2;
/// Velocity components of the estimate and the output.
const COMPONENTS: usize = 3;
/// In-plane components of the 2D flow (its vz is zero by construction).
const IN_PLANE: usize = 2;

/// Architecture of the refiner; validated before any layer is built.
#[derive(Config, Debug, PartialEq)]
pub struct RefinerConfig {
    /// Whether the refiner sees the slice-to-slice change of the 2D pressure (needs
    /// `p_2d`, which generated datasets and `predict`'s 2D solves have).
    #[config(default = true)]
    pub pressure: bool,
    /// Channels per level: the first works on the 2×2-folded grid (H/2 × W/2), each later
    /// one halves H and W again.
    #[config(default = "vec![24, 48]")]
    pub features: Vec<usize>,
    /// Residual blocks per level, on the way down and on the way up.
    #[config(default = 1)]
    pub blocks_per_level: usize,
    /// GroupNorm groups; every width must be divisible by it.
    #[config(default = 8)]
    pub groups: usize,
}

impl RefinerConfig {
    /// Input channels at full resolution: estimate ⊕ in-plane 2D flow ⊕ geometry
    /// [⊕ pressure change].
    pub fn in_channels(&self) -> usize {
        COMPONENTS + IN_PLANE + GEOMETRY_CHANNELS + usize::from(self.pressure) * PRESSURE_CHANNELS
    }

    /// What H and W must be multiples of.
    pub fn size_multiple(&self) -> usize {
        FOLD << self.features.len().saturating_sub(1)
    }

    /// Checks every rule, naming the field that breaks it.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.features.is_empty() || self.features.contains(&0) {
            return Err(ModelError::Config(format!(
                "refiner features = {:?} must be non-empty and positive",
                self.features
            )));
        }
        if self.groups == 0 || self.features.iter().any(|f| !f.is_multiple_of(self.groups)) {
            return Err(ModelError::Config(format!(
                "refiner groups = {} must be ≥ 1 and divide every width in {:?}",
                self.groups, self.features
            )));
        }
        if self.blocks_per_level == 0 {
            return Err(ModelError::Config(
                "refiner blocks_per_level must be ≥ 1".into(),
            ));
        }
        Ok(())
    }

    /// Checks that an input of H × W pixels fits.
    pub fn check_size(&self, h: usize, w: usize) -> Result<(), ModelError> {
        let m = self.size_multiple();
        if !h.is_multiple_of(m) || !w.is_multiple_of(m) {
            return Err(ModelError::Input(format!(
                "the refiner needs H and W that are multiples of {m}, got {h} × {w}"
            )));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<Refiner, ModelError> {
        self.validate()?;
        Ok(Refiner::new(self, device))
    }
}

/// One level on the way down: residual blocks, then (except at the deepest) a strided
/// convolution to the next.
#[derive(Module, Debug)]
pub struct DownLevel {
    blocks: Vec<ResBlock>,
    down: Option<Conv3d>,
}

/// One level on the way up, deepest first: residual blocks on [upsampled ⊕ skip], the
/// first one narrowing to the level's width.
#[derive(Module, Debug)]
pub struct UpLevel {
    up: Conv3d,
    blocks: Vec<ResBlock>,
}

/// Estimate `(B, 3, S, H, W)` and inputs → refined estimate, in normalised units.
#[derive(Module, Debug)]
pub struct Refiner {
    conv_in: Conv3d,
    down: Vec<DownLevel>,
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv3d,
    #[module(skip)]
    config: RefinerConfig,
}

impl Refiner {
    fn new(cfg: &RefinerConfig, device: &Device) -> Self {
        let f = &cfg.features;
        let g = cfg.groups;
        let blocks = |first_in: usize, c: usize| -> Vec<ResBlock> {
            (0..cfg.blocks_per_level)
                .map(|b| ResBlock::new(if b == 0 { first_in } else { c }, c, g, device))
                .collect()
        };
        let down = (0..f.len())
            .map(|i| DownLevel {
                blocks: blocks(f[i], f[i]),
                down: f.get(i + 1).map(|&next| {
                    Conv3dConfig::new([f[i], next], [3, 3, 3])
                        .with_stride([1, 2, 2])
                        .init(device)
                }),
            })
            .collect();
        let up = (0..f.len() - 1)
            .rev()
            .map(|i| UpLevel {
                up: conv3(f[i + 1], f[i], device),
                blocks: blocks(2 * f[i], f[i]),
            })
            .collect();
        let folded = FOLD * FOLD;
        Self {
            conv_in: conv3(cfg.in_channels() * folded, f[0], device),
            down,
            up,
            norm_out: GroupNormConfig::new(g, f[0]).init(device),
            conv_out: Conv3dConfig::new([f[0], COMPONENTS * folded], [3, 3, 3])
                .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device),
            config: cfg.clone(),
        }
    }

    /// The configuration the refiner was built from.
    pub fn config(&self) -> &RefinerConfig {
        &self.config
    }

    /// `estimate + correction(estimate, inputs)`, where `inputs` comes from
    /// [`refiner_inputs`]; H and W must pass [`RefinerConfig::check_size`].
    pub fn forward(&self, estimate: Tensor<5>, inputs: Tensor<5>) -> Tensor<5> {
        let x = space_to_depth(Tensor::cat(vec![estimate.clone(), inputs], 1), FOLD);
        let mut h = self.conv_in.forward(x);
        let mut skips = Vec::new();
        for level in &self.down {
            for block in &level.blocks {
                h = block.forward(h);
            }
            if let Some(conv) = &level.down {
                skips.push(h.clone());
                h = downsample(conv, h);
            }
        }
        for level in &self.up {
            h = upsample(&level.up, h);
            let skip = skips.pop().expect("one skip per upper level");
            h = Tensor::cat(vec![h, skip], 1);
            for block in &level.blocks {
                h = block.forward(h);
            }
        }
        let out = self.conv_out.forward(silu(self.norm_out.forward(h)));
        estimate + depth_to_space(out, FOLD)
    }
}

/// The refiner's full-resolution inputs `(B, C, S, H, W)` of a batch: the 2D flow's
/// in-plane components (normalised), the geometry features and, when `pressure`, the
/// slice-to-slice change of the 2D pressure.
pub fn refiner_inputs(tb: &TensorBatch, pressure: bool) -> Result<Tensor<5>, ModelError> {
    let mut parts = vec![tb.u2d.clone().narrow(1, 0, IN_PLANE), tb.geometry.clone()];
    if pressure {
        let p = tb.pressure.clone().ok_or_else(|| {
            ModelError::Input(
                "the refiner needs the per-slice 2D pressure `p_2d`, which this input lacks".into(),
            )
        })?;
        parts.push(p);
    }
    Ok(Tensor::cat(parts, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn an_untrained_refiner_returns_its_input_and_keeps_the_shape() {
        let dev = Device::flex();
        let cfg = RefinerConfig::new().with_features(vec![8, 16]);
        let refiner = cfg.init(&dev).unwrap();
        let estimate = Tensor::<5>::random([2, 3, 3, 8, 12], Distribution::Default, &dev);
        // Everything but the estimate's three components.
        let inputs = Tensor::<5>::random(
            [2, cfg.in_channels() - 3, 3, 8, 12],
            Distribution::Default,
            &dev,
        );
        let out = refiner.forward(estimate.clone(), inputs);
        assert_eq!(out.dims(), [2, 3, 3, 8, 12]);
        let diff: f32 = (out - estimate).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
        assert!(cfg.check_size(8, 12).is_ok());
        let e = cfg.check_size(8, 10).unwrap_err().to_string();
        assert!(e.contains("multiples of 4"), "{e}");
    }

    #[test]
    fn configs_that_cannot_build_are_refused_by_name() {
        let dev = Device::flex();
        let e = |c: RefinerConfig| c.init(&dev).unwrap_err().to_string();
        assert!(e(RefinerConfig::new().with_features(vec![])).contains("features"));
        assert!(e(RefinerConfig::new().with_features(vec![12, 20])).contains("groups"));
        assert!(e(RefinerConfig::new().with_blocks_per_level(0)).contains("blocks_per_level"));
        assert_eq!(RefinerConfig::new().in_channels(), 8);
        assert_eq!(RefinerConfig::new().with_pressure(false).in_channels(), 7);
    }
}
