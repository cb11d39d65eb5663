//! What a VAE run folder records: its training config, stage and history (`log.json`).

use super::optimiser_settings;
use crate::batch::{Normalization, Normalizer, TensorBatch};
use crate::error::ModelError;
use crate::metrics::FieldErrors;
use crate::vae::VaeConfig;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Reconstruction loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconLoss {
    /// Per-component normalised MAE over the fluid (the reference's default).
    Mae,
    /// Per-component normalised MSE over the fluid.
    Mse,
}

/// What the 3D branch encodes and decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaeTarget {
    /// The 3D flow U itself (the reference).
    Flow,
    /// The 3D correction U − U_2d: the cheap 2D flow is the zeroth-order answer (vx and vy
    /// within ~15 % of U) and the networks learn only what it misses — vz and the
    /// slice-to-slice changes of vx and vy — so a latent error of e costs e·‖U − U_2d‖
    /// instead of e·‖U‖, and the prediction is never worse than the 2D flow by much.
    Correction,
}

impl VaeTarget {
    /// The field the 3D branch encodes, normalised.
    pub fn field(self, tb: &TensorBatch) -> Tensor<5> {
        match self {
            Self::Flow => tb.u.clone(),
            Self::Correction => tb.u.clone() - tb.u2d.clone(),
        }
    }

    /// The normalised 3D flow from a decoded `field`.
    pub fn flow(self, field: Tensor<5>, tb: &TensorBatch) -> Tensor<5> {
        match self {
            Self::Flow => field,
            Self::Correction => field + tb.u2d.clone(),
        }
    }
}

/// Everything a VAE training run needs besides the data; saved with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaeTrainConfig {
    /// Architecture (stage 2 takes it from its stage-1 run).
    pub vae: VaeConfig,
    pub epochs: usize,
    pub batch_size: usize,
    /// Batches whose gradients are summed before one optimiser step; with several
    /// training devices, they are computed in parallel (one device per batch).
    pub accumulation: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Optimiser steps of linear warm-up.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Largest global gradient norm.
    pub grad_clip: f64,
    /// Weight EMA decay ceiling; 0 disables the EMA.
    pub ema_decay: f64,
    pub loss: ReconLoss,
    /// What the 3D branch encodes (stage 2 inherits stage 1's choice).
    pub target: VaeTarget,
    /// Per-component velocity scaling (stage 2 inherits stage 1's factors).
    pub normalization: Normalization,
    /// KL weight β at the first epoch.
    pub kl_start: f64,
    /// KL weight β after the warm-up.
    pub kl_end: f64,
    pub kl_warmup_epochs: usize,
    /// Mirror augmentation (y, z and x, each with probability ½).
    pub augment: bool,
    /// Decode every sample into memory once instead of reading the memory-mapped files
    /// at each access.
    pub preload: bool,
    /// Train on the first N samples of the training split only (nested subsets of one
    /// split, for learning curves); all of it when absent.
    pub train_samples: Option<usize>,
    /// Validate on the first N samples of the validation split only (each epoch's
    /// validation costs a pass over it); all of it when absent.
    pub val_samples: Option<usize>,
    pub seed: u64,
    /// Stage 2: weight of the latent alignment ‖μ2d − μ3d‖².
    pub lambda_align: f64,
    /// Stage 2: weight of the cross-reconstruction D3D(μ2d) vs U.
    pub lambda_cross: f64,
    /// Stage 2: weight of an extra 1 − cos(μ2d, μ3d) alignment term.
    pub align_cosine: f64,
    /// Stage 2: KL weight of the 2D branch (0 = deterministic E2D, as the reference).
    pub kl_2d: f64,
    /// Stage 2: start E2D from E3D's weights instead of a random initialisation.
    pub init_e2d_from_e3d: bool,
}

impl Default for VaeTrainConfig {
    fn default() -> Self {
        Self {
            // 4×4 patch embedding into the latent grid instead of three levels from full
            // resolution: no convolution runs on the full grid, where a step spent most of
            // its time; a quarter of the time per step at lower validation errors on every
            // component (BENCHMARKS.md, "Cheaper VAE training").
            vae: VaeConfig::new().with_patch(Some(4)).with_channels(vec![32]),
            epochs: 30,
            batch_size: 2,
            accumulation: 1,
            lr: 2e-3,
            min_lr: 1e-5,
            warmup_steps: 20,
            weight_decay: 1e-4,
            grad_clip: 1.0,
            ema_decay: 0.0,
            loss: ReconLoss::Mse,
            target: VaeTarget::Correction,
            normalization: Normalization::Rms,
            kl_start: 1e-5,
            kl_end: 1e-3,
            kl_warmup_epochs: 10,
            augment: false,
            preload: false,
            train_samples: None,
            val_samples: None,
            seed: 0,
            lambda_align: 5.0,
            lambda_cross: 50.0,
            align_cosine: 0.0,
            kl_2d: 0.0,
            init_e2d_from_e3d: true,
        }
    }
}

impl VaeTrainConfig {
    /// Checks every field before any data is read.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.vae.validate()?;
        let bad = |m: &str| Err(ModelError::Config(m.to_string()));
        optimiser_settings!(self, accumulation: self.accumulation).validate()?;
        let weights = [
            self.kl_start,
            self.kl_end,
            self.lambda_align,
            self.lambda_cross,
            self.align_cosine,
            self.kl_2d,
        ];
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return bad("loss weights must be finite and ≥ 0");
        }
        Ok(())
    }
}

/// Which stage a run trains (`--stage 1|2` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Stage {
    /// E3D + D3D on the 3D flow U.
    #[cfg_attr(feature = "clap", value(name = "1"))]
    One,
    /// E2D + D2D on the 2D flow U_2d against a frozen stage-1 run.
    #[cfg_attr(feature = "clap", value(name = "2"))]
    Two,
}

/// One epoch of the run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub steps: usize,
    pub lr: f64,
    pub kl_weight: f64,
    /// Mean training loss terms.
    pub train: BTreeMap<String, f64>,
    /// Validation loss terms (deterministic).
    pub val: BTreeMap<String, f64>,
    /// Errors of the reconstruction that matters: D3D(E3D(U)) in stage 1, D3D(E2D(U_2d))
    /// in stage 2, against U.
    pub val_errors: FieldErrors,
    pub mean_grad_norm: f64,
    pub seconds: f64,
}

impl super::checkpoint::BestByScore for RunLog {
    type Epoch = EpochRecord;

    fn progress(&mut self) -> (&mut Vec<EpochRecord>, &mut f64, &mut Option<usize>) {
        (
            &mut self.history,
            &mut self.best_val_loss,
            &mut self.best_epoch,
        )
    }
}

/// `log.json`: everything needed to interpret and reuse the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunLog {
    pub stage: Stage,
    pub config: VaeTrainConfig,
    pub normalizer: Normalizer,
    pub dataset: PathBuf,
    pub dataset_manifest_sha256: String,
    /// Stage 2: the stage-1 run it builds on.
    pub stage1: Option<PathBuf>,
    pub history: Vec<EpochRecord>,
    pub best_epoch: Option<usize>,
    pub best_val_loss: f64,
    pub parameters: usize,
}
