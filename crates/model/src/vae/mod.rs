//! Dual-branch variational autoencoder for 3D flow volumes `(B, 3, S, H, W)`.
//!
//! Kingma & Welling, "Auto-Encoding Variational Bayes" (ICLR 2014); convolutional layout as
//! in the latent-diffusion autoencoder of Rombach et al., "High-Resolution Image Synthesis
//! with Latent Diffusion Models" (CVPR 2022), with 3D convolutions that mix neighbouring
//! slices and downsampling in H and W only, so the latent keeps every slice:
//! `(B, Cz, S, H/f, W/f)`. The 3D branch (E3D, D3D) encodes the full flow; the 2D branch
//! (E2D, D2D) encodes the per-slice flow (vz = 0) into the same latent space.

pub(crate) mod blocks;
mod config;
mod decoder;
mod encoder;

pub use blocks::ResBlock;
pub use config::VaeConfig;
pub use decoder::Decoder;
pub use encoder::Encoder;

use burn::prelude::*;
use burn::tensor::Distribution;

/// One encoder/decoder pair (E3D + D3D, or E2D + D2D).
#[derive(Module, Debug)]
pub struct VaeBranch {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

/// What a branch's forward pass returns.
pub struct VaeOutput {
    pub reconstruction: Tensor<5>,
    pub mu: Tensor<5>,
    pub logvar: Tensor<5>,
}

impl VaeBranch {
    /// Encodes, samples z = μ + σ·ε with the given standard-normal `noise` ε (shape
    /// [`VaeConfig::latent_shape`]; z = μ without it) and decodes; `geometry` as for
    /// [`Encoder::forward`]. The caller draws ε, so a training step does not depend on
    /// which device or thread computes it.
    pub fn forward(
        &self,
        x: Tensor<5>,
        geometry: Option<Tensor<5>>,
        noise: Option<Tensor<5>>,
    ) -> VaeOutput {
        let (mu, logvar) = self.encoder.forward(x, geometry.clone());
        let z = match noise {
            Some(eps) => reparameterize(mu.clone(), logvar.clone(), eps),
            None => mu.clone(),
        };
        VaeOutput {
            reconstruction: self.decoder.forward(z, geometry),
            mu,
            logvar,
        }
    }
}

/// z = μ + exp(½ log σ²)·ε.
pub fn reparameterize(mu: Tensor<5>, logvar: Tensor<5>, eps: Tensor<5>) -> Tensor<5> {
    mu + logvar.mul_scalar(0.5).exp() * eps
}

/// Standard-normal ε of `shape` from `device`'s seeded generator.
pub fn standard_noise(shape: [usize; 5], device: &Device) -> Tensor<5> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}
