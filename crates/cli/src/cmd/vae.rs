//! `fiberflow vae`: use a trained dual VAE — cache its latents for diffusion training,
//! or look at what it reconstructs.

use crate::progress::Bar;
use anyhow::Result;
use clap::{Args, Subcommand};
use fiberflow_data::Dataset;
use fiberflow_model::latent::{DualVae, encode_dataset};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct VaeArgs {
    #[command(subcommand)]
    what: VaeWhat,
}

#[derive(Subcommand, Debug)]
enum VaeWhat {
    /// Write μ of E3D(U) and E2D(U_2d) for every sample into DATASET/latents/<vae key>/,
    /// so diffusion training never recomputes the frozen encoders. Resumes if interrupted.
    Encode(EncodeArgs),
}

#[derive(Args, Debug)]
struct EncodeArgs {
    /// A finished stage-2 VAE run folder (it names its stage-1 run).
    #[arg(long)]
    vae: PathBuf,
    #[arg(long)]
    dataset: PathBuf,
    /// `cpu`, or `cuda` / `cuda:N` in a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: VaeArgs) -> Result<()> {
    let VaeWhat::Encode(a) = a.what;
    let device = fiberflow_model::device::select(&a.device)?;
    let vae = DualVae::load(&a.vae, &device)?;
    let dataset = Dataset::open(&a.dataset)?;
    let cache = encode_dataset(&vae, &dataset, &device, &mut Bar::default())?;
    println!(
        "{} latents of shape {:?} -> {}",
        cache.meta.samples,
        cache.meta.latent_shape,
        cache.dir.display()
    );
    Ok(())
}
