//! From a condition to a 3D latent: the reverse diffusion process with the trained
//! denoiser (any sampler, optional classifier-free guidance, Ho & Salimans 2022), or the
//! direct latent conditioner's single evaluation.

use crate::diffusion::{ChaCha8Rng, NoiseSchedule, SamplerConfig, sample, standard_normal};
use crate::error::ModelError;
use crate::unet::UNet;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// What the latent network is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PredictorKind {
    /// A denoiser sampled by the reverse diffusion process.
    #[default]
    Diffusion,
    /// The direct latent conditioner (after SimulGen-VAE's latent conditioner): condition →
    /// 3D latent in one evaluation; the fast baseline the diffusion model must beat.
    Direct,
}

impl PredictorKind {
    /// Input channels of the network for latents of `cz` channels and `geometry` feature
    /// channels: noisy latent ⊕ condition ⊕ geometry, or condition ⊕ geometry.
    pub fn in_channels(self, cz: usize, geometry: usize) -> usize {
        match self {
            Self::Diffusion => 2 * cz + geometry,
            Self::Direct => cz + geometry,
        }
    }
}

/// How to draw a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    pub sampler: SamplerConfig,
    /// Classifier-free guidance weight w: ε = (1 + w)·ε(x, c) − w·ε(x, ∅); 0 = off (one
    /// network evaluation per step instead of two).
    pub guidance: f64,
}

/// The trained latent network with its noise schedule.
pub struct LatentPredictor<'a> {
    pub unet: &'a UNet,
    pub schedule: &'a NoiseSchedule,
    pub kind: PredictorKind,
}

impl LatentPredictor<'_> {
    /// The scaled 3D latent for `cond` and `geometry` (both at latent resolution).
    pub fn sample(
        &self,
        cond: Tensor<5>,
        geometry: Tensor<5>,
        options: &SampleOptions,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor<5>, ModelError> {
        if !(options.guidance.is_finite() && options.guidance >= 0.0) {
            return Err(ModelError::Config(format!(
                "guidance = {} must be ≥ 0",
                options.guidance
            )));
        }
        if self.kind == PredictorKind::Direct {
            return self
                .unet
                .forward(Tensor::cat(vec![cond, geometry], 1), None);
        }
        let device = cond.device();
        let [b, _, s, h, w] = cond.dims();
        let shape = [b, self.unet.config().out_channels, s, h, w];
        let mut scheduler = options.sampler.init(self.schedule)?;
        let x_t = standard_normal(shape, rng, &device);
        let guidance = options.guidance;
        let denoise = |x: Tensor<5>, t: &[usize]| -> Result<Tensor<5>, ModelError> {
            let times = |n: usize| {
                let v: Vec<f32> = t.iter().cycle().take(n).map(|&t| t as f32).collect();
                Tensor::<1>::from_floats(v.as_slice(), &device)
            };
            if guidance == 0.0 {
                let input = Tensor::cat(vec![x, cond.clone(), geometry.clone()], 1);
                return self.unet.forward(input, Some(times(b)));
            }
            // Conditional and unconditional halves in one batch.
            let input = Tensor::cat(
                vec![
                    Tensor::cat(vec![x.clone(), cond.clone(), geometry.clone()], 1),
                    Tensor::cat(vec![x, cond.zeros_like(), geometry.clone()], 1),
                ],
                0,
            );
            let out = self.unet.forward(input, Some(times(2 * b)))?;
            let (c, u) = (out.clone().narrow(0, 0, b), out.narrow(0, b, b));
            Ok(c.mul_scalar(1.0 + guidance) - u.mul_scalar(guidance))
        };
        sample(scheduler.as_mut(), x_t, denoise, rng)
    }
}
