//! What a refiner run folder records: its training config, the model it refines and the
//! history (`log.json`).

use super::optimiser_settings;
use crate::error::ModelError;
use crate::metrics::FieldErrors;
use crate::refine::RefinerConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The folder of cached estimates inside a refiner run.
pub const ESTIMATES_DIR: &str = "estimates";

/// Everything a refiner training run needs besides the data and the refined model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefineTrainConfig {
    pub refiner: RefinerConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Largest global gradient norm.
    pub grad_clip: f64,
    pub ema_decay: f64,
    /// Seeds the initialisation, the epoch order, the mirrors and the estimates' noise.
    pub seed: u64,
    /// Show each training sample through one of its eight mirrors, drawn per epoch.
    pub mirror_augmentation: bool,
    /// Use only the first N training / validation samples (`None` = all).
    pub train_samples: Option<usize>,
    pub val_samples: Option<usize>,
}

impl Default for RefineTrainConfig {
    fn default() -> Self {
        Self {
            refiner: RefinerConfig::new(),
            epochs: 20,
            batch_size: 4,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 50,
            weight_decay: 1e-4,
            grad_clip: 1.0,
            ema_decay: 0.999,
            seed: 2024,
            mirror_augmentation: true,
            train_samples: None,
            val_samples: None,
        }
    }
}

impl RefineTrainConfig {
    /// Checks every rule before anything is computed, naming the field that breaks it.
    pub fn validate(&self) -> Result<(), ModelError> {
        optimiser_settings!(self, accumulation: 1).validate()?;
        self.refiner.validate()
    }
}

/// One epoch of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefineEpoch {
    pub epoch: usize,
    pub steps: usize,
    pub lr: f64,
    /// Mean normalised squared error of the refined training estimates.
    pub train_loss: f64,
    /// The same on the validation samples, as given.
    pub val_loss: f64,
    /// Refined validation estimates against U.
    pub val_errors: FieldErrors,
    pub mean_grad_norm: f64,
    pub seconds: f64,
}

impl super::checkpoint::BestByError for RefineRunLog {
    type Epoch = RefineEpoch;

    fn progress(&mut self) -> (&mut Vec<RefineEpoch>, &mut f64, &mut Option<usize>) {
        (
            &mut self.history,
            &mut self.best_val_error,
            &mut self.best_epoch,
        )
    }
}

/// `log.json` of a refiner run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefineRunLog {
    pub config: RefineTrainConfig,
    /// The refined model (a diffusion or direct run folder, or a bundle) and the SHA-256
    /// of its latent network's weights, so a changed model is refused.
    pub base: PathBuf,
    pub base_sha256: String,
    pub dataset: PathBuf,
    pub dataset_manifest_sha256: String,
    /// The validation estimates before refinement: what the refiner must beat.
    pub input_val_errors: FieldErrors,
    pub history: Vec<RefineEpoch>,
    pub best_epoch: Option<usize>,
    /// Lowest validation relative L2 error (components normalised).
    pub best_val_error: f64,
    pub parameters: usize,
}
