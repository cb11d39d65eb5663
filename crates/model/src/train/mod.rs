//! Training loops (the two VAE stages, the latent predictor) and what Burn does not
//! provide for them: global-norm gradient clipping, an exponential moving average of the
//! weights, closed-form schedules and crash-safe checkpoints.

pub mod checkpoint;
pub mod clip;
pub mod diffusion;
pub mod ema;
pub mod schedule;
pub mod vae;
