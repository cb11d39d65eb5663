//! Noise schedules of the variance-preserving forward process
//! q(x_t | x0) = N(√ᾱ_t x0, (1 − ᾱ_t) I) with ᾱ_t = Π_{s ≤ t} (1 − β_s): the linear β_t of
//! Ho et al. 2020, "Denoising Diffusion Probabilistic Models", and the cosine ᾱ of
//! Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", eq. 17.
//! Computed in f64 (as the reference) so ᾱ near t = T − 1 (~4e-5) keeps its digits.

use super::{DiffusionConfig, Prediction};
use crate::error::ModelError;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::f64::consts::FRAC_PI_2;

/// Offset s of the cosine schedule, so β_0 is not vanishingly small (Nichol & Dhariwal).
const COSINE_OFFSET: f64 = 0.008;
/// Largest β of the cosine schedule: its last β would be 1 (ᾱ = 0, pure noise, x0 lost).
const COSINE_MAX_BETA: f64 = 0.999;

/// How β_t grows with t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// β_t evenly spaced from `beta_start` to `beta_end` (Ho et al. 2020; the reference).
    Linear,
    /// ᾱ(t) = f(t)/f(0), f(t) = cos²(((t + 1)/T + s)/(1 + s) · π/2), s = 0.008, β ≤ 0.999
    /// (Nichol & Dhariwal 2021): destroys information more evenly over t than linear.
    Cosine,
}

/// β_t and ᾱ_t of one configuration, with the prediction type and x̂0 clamp the samplers
/// need. Built by [`DiffusionConfig::init`].
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    prediction: Prediction,
    clip_x0: Option<f64>,
}

impl NoiseSchedule {
    /// Computes the schedule of a validated configuration.
    pub(super) fn new(config: &DiffusionConfig) -> Self {
        let n = config.train_timesteps;
        let betas: Vec<f64> = match config.beta_schedule {
            BetaSchedule::Linear => {
                let step = (config.beta_end - config.beta_start) / (n - 1) as f64;
                (0..n)
                    .map(|i| config.beta_start + step * i as f64)
                    .collect()
            }
            BetaSchedule::Cosine => {
                let f = |u: f64| {
                    ((u + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let (u0, u1) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - f(u1) / f(u0)).min(COSINE_MAX_BETA)
                    })
                    .collect()
            }
        };
        let alphas_cumprod = betas
            .iter()
            .scan(1.0, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        Self {
            betas,
            alphas_cumprod,
            prediction: config.prediction,
            clip_x0: config.clip_x0,
        }
    }

    /// T, the number of training timesteps.
    pub fn train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// β_t for t = 0 … T − 1.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// ᾱ_t = Π_{s ≤ t} (1 − β_s) for t = 0 … T − 1.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// What the denoiser predicts.
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// Bound of the samplers' x̂0 clamp, if any.
    pub fn clip_x0(&self) -> Option<f64> {
        self.clip_x0
    }

    /// n training timesteps drawn uniformly from {0, …, T − 1} (as the reference).
    pub fn sample_timesteps(&self, n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
        (0..n)
            .map(|_| rng.random_range(0..self.train_timesteps()))
            .collect()
    }

    /// Checks one timestep per sample of a batch of `batch`.
    pub(super) fn check_timesteps(&self, t: &[usize], batch: usize) -> Result<(), ModelError> {
        if t.len() != batch {
            return Err(ModelError::Input(format!(
                "{} timesteps for a batch of {batch}; give one per sample",
                t.len()
            )));
        }
        match t.iter().find(|&&t| t >= self.train_timesteps()) {
            Some(t) => Err(ModelError::Input(format!(
                "timestep {t} is outside 0..{}",
                self.train_timesteps()
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn linear_schedule_matches_the_reference_values() {
        let s = DiffusionConfig::new().init().unwrap();
        let (b, a) = (s.betas(), s.alphas_cumprod());
        assert_eq!(s.train_timesteps(), 1000);
        assert!((b[0] - 1e-4).abs() < 1e-18 && (b[999] - 0.02).abs() < 1e-15);
        // ᾱ of the reference's linear β schedule (1e-4 → 0.02, T = 1000).
        assert!((a[0] - 0.9999).abs() < 1e-15, "{}", a[0]);
        assert!((a[499] - 0.0786).abs() < 5e-5, "{}", a[499]);
        assert!((a[999] - 4.04e-5).abs() < 5e-8, "{}", a[999]);
        assert!((a[999].sqrt() - 6.35e-3).abs() < 5e-6);
        // The mean of an evenly spaced β is the mid-point of its ends.
        let sum: f64 = b.iter().sum();
        assert!((sum - 500.0 * (1e-4 + 0.02)).abs() < 1e-12);
    }

    #[test]
    fn cosine_schedule_matches_its_closed_form() {
        let t = 1000;
        let s = DiffusionConfig::new()
            .with_beta_schedule(BetaSchedule::Cosine)
            .init()
            .unwrap();
        let f = |u: f64| {
            ((u + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                .cos()
                .powi(2)
        };
        // Unclipped, the product of ratios telescopes: ᾱ_i = f((i + 1)/T) / f(0).
        for i in [0, 1, 10, 250, 500, 900, 998] {
            let want = f((i + 1) as f64 / t as f64) / f(0.0);
            let got = s.alphas_cumprod()[i];
            assert!((got / want - 1.0).abs() < 1e-10, "i = {i}: {got} vs {want}");
        }
        // Only the last β (which would be 1) is clipped.
        assert_eq!(s.betas()[t - 1], 0.999);
        assert!(s.betas()[..t - 1].iter().all(|&b| 0.0 < b && b < 0.999));
        assert!(s.betas().windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn training_timesteps_are_uniform_and_seeded() {
        let s = DiffusionConfig::new()
            .with_train_timesteps(10)
            .init()
            .unwrap();
        let draw = |seed| s.sample_timesteps(20_000, &mut ChaCha8Rng::seed_from_u64(seed));
        let t = draw(1);
        assert_eq!(t, draw(1));
        assert_ne!(t, draw(2));
        let mut counts = [0usize; 10];
        t.iter().for_each(|&t| counts[t] += 1);
        // Binomial(20000, 0.1): mean 2000, σ ≈ 42; allow 5σ.
        assert!(counts.iter().all(|&c| c.abs_diff(2000) < 210), "{counts:?}");
    }

    #[test]
    fn timesteps_are_checked_against_the_batch_and_t() {
        let s = DiffusionConfig::new().init().unwrap();
        assert!(s.check_timesteps(&[0, 999], 2).is_ok());
        let e = s.check_timesteps(&[0], 2).unwrap_err().to_string();
        assert!(e.contains("1 timesteps for a batch of 2"), "{e}");
        let e = s.check_timesteps(&[3, 1000], 2).unwrap_err().to_string();
        assert!(e.contains("timestep 1000 is outside 0..1000"), "{e}");
    }
}
