//! Ancestral DDPM sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
//! eqs. 6–7): x_{t'} ~ q(x_{t'} | x_t, x̂0), the Gaussian posterior with mean
//! c0·x̂0 + c1·x_t and variance β̃. Over all T steps this is the reference's `predict()`;
//! over a sub-sequence the β are respaced to β'_t = 1 − ᾱ_t/ᾱ_{t'} (Nichol & Dhariwal 2021,
//! §4), which over all T steps gives back β_t.
//!
//! The reference stores β̃ clamped at 1e-20 only because it keeps log β̃, which is −∞ at
//! t = 0; here no logarithm is taken and the last step adds no noise, so the values it
//! samples with are the same.

use super::scheduler::check_step;
use super::{NoiseSchedule, Scheduler, standard_normal};
use crate::error::ModelError;
use burn::prelude::*;
use rand_chacha::ChaCha8Rng;

/// Posterior coefficients of one step: x_{t'} = c_x0·x̂0 + c_xt·x_t + std·z.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Posterior {
    c_x0: f64,
    c_xt: f64,
    std: f64,
}

/// The DDPM sampler; built by [`SamplerConfig::init`](super::SamplerConfig::init).
pub(super) struct Ddpm {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    posteriors: Vec<Posterior>,
}

impl Ddpm {
    /// `timesteps` are distinct, decreasing and below T (from [`super::TimestepSpacing`]).
    pub(super) fn new(schedule: NoiseSchedule, timesteps: Vec<usize>) -> Self {
        let ab = schedule.alphas_cumprod();
        let posteriors = timesteps
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let (ab_t, ab_prev) = (ab[t], timesteps.get(i + 1).map_or(1.0, |&p| ab[p]));
                let alpha = ab_t / ab_prev;
                let beta = 1.0 - alpha;
                Posterior {
                    c_x0: ab_prev.sqrt() * beta / (1.0 - ab_t),
                    c_xt: alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab_t),
                    std: ((1.0 - ab_prev) / (1.0 - ab_t) * beta).sqrt(),
                }
            })
            .collect();
        Self {
            schedule,
            timesteps,
            posteriors,
        }
    }
}

impl Scheduler for Ddpm {
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
        let t = vec![self.timesteps[step_index]; sample.dims()[0]];
        let x0 = self
            .schedule
            .clip(self.schedule.x0_from(model_output, sample.clone(), &t)?);
        let p = self.posteriors[step_index];
        let mean = x0.mul_scalar(p.c_x0) + sample.clone().mul_scalar(p.c_xt);
        Ok(if p.std > 0.0 {
            mean + standard_normal(sample.dims(), rng, &sample.device()).mul_scalar(p.std)
        } else {
            mean
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::DiffusionConfig;
    use super::*;

    /// Over all T steps the respaced posterior is the reference's, written from β_t:
    /// c_x0 = β_t √ᾱ_{t−1}/(1 − ᾱ_t), c_xt = √(1 − β_t)(1 − ᾱ_{t−1})/(1 − ᾱ_t),
    /// β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t), with ᾱ_{−1} = 1.
    #[test]
    fn the_full_chain_has_the_reference_posterior() {
        let s = DiffusionConfig::new().init().unwrap();
        let ddpm = Ddpm::new(s.clone(), (0..1000).rev().collect());
        let (b, ab) = (s.betas(), s.alphas_cumprod());
        for (i, t) in (0..1000).rev().enumerate() {
            let prev = if t == 0 { 1.0 } else { ab[t - 1] };
            let want = Posterior {
                c_x0: b[t] * prev.sqrt() / (1.0 - ab[t]),
                c_xt: (1.0 - b[t]).sqrt() * (1.0 - prev) / (1.0 - ab[t]),
                std: (b[t] * (1.0 - prev) / (1.0 - ab[t])).sqrt(),
            };
            let got = ddpm.posteriors[i];
            for (g, w) in [
                (got.c_x0, want.c_x0),
                (got.c_xt, want.c_xt),
                (got.std, want.std),
            ] {
                assert!(
                    (g - w).abs() <= 1e-10 * w.abs().max(1e-3),
                    "t = {t}: {got:?} vs {want:?}"
                );
            }
        }
        // The last step returns x̂0 itself, without noise.
        assert_eq!(ddpm.posteriors[999].c_xt, 0.0);
        assert_eq!(ddpm.posteriors[999].std, 0.0);
        assert!((ddpm.posteriors[999].c_x0 - 1.0).abs() < 1e-12);
    }
}
