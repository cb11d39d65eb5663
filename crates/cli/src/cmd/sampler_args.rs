//! Sampler flags shared by `evaluate` and `predict`.

use clap::Args;
use fiberflow_model::device::Device;
use fiberflow_model::diffusion::{SamplerConfig, SamplerKind, TimestepSpacing};
use fiberflow_model::precision::Precision;
use fiberflow_model::predict::sampling::SampleOptions;
use fiberflow_model::predict::{EstimateRequest, PointEstimate, Steering};
use serde::Serialize;

#[derive(Args, Debug, Clone, Serialize)]
pub struct SamplerArgs {
    /// What the point prediction of a diffusion model is (the draws still give the spread;
    /// a direct predictor has one prediction either way). With the posterior mean the
    /// sampler flags shape only the draws (`U_std`); with --known-slices or
    /// --physics-guidance the draws' mean is used.
    #[arg(long, value_enum, default_value_t = PointEstimate::PosteriorMean)]
    pub estimate: PointEstimate,
    /// Average the point prediction over the input's eight mirror images (x, y, z: exact
    /// symmetries of the flow), each mapped back (the posterior mean then takes one noise
    /// per image: 8 network evaluations): 7–10 % less error on the built-in model (the
    /// networks are not mirror-symmetric themselves); `false` for the input as given only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub symmetrize: bool,
    /// Pass the point prediction through the model's full-resolution refiner, when it
    /// has one (`fiberflow train refiner`; the built-in model does); `false` for the
    /// latent networks' estimate alone. The draws (`U_std`) are never refined.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub refine: bool,
    /// Sampler of the draws (DPM-Solver++ is about as accurate in ≤ 10 steps as DDIM in 50).
    #[arg(long, value_enum, default_value_t = SamplerKind::DpmSolver)]
    pub sampler: SamplerKind,
    /// Network evaluations per sample.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// DDIM stochasticity η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// How the sampler's timesteps are spread.
    #[arg(long, value_enum, default_value_t = TimestepSpacing::Trailing)]
    pub spacing: TimestepSpacing,
    /// Classifier-free guidance weight (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f64,
    /// Weight of the physics guidance: the gradient of the decoded field's divergence and
    /// fibre velocity steers every step (0 = off; slower: it differentiates through the
    /// networks).
    #[arg(long, default_value_t = 0.0)]
    pub physics_guidance: f64,
    /// Slices whose true 3D flow is given (from the dataset), e.g. `0,5`: imposed during
    /// sampling by re-injecting their noised latent, and returned as given.
    #[arg(long, value_delimiter = ',')]
    pub known_slices: Vec<usize>,
    /// Float type the networks compute in (inputs, sampler and outputs stay f32): `bf16`
    /// and `f16` are for GPUs (on the CPU they are slower than f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl SamplerArgs {
    /// The point estimate asked for, with `noises` draws per image and `seed`.
    pub fn request(&self, noises: usize, seed: u64) -> EstimateRequest {
        EstimateRequest {
            kind: self.estimate,
            noises,
            seed,
            symmetrize: self.symmetrize,
            refine: self.refine,
        }
    }

    pub fn steering(&self) -> Steering {
        Steering {
            physics: self.physics_guidance,
            known_slices: self.known_slices.clone(),
        }
    }

    /// The device to load the model on: physics guidance differentiates through it.
    pub fn device(&self, device: Device) -> Device {
        if self.physics_guidance > 0.0 {
            device.autodiff()
        } else {
            device
        }
    }

    pub fn options(&self) -> SampleOptions {
        SampleOptions {
            sampler: SamplerConfig::new()
                .with_kind(self.sampler)
                .with_steps(self.steps)
                .with_eta(self.eta)
                .with_spacing(self.spacing),
            guidance: self.guidance,
        }
    }
}

/// Says on stderr when the point estimate asked for is not the one made (steering needs
/// full draws).
pub fn note_estimate(asked: PointEstimate, made: PointEstimate) {
    if asked != made {
        eprintln!(
            "note: --known-slices and --physics-guidance act through the sampler's steps, so the prediction is the mean of the draws (--estimate draw-mean)"
        );
    }
}
