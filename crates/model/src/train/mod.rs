//! Training utilities Burn does not provide: global-norm gradient clipping and an
//! exponential moving average of the weights.

pub mod checkpoint;
pub mod diffusion;
pub mod clip;
pub mod ema;
pub mod schedule;
pub mod vae;
