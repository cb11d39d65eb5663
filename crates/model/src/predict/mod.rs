//! The predictor API used by `evaluate` and `predict`: (microstructure, U_2d) → U_3d in
//! m/s, masked to zero in fibres, from a trained diffusion (or direct) run and the dual
//! VAE it references.

pub mod inputs;
mod pipeline;
mod refined;
pub mod sampling;
mod symmetry;

pub use pipeline::{PredictOutput, PredictRequest};
pub use refined::RefinerPart;

use crate::batch::TensorBatch;
use crate::diffusion::{NoiseSchedule, SamplerConfig, SamplerKind, TimestepSpacing, seeded_rng};
use crate::error::ModelError;
use crate::latent::DualVae;
use crate::physics;
use crate::precision::Precision;
use crate::run::RunKind;
use crate::run::checkpoint;
use crate::run::checkpoint::{BEST_FILE, LOG_FILE};
use crate::run::diffusion::DiffusionRunLog;
use crate::unet::UNet;
use burn::prelude::*;
use burn::tensor::TensorData;
use fiberflow_data::json::read_json;
use inputs::ConditionInputs;
use sampling::{KnownLatent, LatentPredictor, PhysicsGuidance, PredictorKind, SampleOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Optional steering of the sampling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Steering {
    /// Weight of the physics guidance (0 = off); the model must be loaded on an autodiff
    /// device (`device.autodiff()`).
    pub physics: f64,
    /// Slices whose 3D flow is known — the batch's U there — imposed by re-injection
    /// during sampling and returned as given.
    pub known_slices: Vec<usize>,
}

/// `(1, 1, S, 1, 1)`: 1 on the listed slices.
fn slice_mask(slices: &[usize], s: usize, device: &Device) -> Tensor<5> {
    let mut v = vec![0f32; s];
    for &k in slices {
        v[k] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [1, 1, s, 1, 1]), device)
}

/// Peak bytes of predicting `draws` draws of an `(S, H, W)` stack: the draws, their mean
/// and spread and the inputs (2·draws + 8 fields of `(S, 3, H, W)` f32) and the networks'
/// full-resolution activations (≈ 1 KiB per voxel measured at 256², doubled for margin).
/// `None` on overflow. Checked against the memory budget before any input is solved.
fn memory_estimate(draws: usize, [s, h, w]: [usize; 3]) -> Option<u128> {
    use fiberflow_data::budget::array_bytes;
    let fields = array_bytes(&[draws.checked_mul(2)?.checked_add(8)?, s, 3, h, w], 4)?;
    fields.checked_add(array_bytes(&[s, h, w], 2048)?)
}

/// Refuses, with the estimate, a prediction of `draws` draws of an `(S, H, W)` stack that
/// exceeds the memory budget.
pub fn check_memory(draws: usize, [s, h, w]: [usize; 3]) -> Result<(), ModelError> {
    fiberflow_data::budget::check(
        format!("predicting {draws} draws of a {s}×{h}×{w} stack"),
        memory_estimate(draws, [s, h, w]),
    )
    .map_err(|e| ModelError::Input(e.to_string()))
}

/// What the point prediction (`U_pred`, and what `evaluate` scores) of a diffusion model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum PointEstimate {
    /// The denoiser's own estimate of the posterior mean: x̂0 at the first, noisiest step
    /// (Tweedie's formula, E[x0 | x_T, c] with x_T almost independent of x0, so ≈
    /// E[x0 | c]), decoded and averaged over the draws' starting noises. One network
    /// evaluation per draw; free of a finite ensemble's sampling error, which makes the
    /// mean of K draws (1 + 1/K)^½ worse than the posterior mean for a calibrated model.
    #[default]
    PosteriorMean,
    /// The mean of the draws.
    DrawMean,
}

/// Which point estimate [`TrainedModel::sample_estimate`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EstimateRequest {
    pub kind: PointEstimate,
    /// Draws (or, for the posterior mean, starting noises) per image.
    pub noises: usize,
    /// Seeds the noise; draw j of every image uses stream j.
    pub seed: u64,
    /// Average over the eight mirror images of the input.
    pub symmetrize: bool,
    /// Apply the model's refiner, when it has one.
    pub refine: bool,
}

impl Default for EstimateRequest {
    /// `predict`'s and `evaluate`'s default: the refined posterior mean over the eight
    /// mirror images.
    fn default() -> Self {
        Self {
            kind: PointEstimate::PosteriorMean,
            noises: 1,
            seed: 0,
            symmetrize: true,
            refine: true,
        }
    }
}

/// A trained run, loaded for inference.
pub struct TrainedModel {
    pub unet: UNet,
    /// SHA-256 of the denoiser's weight file, recorded by evaluations.
    pub weights_sha256: String,
    pub vae: DualVae,
    pub schedule: NoiseSchedule,
    pub log: DiffusionRunLog,
    /// The full-resolution refiner of the point estimate, for a model loaded from a
    /// refiner run (or a bundle of one).
    pub refiner: Option<RefinerPart>,
}

impl TrainedModel {
    /// Loads the best (EMA) weights of a diffusion run and the VAE it names; refuses a VAE
    /// whose weights changed since (its key differs).
    /// `path` may also be a model bundle file (`fiberflow model export`), or a refiner
    /// run (`fiberflow train refiner`), which loads the model it refines.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        if path.is_file() {
            return crate::bundle::Bundle::open(path)?.load(device);
        }
        if let Some(log) = RefinerPart::run_log(path)? {
            return Self::load(&log.base.clone(), device)?.with_refiner(path, log, device);
        }
        let log = Self::run_log(path)?;
        let vae = DualVae::load(&log.vae, device)?;
        Self::assemble(path, log, vae, device)
    }

    /// The log of a diffusion or direct run folder, with a VAE run named as such.
    pub fn run_log(run_dir: &Path) -> Result<DiffusionRunLog, ModelError> {
        let fix = "pass the folder of a diffusion run (fiberflow train diffusion)";
        let raw: serde_json::Value = read_json(&run_dir.join(LOG_FILE), fix)?;
        // A VAE run's log parses as JSON but not as a diffusion log; name the mix-up.
        if RunKind::of(&raw) == Some(RunKind::Vae) {
            let stage = if raw["stage"] == "One" { 1 } else { 2 };
            return Err(ModelError::Input(format!(
                "{} is a VAE run (stage {stage}), not a diffusion or direct run; train one on it with `fiberflow train diffusion --vae {}` and pass that run",
                run_dir.display(),
                run_dir.display()
            )));
        }
        let mut log: DiffusionRunLog = serde_json::from_value(raw).map_err(|e| {
            ModelError::Input(format!(
                "{}: not a diffusion run's log ({e}); {fix}",
                run_dir.join(LOG_FILE).display()
            ))
        })?;
        log.config.reconcile_older_run();
        Ok(log)
    }

    /// The model of run folder `run_dir` (its parsed log `log`) with its VAE, checked
    /// against each other.
    pub fn assemble(
        run_dir: &Path,
        log: DiffusionRunLog,
        vae: DualVae,
        device: &Device,
    ) -> Result<Self, ModelError> {
        if vae.key != log.vae_key {
            return Err(ModelError::Config(format!(
                "the VAE {} changed since {} was trained (key {} ≠ {}); retrain the diffusion model",
                log.vae.display(),
                run_dir.display(),
                &vae.key[..16],
                &log.vae_key[..16.min(log.vae_key.len())]
            )));
        }
        let mut expected = log.config.clone();
        expected.fit_to_latent(vae.config.latent_channels, vae.config.downsample_factor());
        if expected.unet.in_channels != log.config.unet.in_channels {
            return Err(ModelError::Config(format!(
                "{}: the network takes {} input channels, but its config implies {}; the run's \
                 log.json was edited or comes from another fiberflow version",
                run_dir.display(),
                log.config.unet.in_channels,
                expected.unet.in_channels
            )));
        }
        // Frozen: on an autodiff device only inputs get gradients (physics guidance).
        let best = run_dir.join(BEST_FILE);
        let unet = checkpoint::load(log.config.unet.init(device)?, &best)?.no_grad();
        let bytes = std::fs::read(&best).map_err(|e| ModelError::checkpoint(&best, e))?;
        let weights_sha256 = format!("{:x}", Sha256::digest(&bytes));
        let schedule = log.config.diffusion.init()?;
        Ok(Self {
            unet,
            weights_sha256,
            vae,
            schedule,
            log,
            refiner: None,
        })
    }

    /// The model with its networks (denoiser, E2D, E3D, D3D) computing in `precision`;
    /// inputs and outputs stay f32, and so does the refiner (one evaluation, a small part
    /// of the cost).
    pub fn with_precision(self, precision: Precision) -> Self {
        let vae = DualVae {
            e2d: precision.cast(self.vae.e2d),
            e3d: precision.cast(self.vae.e3d),
            d3d: precision.cast(self.vae.d3d),
            ..self.vae
        };
        Self {
            unet: precision.cast(self.unet),
            vae,
            ..self
        }
    }

    /// The latent network with its schedule.
    pub fn latent_predictor(&self) -> LatentPredictor<'_> {
        LatentPredictor {
            unet: &self.unet,
            schedule: &self.schedule,
            kind: self.log.config.predictor,
        }
    }

    /// Checks that a batch fits the networks: H and W divisible by the VAE's and the
    /// denoiser's downsampling, and flow and geometry shapes consistent. Any slice count
    /// works (the networks are convolutional along z).
    pub fn check_input(&self, tb: &TensorBatch) -> Result<(), ModelError> {
        let [b, c, s, h, w] = tb.u2d.dims();
        if c != self.vae.config.in_channels || tb.geometry.dims()[2..] != [s, h, w] {
            return Err(ModelError::Input(format!(
                "the 2D flow has shape {:?} and the microstructure {:?}; they must agree",
                tb.u2d.dims(),
                tb.geometry.dims()
            )));
        }
        self.vae.config.check_input(h, w)?;
        let f = self.vae.config.downsample_factor();
        let unet = self.unet.config();
        unet.check_input([b, unet.in_channels, s, h / f, w / f])
            .map_err(|e| {
                ModelError::Input(format!(
                    "{e} (the latent of an H × W = {h} × {w} input is {} × {}; H and W must be multiples of {})",
                    h / f,
                    w / f,
                    f * unet.downsample_factor()
                ))
            })
    }

    /// `k` predictions of the batch's 3D flow `(B, 3, S, H, W)` in m/s, masked; draw j
    /// uses noise seeded by (`seed`, j), so a prediction does not depend on how many
    /// others are drawn.
    pub fn predict(
        &self,
        tb: &TensorBatch,
        options: &SampleOptions,
        k: usize,
        seed: u64,
    ) -> Result<Vec<Tensor<5>>, ModelError> {
        self.predict_steered(tb, options, k, seed, &Steering::default())
    }

    /// The point prediction `(B, 3, S, H, W)` in m/s of `estimate` from `k` draws seeded
    /// as in [`Self::predict`]; a direct predictor's one prediction whatever `estimate`.
    /// Steering (known slices, physics guidance) acts through the steps of full draws, so
    /// with either the estimate is the mean of the draws ([`Self::estimate_for`]).
    pub fn point_estimate(
        &self,
        tb: &TensorBatch,
        options: &SampleOptions,
        (estimate, k, seed): (PointEstimate, usize, u64),
        steering: &Steering,
    ) -> Result<Tensor<5>, ModelError> {
        // A direct predictor's draws are all the same.
        let k = match self.log.config.predictor {
            PredictorKind::Direct => k.min(1),
            PredictorKind::Diffusion => k,
        };
        let options = match self.estimate_for(estimate, steering) {
            PointEstimate::DrawMean => options.clone(),
            // One DDIM step from T − 1 returns the clamped x̂0 of the first evaluation.
            PointEstimate::PosteriorMean => SampleOptions {
                sampler: SamplerConfig::new()
                    .with_kind(SamplerKind::Ddim)
                    .with_steps(1)
                    .with_eta(0.0)
                    .with_spacing(TimestepSpacing::Trailing),
                guidance: options.guidance,
            },
        };
        let draws = self.predict_steered(tb, &options, k, seed, steering)?;
        let n = draws.len() as f64;
        let sum = draws
            .into_iter()
            .reduce(|a, b| a + b)
            .ok_or_else(|| ModelError::Config("a point estimate needs ≥ 1 draw".into()))?;
        Ok(sum.div_scalar(n))
    }

    /// The estimate [`Self::point_estimate`] makes when asked for `estimate`: the mean of
    /// the draws when `steering` is on, since the posterior mean's single evaluation at
    /// T − 1 would all but ignore it (a known slice re-injected there carries √ᾱ ≈ 0.006
    /// of its signal).
    pub fn estimate_for(&self, estimate: PointEstimate, steering: &Steering) -> PointEstimate {
        if steering.physics > 0.0 || !steering.known_slices.is_empty() {
            PointEstimate::DrawMean
        } else {
            estimate
        }
    }

    /// [`Self::predict`] with physics guidance and/or known slices.
    pub fn predict_steered(
        &self,
        tb: &TensorBatch,
        options: &SampleOptions,
        k: usize,
        seed: u64,
        steering: &Steering,
    ) -> Result<Vec<Tensor<5>>, ModelError> {
        self.check_input(tb)?;
        let [_, _, s, _, _] = tb.u.dims();
        if let Some(&bad) = steering.known_slices.iter().find(|&&k| k >= s) {
            return Err(ModelError::Input(format!(
                "known slice {bad} is beyond the {s} slices"
            )));
        }
        if !(steering.physics.is_finite() && steering.physics >= 0.0) {
            return Err(ModelError::Config(format!(
                "physics guidance weight {} must be ≥ 0",
                steering.physics
            )));
        }
        let scales = &self.log.scales;
        let inputs = ConditionInputs::new(&self.vae, tb, scales, self.log.config.conditioning())?;
        let known = (!steering.known_slices.is_empty()).then(|| {
            let m = slice_mask(&steering.known_slices, s, &tb.u.device());
            let u = tb.u.clone() * m.clone() + tb.u2d.clone() * (m.ones_like() - m.clone());
            let known_tb = TensorBatch {
                u,
                u2d: tb.u2d.clone(),
                mask: tb.mask.clone(),
                geometry: tb.geometry.clone(),
                pressure: tb.pressure.clone(),
                dxyz: tb.dxyz,
            };
            let x0 = scales
                .target_of(self.vae.encode_3d(&known_tb), inputs.mu2d.clone())
                .detach();
            let mask = x0.ones_like() * m.clone();
            (KnownLatent { x0, mask }, m)
        });
        let residual = |x0: Tensor<5>| -> Result<Tensor<1>, ModelError> {
            let u = self
                .vae
                .decode_unmasked(scales.latent(x0, inputs.mu2d.clone()), tb);
            Ok(physics::residual(u, tb.mask.clone(), tb.dxyz))
        };
        let guidance = PhysicsGuidance {
            weight: steering.physics,
            residual: &residual,
        };
        let predictor = self.latent_predictor();
        (0..k)
            .map(|j| {
                let mut rng = seeded_rng(seed);
                rng.set_stream(j as u64);
                let x0 = predictor.sample_steered(
                    inputs.cond.clone(),
                    inputs.geometry.clone(),
                    options,
                    &mut rng,
                    (
                        (steering.physics > 0.0).then_some(&guidance),
                        known.as_ref().map(|(k, _)| k),
                    ),
                )?;
                let u = self
                    .vae
                    .decode(scales.latent(x0.detach(), inputs.mu2d.clone()), tb)
                    .detach();
                // Known slices are data: they are returned as given.
                Ok(match &known {
                    Some((_, m)) => {
                        let truth = self.vae.normalizer.denormalize(tb.u.clone()) * tb.mask.clone();
                        u * (m.ones_like() - m.clone()) + truth * m.clone()
                    }
                    None => u,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod memory_tests {
    #[test]
    fn the_memory_estimate_is_the_hand_computed_one_and_never_overflows() {
        // 1 draw of 11×1024×1024: 10 fields of 11·3·2²⁰ f32 and 2 KiB per voxel.
        let voxels = 11u128 << 20;
        assert_eq!(
            super::memory_estimate(1, [11, 1024, 1024]),
            Some(10 * 3 * voxels * 4 + voxels * 2048)
        );
        assert_eq!(super::memory_estimate(usize::MAX, [11, 64, 64]), None);
        let e = super::check_memory(1, [11, 1024, 1024])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("predicting 1 draws of a 11×1024×1024 stack needs 23.29 GiB"),
            "{e}"
        );
    }
}
