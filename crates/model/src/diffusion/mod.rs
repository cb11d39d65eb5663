//! The latent diffusion process: noise schedules, prediction parameterisations, the
//! training loss and samplers, on `(B, C, S, H, W)` tensors with one timestep per sample.
//!
//! The design follows the stable-diffusion schedulers of candle (and diffusers): one
//! [`NoiseSchedule`] (β_t, ᾱ_t in f64) holds the forward process and the conversions
//! between what the network predicts and x0/ε; samplers implement the [`Scheduler`] trait
//! and are driven by the generic loop [`sample`]:
//!
//! ```no_run
//! # use fiberflow_model::diffusion::*;
//! # use burn::prelude::*;
//! # fn net(x: Tensor<5>, t: &[usize]) -> Tensor<5> { x }
//! let schedule = DiffusionConfig::new().init()?;
//! let mut sampler = SamplerConfig::new().init(&schedule)?; // DDIM, 50 steps, η = 0
//! let mut rng = seeded_rng(7);
//! let x_t = standard_normal([1, 8, 11, 16, 16], &mut rng, &Device::flex());
//! let x0 = sample(sampler.as_mut(), x_t, |x, t| Ok(net(x, t)), &mut rng)?;
//! # Ok::<(), fiberflow_model::ModelError>(())
//! ```

mod config;
mod ddim;
mod ddpm;
mod dpm_solver;
mod loss;
mod noise;
mod prediction;
mod schedule;
mod scheduler;
mod spacing;
#[cfg(test)]
mod testing;

pub use config::DiffusionConfig;
pub use loss::PredictionLoss;
pub use noise::{seeded_rng, standard_normal};
pub use prediction::Prediction;
pub use rand_chacha::ChaCha8Rng;
pub use schedule::{BetaSchedule, NoiseSchedule};
pub use scheduler::{SamplerConfig, SamplerKind, Scheduler, sample};
pub use spacing::TimestepSpacing;
