//! Conditional denoiser of fiberflow's latent diffusion: a U-Net over whole latent volumes
//! `(B, C, S, h, w)` whose 3D convolutions (`slice_kernel` 3) and volume-wide attention
//! couple the slices, where the reference denoised every slice as an independent 2D image
//! (2D convolutions, attention within one slice). Diffusion model of Ho et al., "Denoising
//! Diffusion Probabilistic Models" (NeurIPS 2020); latent form of Rombach et al.,
//! "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022).
//! With `time_conditioned = false` the same network is the direct latent conditioner.

mod attention;
mod attention_spec;
mod blocks;
mod config;
mod embedding;
mod network;
#[cfg(test)]
mod tests;

pub use attention_spec::parse_attention;
pub use config::UNetConfig;
pub use network::UNet;
