//! `fiberflow bench vae|diffusion`: time per training sample of a VAE stage-1 step and
//! of a latent denoiser step, at the default architectures and the reference project's.

use super::{BenchArgs, memory_note};
use anyhow::Result;
use fiberflow_geometry::layout::SliceGrid;
use fiberflow_model::ModelError;
use fiberflow_model::bench::{DenoiserStep, StepBench, VaeStep, bench_training};
use fiberflow_model::device::Device;
use fiberflow_model::train::diffusion::DiffusionTrainConfig;
use fiberflow_model::train::vae::VaeTrainConfig;
use fiberflow_model::unet::UNetConfig;
use fiberflow_model::vae::VaeConfig;
use serde::Serialize;

/// Which architecture a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// The training configs' defaults (sized for a CPU).
    Default,
    /// The VAE default before patch embedding: widths 8/16/32 from a full-resolution
    /// level (the denoiser as `Default`), measured beside it for the speed-up.
    FullResolution,
    /// `VaeConfig::reference()` / `UNetConfig::reference()`.
    Reference,
}

impl Architecture {
    pub(super) fn vae(self) -> VaeConfig {
        match self {
            Self::Default => VaeTrainConfig::default().vae,
            Self::FullResolution => VaeConfig::new(),
            Self::Reference => VaeConfig::reference(),
        }
    }

    pub(super) fn unet(self) -> UNetConfig {
        match self {
            Self::Default | Self::FullResolution => DiffusionTrainConfig::default().unet,
            Self::Reference => UNetConfig::reference(),
        }
    }
}

/// One measured (or, for a reference architecture that does not fit the size, skipped)
/// training step.
#[derive(Serialize)]
pub struct StepRow {
    /// `vae` or `denoiser`.
    network: &'static str,
    /// The `--device` name it ran on.
    device: String,
    architecture: Architecture,
    /// The flow volume `[S, H, W]`; the denoiser works on its latent.
    sample: [usize; 3],
    batch: usize,
    #[serde(flatten)]
    measured: Option<StepBench>,
    skipped: Option<String>,
}

impl super::Measured for StepRow {
    fn device(&self) -> &str {
        &self.device
    }

    fn what(&self) -> String {
        let [s, h, w] = self.sample;
        format!(
            "{} {:?} {s}x{h}x{w} batch {} (training step)",
            self.network, self.architecture, self.batch
        )
    }

    fn seconds(&self) -> Option<f64> {
        self.measured.as_ref().map(|m| m.seconds_per_sample)
    }
}

/// The rows to measure: the default architecture at --size, and unless --default-only the
/// reference one at --size and, with --reference, at the reference resolution.
fn plan(a: &BenchArgs) -> Vec<(Architecture, [usize; 3])> {
    let mut rows = vec![(Architecture::Default, [a.slices, a.size, a.size])];
    if !a.default_only {
        rows.push((Architecture::Reference, [a.slices, a.size, a.size]));
        if a.reference {
            let r = SliceGrid::default();
            rows.push((Architecture::Reference, [r.slices, r.size, r.size]));
        }
    }
    rows
}

/// Keeps a measurement, or records why a reference architecture cannot take the size;
/// anything else is an error.
fn row(
    what: &'static str,
    device: &str,
    architecture: Architecture,
    sample: [usize; 3],
    batch: usize,
    result: Result<StepBench, ModelError>,
) -> Result<StepRow> {
    let (measured, skipped) = match result {
        Ok(m) => {
            println!(
                "{what:9} {device:9} {architecture:14?} {:>12} batch {batch}: {:8.3} s/sample (step median {:.3} s, min {:.3} s), {} parameters{}",
                format!("{}x{}x{}", sample[0], sample[1], sample[2]),
                m.seconds_per_sample,
                m.timing.median_s,
                m.timing.min_s,
                m.parameters,
                memory_note(m.memory)
            );
            (Some(m), None)
        }
        Err(ModelError::Input(why)) if architecture == Architecture::Reference => {
            println!("{what:9} {device:9} {architecture:14?} {sample:?}: skipped, {why}");
            (None, Some(why))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(StepRow {
        network: what,
        device: device.to_string(),
        architecture,
        sample,
        batch,
        measured,
        skipped,
    })
}

/// VAE stage-1 steps, the default beside the full-resolution design it replaced.
pub(super) fn vae(a: &BenchArgs, name: &str, device: &Device) -> Result<Vec<StepRow>> {
    let mut plan = plan(a);
    plan.insert(1, (Architecture::FullResolution, plan[0].1));
    let rows = plan
        .into_iter()
        .map(|(arch, sample)| {
            let cfg = VaeTrainConfig {
                vae: arch.vae(),
                seed: a.seed,
                ..Default::default()
            };
            let batch = a.batch.unwrap_or(cfg.batch_size);
            let result = bench_training(|| VaeStep::new(&cfg, sample, batch, device), a.repeats());
            row("vae", name, arch, sample, batch, result)
        })
        .collect::<Result<Vec<_>>>()?;
    let per_sample = |i: usize| rows[i].measured.as_ref().map(|m| m.seconds_per_sample);
    if let (Some(new), Some(old)) = (per_sample(0), per_sample(1)) {
        println!(
            "vae       {name:9} the default step costs {:.2}× less per sample than the full-resolution design",
            old / new
        );
    }
    Ok(rows)
}

/// Latent denoiser steps on the latent of each architecture's VAE.
pub(super) fn diffusion(a: &BenchArgs, name: &str, device: &Device) -> Result<Vec<StepRow>> {
    plan(a)
        .into_iter()
        .map(|(arch, sample @ [s, h, w])| {
            let cfg = DiffusionTrainConfig {
                unet: arch.unet(),
                seed: a.seed,
                ..Default::default()
            };
            let vae = arch.vae();
            let f = vae.downsample_factor();
            let batch = a.batch.unwrap_or(cfg.batch_size);
            let latent = [vae.latent_channels, s, h / f, w / f];
            let result = bench_training(
                || DenoiserStep::new(&cfg, latent, batch, device),
                a.repeats(),
            );
            row("denoiser", name, arch, sample, batch, result)
        })
        .collect()
}
