//! What the denoiser sees besides the noisy latent: the scaled E2D latent (the condition)
//! and the microstructure features averaged to latent resolution (fluid fraction and mean
//! distance to fibres per latent pixel, in physical units).

use crate::batch::TensorBatch;
use crate::latent::DualVae;
use crate::ops::avg_pool_hw;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Latent scale factors, measured on the training cache and stored with the run: latents
/// are divided by them so the diffusion works on unit-variance data (Rombach et al. 2022,
/// §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatentScales {
    /// Standard deviation of μ3d over the training split.
    pub target: f64,
    /// Standard deviation of μ2d over the training split.
    pub condition: f64,
}

/// Microstructure features `(B, 2, S, H, W)` averaged to the latent grid.
pub fn latent_geometry(geometry: Tensor<5>, factor: usize) -> Tensor<5> {
    avg_pool_hw(geometry, factor)
}

/// The condition and geometry inputs of a batch, computed with the frozen E2D.
pub fn condition_inputs(
    vae: &DualVae,
    tb: &TensorBatch,
    scales: &LatentScales,
) -> (Tensor<5>, Tensor<5>) {
    let cond = vae.encode_2d(tb).div_scalar(scales.condition);
    let geometry = latent_geometry(tb.geometry.clone(), vae.config.downsample_factor());
    (cond, geometry)
}
