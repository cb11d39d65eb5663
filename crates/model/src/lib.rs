//! fiberflow's neural networks and their training, on Burn 0.22 (backend chosen at run
//! time through a `Device`: `Device::flex()` on CPU, `Device::cuda(i)` with the `cuda`
//! feature). This is the only crate that depends on the ML framework.

pub mod batch;
pub mod bench;
pub mod bundle;
pub mod device;
pub mod diffusion;
pub mod error;
pub mod latent;
pub mod loss;
pub mod metrics;
pub mod ops;
pub mod physics;
pub mod precision;
pub mod predict;
pub mod refine;
pub mod run;
pub mod train;
pub mod unet;
pub mod vae;

pub use error::ModelError;
