//! DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12):
//! x_{t'} = √ᾱ_{t'} x̂0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z with
//! σ = η √((1 − ᾱ_{t'})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}), on any sub-sequence of timesteps.
//! η = 0 is deterministic (a first-order solver of the probability-flow ODE); η = 1 has
//! DDPM's posterior variance. The last step goes to ᾱ = 1, i.e. returns x̂0. As the
//! reference (`ddim_sample`), x̂0 is clamped but ε̂ is the network's, not re-derived.

use super::scheduler::check_step;
use super::{NoiseSchedule, Scheduler, standard_normal};
use crate::error::ModelError;
use burn::prelude::*;
use rand_chacha::ChaCha8Rng;

/// The DDIM sampler; built by [`SamplerConfig::init`](super::SamplerConfig::init).
pub(super) struct Ddim {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    eta: f64,
}

impl Ddim {
    /// `timesteps` are distinct, decreasing and below T; η ∈ [0, 1].
    pub(super) fn new(schedule: NoiseSchedule, timesteps: Vec<usize>, eta: f64) -> Self {
        Self {
            schedule,
            timesteps,
            eta,
        }
    }
}

impl Scheduler for Ddim {
    fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: Tensor<5>,
        step_index: usize,
        sample: Tensor<5>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor<5>, ModelError> {
        check_step(&self.timesteps, step_index, &model_output, &sample)?;
        let ab = self.schedule.alphas_cumprod();
        let ab_t = ab[self.timesteps[step_index]];
        let ab_prev = self.timesteps.get(step_index + 1).map_or(1.0, |&p| ab[p]);
        let t = vec![self.timesteps[step_index]; sample.dims()[0]];
        let x0 = self.schedule.clip(self.schedule.x0_from(
            model_output.clone(),
            sample.clone(),
            &t,
        )?);
        let eps = self.schedule.eps_from(model_output, sample.clone(), &t)?;
        let var = self.eta.powi(2) * (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev);
        // 1 − ᾱ' − σ² ≥ 0 for η ≤ 1; the max only absorbs rounding.
        let x =
            x0.mul_scalar(ab_prev.sqrt()) + eps.mul_scalar((1.0 - ab_prev - var).max(0.0).sqrt());
        Ok(if var > 0.0 {
            x + standard_normal(sample.dims(), rng, &sample.device()).mul_scalar(var.sqrt())
        } else {
            x
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{close, normal, values};
    use super::super::{
        DiffusionConfig, Prediction, SamplerConfig, SamplerKind, TimestepSpacing, sample,
        seeded_rng,
    };
    use super::*;

    /// Song et al. 2021 (§4.1): η = 1 makes the DDIM step the DDPM posterior, so with the
    /// same noise both samplers give the same result for any network.
    #[test]
    fn eta_one_is_ddpm() {
        for p in [Prediction::Epsilon, Prediction::V] {
            // Unclamped: with a clamp, DDIM's unclamped ε̂ and DDPM's x_t term differ.
            let s = DiffusionConfig::new()
                .with_prediction(p)
                .with_clip_x0(None)
                .init()
                .unwrap();
            for (steps, spacing) in [
                (1000, TimestepSpacing::Linspace),
                (25, TimestepSpacing::Trailing),
            ] {
                let run = |kind, eta| {
                    let cfg = SamplerConfig::new()
                        .with_kind(kind)
                        .with_eta(eta)
                        .with_steps(steps)
                        .with_spacing(spacing);
                    let mut sampler = cfg.init(&s).unwrap();
                    let net =
                        |x: Tensor<5>, t: &[usize]| Ok(x.mul_scalar(0.3 + t[0] as f64 * 1e-4));
                    values(
                        sample(
                            sampler.as_mut(),
                            normal([2, 3, 2, 4, 4], 1),
                            net,
                            &mut seeded_rng(2),
                        )
                        .unwrap(),
                    )
                };
                close(
                    &run(SamplerKind::Ddim, 1.0),
                    &run(SamplerKind::Ddpm, 0.0),
                    1e-4,
                );
            }
        }
    }

    /// The clamp binds on x̂0 while ε̂ stays the network's (the reference's DDIM update).
    #[test]
    fn clamped_step_keeps_the_network_noise() {
        let s = DiffusionConfig::new()
            .with_clip_x0(Some(1.0))
            .init()
            .unwrap();
        let mut ddim = Ddim::new(s.clone(), vec![999, 500], 0.0);
        let dev = Device::flex();
        let one = |x: f32| Tensor::<5>::from_data(TensorData::new(vec![x], [1, 1, 1, 1, 1]), &dev);
        let (x_t, eps) = (1.0f64, 0.5f64);
        let out = ddim
            .step(one(eps as f32), 0, one(x_t as f32), &mut seeded_rng(0))
            .unwrap();
        let ab = s.alphas_cumprod();
        // x̂0 = (1 − √(1 − ᾱ_999)·0.5)/√ᾱ_999 ≈ 79 → clamped to 1.
        let want = ab[500].sqrt() * 1.0 + (1.0 - ab[500]).sqrt() * eps;
        assert!((values(out)[0] as f64 - want).abs() < 1e-6);
    }
}
