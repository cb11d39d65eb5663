//! What the denoiser sees besides the noisy latent: the scaled E2D latent (the condition)
//! and the microstructure features at latent resolution (fluid fraction and distance to
//! fibres, in physical units), plus, for models trained with it, the slice-to-slice change
//! of the 2D pressure. The features are either averaged over each latent pixel's block or
//! folded whole into channels (space-to-depth), which keeps where in the block a fibre
//! edge sits: the shift of a fibre between slices, which drives vz, is often smaller than
//! a block.

use crate::batch::TensorBatch;
use crate::error::ModelError;
use crate::latent::DualVae;
use crate::ops::{avg_pool_hw, space_to_depth};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// What the latent network produces and how it maps back to the 3D latent, with scale
/// factors measured on the training cache and stored with the run: targets are divided by
/// them so the network works on unit-variance data (Rombach et al. 2022, §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatentScales {
    /// The target is μ3d − μ2d, the part of the 3D latent that the aligned 2D latent
    /// misses, instead of μ3d itself (the residual corrective diffusion of Mardani et al.
    /// 2023, "CorrDiff"): stage 2 already puts μ2d near μ3d, so the network starts from the
    /// cross-reconstruction D3D(E2D(U_2d)) and only learns the correction, chiefly vz.
    pub residual: bool,
    /// Standard deviation of the target over the training split.
    pub target: f64,
    /// Standard deviation of μ2d over the training split.
    pub condition: f64,
}

impl LatentScales {
    /// The network target (scaled) of a 3D latent: the inverse of [`Self::latent`].
    pub fn target_of(&self, mu3d: Tensor<5>, mu2d: Tensor<5>) -> Tensor<5> {
        let z = if self.residual { mu3d - mu2d } else { mu3d };
        z.div_scalar(self.target)
    }

    /// The 3D latent from a network target `x0` (scaled) and the unscaled E2D latent.
    pub fn latent(&self, x0: Tensor<5>, mu2d: Tensor<5>) -> Tensor<5> {
        let z = x0.mul_scalar(self.target);
        if self.residual { z + mu2d } else { z }
    }
}

/// Which condition features the latent network sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditioning {
    /// The slice-to-slice change of the 2D pressure, next to the geometry.
    pub pressure: bool,
    /// Features folded into channels instead of averaged (see the module comment).
    pub fold: bool,
}

impl Conditioning {
    /// Feature channels on a latent grid `factor` times coarser than the input.
    pub fn channels(&self, factor: usize) -> usize {
        use fiberflow_data::features::{GEOMETRY_CHANNELS, PRESSURE_CHANNELS};
        let full = GEOMETRY_CHANNELS + usize::from(self.pressure) * PRESSURE_CHANNELS;
        if self.fold {
            full * factor * factor
        } else {
            full
        }
    }

    /// Full-resolution features `(B, C, S, H, W)` on the latent grid `factor` times
    /// coarser.
    pub fn to_latent_grid(&self, features: Tensor<5>, factor: usize) -> Tensor<5> {
        if self.fold {
            space_to_depth(features, factor)
        } else {
            avg_pool_hw(features, factor)
        }
    }
}

/// The full-resolution condition features `(B, C, S, H, W)` of a batch: geometry, then the
/// pressure change when `pressure`. Training and sampling both build them here.
pub fn condition_features(tb: &TensorBatch, pressure: bool) -> Result<Tensor<5>, ModelError> {
    if !pressure {
        return Ok(tb.geometry.clone());
    }
    let p = tb.pressure.clone().ok_or_else(|| {
        ModelError::Input(
            "this model is conditioned on the per-slice 2D pressure `p_2d`, which the input \
             lacks (a reference import, or a 2D flow given without its pressure: `fiberflow \
             predict --pressure2d`); give it, or use a model trained with \
             pressure_condition = false"
                .into(),
        )
    })?;
    Ok(Tensor::cat(vec![tb.geometry.clone(), p], 1))
}

/// Inputs of a batch computed with the frozen E2D: the unscaled μ2d, the scaled
/// condition and the latent-resolution features (geometry, then the pressure change when
/// `pressure`).
pub struct ConditionInputs {
    pub mu2d: Tensor<5>,
    pub cond: Tensor<5>,
    pub geometry: Tensor<5>,
}

impl ConditionInputs {
    pub fn new(
        vae: &DualVae,
        tb: &TensorBatch,
        scales: &LatentScales,
        conditioning: Conditioning,
    ) -> Result<Self, ModelError> {
        let features = condition_features(tb, conditioning.pressure)?;
        // Detached: on an autodiff device (physics guidance) each guided step differentiates
        // its own graph, and a shared encoder graph would be consumed by the first.
        let mu2d = vae.encode_2d(tb).detach();
        Ok(Self {
            cond: mu2d.clone().div_scalar(scales.condition),
            mu2d,
            geometry: conditioning.to_latent_grid(features, vae.config.downsample_factor()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use burn::tensor::Distribution;

    #[test]
    fn folded_features_keep_what_averaging_keeps_and_more() {
        let dev = Device::flex();
        let x = Tensor::<5>::random([1, 3, 2, 8, 8], Distribution::Uniform(0.0, 1.0), &dev);
        let pooled = Conditioning {
            pressure: true,
            fold: false,
        };
        let folded = Conditioning {
            fold: true,
            ..pooled
        };
        assert_eq!(pooled.channels(4), 3);
        assert_eq!(folded.channels(4), 48);
        let without_pressure = Conditioning {
            pressure: false,
            ..folded
        };
        assert_eq!(without_pressure.channels(2), 8);
        let p = pooled.to_latent_grid(x.clone(), 4);
        let f = folded.to_latent_grid(x, 4);
        assert_eq!(p.dims(), [1, 3, 2, 2, 2]);
        assert_eq!(f.dims(), [1, 48, 2, 2, 2]);
        // The mean over each feature's 16 folded channels is its block average.
        let mean = f
            .reshape([1, 3, 16, 2, 2, 2])
            .mean_dim(2)
            .reshape([1, 3, 2, 2, 2]);
        let diff: f32 = (mean - p).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
    }
}
