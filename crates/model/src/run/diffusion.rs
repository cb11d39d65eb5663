//! What a diffusion (or direct) run folder records: its training config, the VAE it
//! builds on, the latent scales and the history (`log.json`).

use super::optimiser_settings;
use crate::diffusion::{DiffusionConfig, Prediction, SamplerConfig, SamplerKind, TimestepSpacing};
use crate::error::ModelError;
use crate::metrics::FieldErrors;
use crate::physics::{PhysicsLossConfig, PhysicsMetrics};
use crate::predict::inputs::{Conditioning, LatentScales};
use crate::predict::sampling::PredictorKind;
use crate::unet::UNetConfig;
use fiberflow_data::{Dataset, Subset};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything a diffusion training run needs besides the data and the VAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionTrainConfig {
    pub predictor: PredictorKind,
    /// Network; `in_channels` and `out_channels` are set from the VAE and the predictor.
    pub unet: UNetConfig,
    pub diffusion: DiffusionConfig,
    pub epochs: usize,
    pub batch_size: usize,
    /// Batches whose gradients are summed before one optimiser step; with several
    /// training devices, they are computed in parallel (one device per batch).
    pub accumulation: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Largest global gradient norm.
    pub grad_clip: f64,
    /// EMA decay ceiling (with warm-up); samples and `best_model` use the EMA weights.
    pub ema_decay: f64,
    /// Probability of training a sample without its E2D condition, for classifier-free
    /// guidance at sampling time (Ho & Salimans 2022).
    pub cond_dropout: f64,
    /// Train on μ3d − μ2d instead of μ3d (see [`LatentScales::residual`]).
    pub residual: bool,
    /// Also condition the network on the slice-to-slice change of the per-slice 2D
    /// pressure (`fiberflow_data::features::pressure_change`): the only cheap input that
    /// tells where fluid moves along z. Needs `p_2d`, which generated datasets and
    /// `fiberflow solve` hold and reference imports lack.
    pub pressure_condition: bool,
    /// Fold the full-resolution condition features into the latent grid's channels
    /// instead of averaging them (see `predict::inputs`). On by default; absent (averaged)
    /// in runs written before it existed, which must still read as they were trained.
    #[serde(default)]
    pub fold_features: Option<bool>,
    /// Train each sample, at each epoch, through one of its eight mirrors (x, y, z;
    /// see `fiberflow_data::Mirror`), drawn uniformly: exact Stokes flows of other
    /// packings, against the latent networks' overfitting. Costs 7 more encodings per
    /// training sample, once, and 8× the training split's latents and features in memory.
    /// Absent (off) in runs written before it existed.
    #[serde(default)]
    pub mirror_augmentation: Option<bool>,
    /// Optional physics losses on the decoded x̂0 of each training batch, at the same t
    /// as the prediction (all weights 0 by default).
    pub physics: PhysicsLossConfig,
    /// Sampler of the per-epoch decoded-velocity validation (few steps: it runs every epoch).
    pub val_sampler: SamplerConfig,
    /// Train on the first N samples of the training split only (nested subsets of one
    /// split, for learning curves); all of it when absent.
    pub train_samples: Option<usize>,
    /// Validate on the first N samples of the validation split only (each epoch's
    /// validation costs a pass over it); all of it when absent.
    pub val_samples: Option<usize>,
    pub seed: u64,
}

impl Default for DiffusionTrainConfig {
    fn default() -> Self {
        Self {
            predictor: PredictorKind::Diffusion,
            unet: UNetConfig::new()
                .with_features(vec![16, 32, 64])
                .with_groups(8)
                .with_time_mlp_dim(64),
            // v-prediction: an under-trained ε-model's x̂0 = (x_t − σ ε̂)/α explodes at large
            // t (1/α ≈ 160 at t = 999), while v̂ ≈ 0 gives x̂0 ≈ α x_t ≈ 0, i.e. the
            // cross-reconstruction of the residual target (measured on the quickstart data:
            // decoded vx error 0.85 with ε vs 0.37 with v after the same 15 epochs).
            diffusion: DiffusionConfig::new().with_prediction(Prediction::V),
            epochs: 100,
            batch_size: 4,
            accumulation: 1,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 50,
            weight_decay: 1e-4,
            grad_clip: 1.0,
            ema_decay: 0.999,
            cond_dropout: 0.1,
            residual: true,
            pressure_condition: true,
            fold_features: Some(true),
            mirror_augmentation: Some(false),
            physics: PhysicsLossConfig::default(),
            val_sampler: SamplerConfig::new()
                .with_kind(SamplerKind::DpmSolver)
                .with_steps(10)
                .with_spacing(TimestepSpacing::Trailing),
            train_samples: None,
            val_samples: None,
            seed: 0,
        }
    }
}

impl DiffusionTrainConfig {
    /// Whether training sees the mirrored views of its samples.
    pub fn mirrors(&self) -> bool {
        self.mirror_augmentation.unwrap_or(false)
    }

    /// Which condition features the network sees.
    pub fn conditioning(&self) -> Conditioning {
        Conditioning {
            pressure: self.pressure_condition,
            fold: self.fold_features.unwrap_or(false),
        }
    }

    /// Settings of runs written before they existed: `fold_features` absent means averaged
    /// features, spelled out so that resuming such a run with `--set fold_features=false`
    /// matches it; `pressure_condition` absent reads as the default `true`, and the
    /// network's input channels (one fewer) say it was off.
    pub fn reconcile_older_run(&mut self) {
        self.fold_features = Some(self.conditioning().fold);
        self.mirror_augmentation = Some(self.mirrors());
        let geometry_only = self.predictor.in_channels(
            self.unet.out_channels,
            fiberflow_data::features::GEOMETRY_CHANNELS,
        );
        if self.pressure_condition
            && !self.conditioning().fold
            && self.unet.in_channels == geometry_only
        {
            self.pressure_condition = false;
        }
    }

    /// Checks that the train and validation samples hold what the network will be fed
    /// (`p_2d` when `pressure_condition`), before anything is encoded or trained.
    pub fn check_dataset(&self, dataset: &Dataset) -> Result<(), ModelError> {
        if !self.pressure_condition {
            return Ok(());
        }
        for subset in [Subset::Train, Subset::Val] {
            for i in dataset.indices(Some(subset)) {
                let sample = dataset.open_sample(i)?;
                if !sample.has(fiberflow_data::Field::P2d) {
                    return Err(ModelError::Input(format!(
                        "{}: no per-slice 2D pressure `p_2d` (a reference import, or a \
                         dataset generated before it was stored); regenerate it, or train \
                         with --set pressure_condition=false",
                        sample.path().display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sets the network's input and output channels for latents of `cz` channels.
    /// `factor`: how much coarser the latent grid is than the input.
    pub fn fit_to_latent(&mut self, cz: usize, factor: usize) {
        let features = self.conditioning().channels(factor);
        self.unet.in_channels = self.predictor.in_channels(cz, features);
        self.unet.out_channels = cz;
    }

    /// Checks every field before any data is read.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        optimiser_settings!(self, accumulation: self.accumulation).validate()?;
        if !(0.0..1.0).contains(&self.cond_dropout) {
            return bad(format!(
                "cond_dropout = {} must be in [0, 1)",
                self.cond_dropout
            ));
        }
        if let Some(problem) = self.physics.problem() {
            return bad(problem);
        }
        if self.predictor == PredictorKind::Direct && self.unet.time_conditioned {
            return bad(
                "the direct predictor takes no timestep: set unet.time_conditioned = false".into(),
            );
        }
        if self.predictor == PredictorKind::Diffusion && !self.unet.time_conditioned {
            return bad("a diffusion denoiser needs unet.time_conditioned = true".into());
        }
        let schedule = self.diffusion.init()?;
        if self.predictor == PredictorKind::Diffusion {
            self.val_sampler.init(&schedule)?;
        }
        self.unet.validate()
    }
}

/// One epoch of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionEpoch {
    pub epoch: usize,
    pub steps: usize,
    pub lr: f64,
    /// Mean prediction loss (without the physics terms).
    pub train_loss: f64,
    /// Mean weighted physics loss over the batches that computed it (`None` when off).
    #[serde(default)]
    pub train_physics: Option<f64>,
    /// Loss on the validation split at fixed, seeded (t, ε) per sample, so epochs compare.
    pub val_loss: f64,
    /// Decoded velocity of the validation split, sampled with `val_sampler`, against U.
    pub val_errors: FieldErrors,
    /// Physics terms of those decoded validation predictions (before masking).
    #[serde(default)]
    pub val_physics: PhysicsMetrics,
    pub mean_grad_norm: f64,
    pub seconds: f64,
}

impl super::checkpoint::BestByScore for DiffusionRunLog {
    type Epoch = DiffusionEpoch;

    fn progress(&mut self) -> (&mut Vec<DiffusionEpoch>, &mut f64, &mut Option<usize>) {
        (
            &mut self.history,
            &mut self.best_val_error,
            &mut self.best_epoch,
        )
    }
}

/// `log.json` of a diffusion run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffusionRunLog {
    pub config: DiffusionTrainConfig,
    /// The stage-2 VAE run and the key of its weights.
    pub vae: PathBuf,
    pub vae_key: String,
    pub dataset: PathBuf,
    pub dataset_manifest_sha256: String,
    /// Voxel size (dx, dy, dz = slice pitch, m) of the training data, so a prediction at
    /// another resolution is warned about (absent in runs written before it was recorded).
    #[serde(default)]
    pub dxyz: Option<[f64; 3]>,
    pub scales: LatentScales,
    pub history: Vec<DiffusionEpoch>,
    pub best_epoch: Option<usize>,
    /// Lowest validation relative L2 error of the decoded velocity.
    pub best_val_error: f64,
    /// Physics terms of the true validation flows, for scale: discretisation leaves the
    /// divergence of the solver's field above zero on these grids.
    #[serde(default)]
    pub val_physics_truth: PhysicsMetrics,
    pub parameters: usize,
}
