//! Training loops (the two VAE stages, the latent predictor, the refiner) and what Burn does not
//! provide for them: global-norm gradient clipping, an exponential moving average of the
//! weights, closed-form schedules, crash-safe checkpoints and data parallelism over
//! several devices.

pub mod clip;
pub mod diffusion;
pub mod ema;
pub mod parallel;
pub mod refine;
pub(crate) mod runner;
pub mod schedule;
pub(crate) mod state;
pub mod vae;
