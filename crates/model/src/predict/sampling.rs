//! From a condition to a 3D latent: the reverse diffusion process with the trained
//! denoiser (any sampler, optional classifier-free guidance, Ho & Salimans 2022), or the
//! direct latent conditioner's single evaluation. Two optional steerings of the reverse
//! process: physics guidance by the gradient, with respect to x_t, of a residual of the
//! decoded x̂0 (diffusion posterior sampling, Chung et al., ICLR 2023), and inpainting of
//! known latent slices by re-injecting them, noised to the current t, before every
//! network evaluation (RePaint, Lugmayr et al., CVPR 2022, without resampling).

use crate::diffusion::{
    ChaCha8Rng, NoiseSchedule, Prediction, SamplerConfig, sample, standard_normal,
};
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
    /// Input channels of the network for latents of `cz` channels and `features` condition
    /// channels: noisy latent ⊕ condition ⊕ features, or condition ⊕ features.
    pub fn in_channels(self, cz: usize, features: usize) -> usize {
        match self {
            Self::Diffusion => 2 * cz + features,
            Self::Direct => cz + features,
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

/// Physics guidance: a scalar residual of a scaled latent x̂0 (e.g. divergence and fibre
/// velocity of its decoded flow) and its weight. Needs an autodiff device.
pub struct PhysicsGuidance<'a> {
    pub weight: f64,
    pub residual: &'a dyn Fn(Tensor<5>) -> Result<Tensor<1>, ModelError>,
}

/// Known parts of the target latent: `x0` (scaled, like the network's target) where
/// `mask` is 1, e.g. on slices whose 3D flow was measured.
pub struct KnownLatent {
    pub x0: Tensor<5>,
    pub mask: Tensor<5>,
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
        self.sample_steered(cond, geometry, options, rng, (None, None))
    }

    /// [`Self::sample`] with optional physics guidance and known latent parts; the
    /// re-injection noise comes from `rng`'s seed on its own stream, so a run with the
    /// same seed is reproducible.
    pub fn sample_steered(
        &self,
        cond: Tensor<5>,
        geometry: Tensor<5>,
        options: &SampleOptions,
        rng: &mut ChaCha8Rng,
        (physics, known): (Option<&PhysicsGuidance>, Option<&KnownLatent>),
    ) -> Result<Tensor<5>, ModelError> {
        if !(options.guidance.is_finite() && options.guidance >= 0.0) {
            return Err(ModelError::Config(format!(
                "guidance = {} must be ≥ 0",
                options.guidance
            )));
        }
        if self.kind == PredictorKind::Direct {
            let x0 = self
                .unet
                .forward(Tensor::cat(vec![cond, geometry], 1), None)?;
            return Ok(match known {
                Some(k) => {
                    x0 * (k.mask.ones_like() - k.mask.clone()) + k.x0.clone() * k.mask.clone()
                }
                None => x0,
            });
        }
        let device = cond.device();
        let [b, _, s, h, w] = cond.dims();
        let shape = [b, self.unet.config().out_channels, s, h, w];
        let mut scheduler = options.sampler.init(self.schedule)?;
        let x_t = standard_normal(shape, rng, &device);
        let guidance = options.guidance;
        let mut reinjection = rng.clone();
        reinjection.set_stream(u64::MAX);
        let mut network = |x: Tensor<5>, t: &[usize]| -> Result<Tensor<5>, ModelError> {
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
        let schedule = self.schedule;
        let denoise = |x: Tensor<5>, t: &[usize]| -> Result<Tensor<5>, ModelError> {
            let x = match known {
                Some(k) => {
                    let noise = standard_normal(x.dims(), &mut reinjection, &device);
                    let noised = schedule.add_noise(k.x0.clone(), noise, t)?;
                    x * (k.mask.ones_like() - k.mask.clone()) + noised * k.mask.clone()
                }
                None => x,
            };
            match physics {
                Some(p) if p.weight > 0.0 => guided(schedule, &mut network, p, x, t),
                _ => network(x, t),
            }
        };
        let x0 = sample(scheduler.as_mut(), x_t, denoise, rng)?;
        Ok(match known {
            Some(k) => x0 * (k.mask.ones_like() - k.mask.clone()) + k.x0.clone() * k.mask.clone(),
            None => x0,
        })
    }
}

/// The network at (x_t, t).
type Network<'a> = dyn FnMut(Tensor<5>, &[usize]) -> Result<Tensor<5>, ModelError> + 'a;

/// The network output at (x, t) corrected by the gradient g = ∇_{x_t} R(x̂0(x_t)) of the
/// physics residual, taken through the network (Chung et al. 2023): the output is changed
/// so that x̂0 moves by −w·α_t·g ≈ −w·∇_{x̂0}R, i.e. ε̂' = ε̂ + w·(α_t²/σ_t)·g or
/// v' = v + w·(α_t/σ_t)·g. The textbook ε̂ + w·σ_t·g moves x̂0 by w·σ_t²/α_t²·∇R, a step
/// that grows without bound as ᾱ_t → 0 and overshoots at the first, noisiest steps.
fn guided(
    schedule: &NoiseSchedule,
    network: &mut Network,
    physics: &PhysicsGuidance,
    x: Tensor<5>,
    t: &[usize],
) -> Result<Tensor<5>, ModelError> {
    let device = x.device();
    let x = x.detach().require_grad();
    let out = network(x.clone(), t)?;
    let x0 = schedule.x0_from(out.clone(), x.clone(), t)?;
    let grads = (physics.residual)(x0)?.backward();
    let grad = x.grad(&grads).ok_or_else(|| {
        ModelError::Config("physics guidance needs the models on an autodiff device".into())
    })?;
    let grad = Tensor::<5>::from_data(grad.into_data(), &device);
    let factor: Vec<f32> = t
        .iter()
        .map(|&t| {
            let ab = schedule.alphas_cumprod()[t];
            let (alpha, sigma) = (ab.sqrt(), (1.0 - ab).sqrt());
            (physics.weight
                * match schedule.prediction() {
                    Prediction::Epsilon => alpha * alpha / sigma,
                    Prediction::V => alpha / sigma,
                }) as f32
        })
        .collect();
    let factor =
        Tensor::<1>::from_floats(factor.as_slice(), &device).reshape([t.len(), 1, 1, 1, 1]);
    Ok(out.detach() + grad * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::DiffusionConfig;
    use burn::tensor::Distribution;

    #[test]
    fn physics_guidance_moves_x0_down_the_residual_gradient() {
        let device = Device::flex().autodiff();
        device.seed(4);
        for prediction in [Prediction::Epsilon, Prediction::V] {
            let schedule = DiffusionConfig::new()
                .with_prediction(prediction)
                .init()
                .unwrap();
            let x = Tensor::<5>::random([2, 2, 2, 3, 3], Distribution::Normal(0.0, 1.0), &device);
            let t = [300, 700];
            // A network that predicts zero; the residual pulls x̂0 towards 1.
            let mut network = |x: Tensor<5>, _: &[usize]| Ok(x.zeros_like());
            let residual = |x0: Tensor<5>| Ok(x0.sub_scalar(1.0).square().mean());
            let r = |out: Tensor<5>| {
                schedule
                    .x0_from(out, x.clone(), &t)
                    .unwrap()
                    .sub_scalar(1.0)
                    .square()
                    .mean()
                    .into_scalar::<f64>()
            };
            let before = r(x.zeros_like());
            let physics = PhysicsGuidance {
                weight: 10.0,
                residual: &residual,
            };
            let out = guided(&schedule, &mut network, &physics, x.clone(), &t).unwrap();
            let after = r(out);
            assert!(after < before, "{prediction:?}: {after} ≥ {before}");
        }
    }
}
