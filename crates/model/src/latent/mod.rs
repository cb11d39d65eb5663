//! The frozen dual VAE seen from the diffusion stage, and its latent cache.

pub mod cache;
pub mod dual_vae;

pub use cache::{LatentCache, SampleLatents, encode_dataset};
pub use dual_vae::DualVae;
