//! fiberflow's neural networks and their training, on Burn 0.22 (backend chosen at run
//! time through a `Device`: `Device::flex()` on CPU, `Device::cuda(i)` with the `cuda`
//! feature). This is the only crate that depends on the ML framework.

pub mod batch;
pub mod device;
pub mod error;
pub mod loss;
pub mod metrics;
pub mod ops;
pub mod train;
pub mod vae;

pub use error::ModelError;
