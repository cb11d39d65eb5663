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
    /// Weigh each component's squared relative error by the inverse of its mean over the
    /// unrefined training estimates (the log's `component_weights`), so the loss starts at
    /// ≈ 1 and a relative gain counts alike on vx, vy and vz; the best epoch is then the
    /// one with the lowest mean of the validation errors relative to the unrefined ones.
    /// Unweighted, vz's relative error (≈ 5× vy's) makes up ~90 % of the loss and the
    /// refiner corrects little else. Runs logged before the option were unweighted.
    #[serde(default)]
    pub balance_components: bool,
    /// Multiplies each component's loss weight, and its share of the best-epoch
    /// selection when balanced: raising one trades the others' accuracy for its own, e.g.
    /// `[1, 2, 1]` for a vy that stays furthest from its target.
    pub component_emphasis: [f64; 3],
    /// A refiner run of the same model, architecture and seed whose kept weights
    /// (`best_model.bpk`) this run starts from instead of a random draw, so a longer or
    /// re-weighted schedule continues from what it learned; its cached estimates, drawn
    /// with the same seed, are reused rather than computed again.
    pub init: Option<PathBuf>,
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
            balance_components: true,
            component_emphasis: [1.0; 3],
            init: None,
            train_samples: None,
            val_samples: None,
        }
    }
}

impl RefineTrainConfig {
    /// Checks every rule before anything is computed, naming the field that breaks it.
    pub fn validate(&self) -> Result<(), ModelError> {
        optimiser_settings!(self, accumulation: 1).validate()?;
        if self
            .component_emphasis
            .iter()
            .any(|e| !e.is_finite() || *e <= 0.0)
        {
            return Err(ModelError::Config(format!(
                "component_emphasis = {:?} must be three positive numbers",
                self.component_emphasis
            )));
        }
        self.refiner.validate()
    }
}

/// One epoch of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefineEpoch {
    pub epoch: usize,
    pub steps: usize,
    pub lr: f64,
    /// Mean squared relative error of the refined training estimates per component,
    /// weighted by the log's `component_weights`.
    pub train_loss: f64,
    /// The same on the validation samples, as given.
    pub val_loss: f64,
    /// Refined validation estimates against U.
    pub val_errors: FieldErrors,
    pub mean_grad_norm: f64,
    pub seconds: f64,
}

impl super::checkpoint::BestByScore for RefineRunLog {
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
    /// The loss's weight of each component (all 1 unless `balance_components`).
    #[serde(default = "unit_weights")]
    pub component_weights: [f64; 3],
    pub history: Vec<RefineEpoch>,
    pub best_epoch: Option<usize>,
    /// Lowest validation error by [`RefineRunLog::selection_error`].
    pub best_val_error: f64,
    pub parameters: usize,
}

/// The weights of runs logged before `component_weights`.
fn unit_weights() -> [f64; 3] {
    [1.0; 3]
}

impl RefineRunLog {
    /// What the best epoch minimises: with `balance_components`, the mean over components
    /// of the validation error relative to the unrefined estimates', weighted by the
    /// emphasis; otherwise the relative L2 error over the normalised components.
    pub fn selection_error(&self, errors: &FieldErrors) -> f64 {
        if self.config.balance_components {
            let emphasis = self.config.component_emphasis;
            let ratios = (0..3).map(|c| {
                emphasis[c] * errors.relative_l2[c] / self.input_val_errors.relative_l2[c]
            });
            ratios.sum::<f64>() / emphasis.iter().sum::<f64>()
        } else {
            errors.relative_l2_total_normalised
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_epoch_is_chosen_on_the_objective_of_the_run() {
        let errors = |e: [f64; 3], total: f64| FieldErrors {
            relative_l2: e,
            relative_l2_total_normalised: total,
            vz_ratio: 1.0,
        };
        let mut log = RefineRunLog {
            config: RefineTrainConfig::default(),
            base: PathBuf::new(),
            base_sha256: String::new(),
            dataset: PathBuf::new(),
            dataset_manifest_sha256: String::new(),
            input_val_errors: errors([0.1, 0.2, 0.5], 0.3),
            component_weights: [1.0; 3],
            history: Vec::new(),
            best_epoch: None,
            best_val_error: f64::INFINITY,
            parameters: 0,
        };
        // Balanced: the mean of 0.09/0.1, 0.18/0.2 and 0.5/0.5 = (0.9 + 0.9 + 1) / 3.
        let refined = errors([0.09, 0.18, 0.5], 0.25);
        assert!((log.selection_error(&refined) - 2.8 / 3.0).abs() < 1e-12);
        // Emphasis [1, 2, 1]: (0.9 + 2 × 0.9 + 1) / 4.
        log.config.component_emphasis = [1.0, 2.0, 1.0];
        assert!((log.selection_error(&refined) - 3.7 / 4.0).abs() < 1e-12);
        log.config.balance_components = false;
        assert_eq!(log.selection_error(&refined), 0.25);
    }

    #[test]
    fn logs_from_before_the_balance_read_as_unbalanced() {
        let mut value = serde_json::to_value(RefineTrainConfig::default()).unwrap();
        value.as_object_mut().unwrap().remove("balance_components");
        let old: RefineTrainConfig = serde_json::from_value(value).unwrap();
        assert!(!old.balance_components);
        assert!(RefineTrainConfig::default().balance_components);
    }

    #[test]
    fn an_emphasis_that_is_not_positive_is_refused() {
        for bad in [[1.0, 0.0, 1.0], [1.0, -2.0, 1.0], [f64::NAN, 1.0, 1.0]] {
            let cfg = RefineTrainConfig {
                component_emphasis: bad,
                ..RefineTrainConfig::default()
            };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("component_emphasis"), "{err}");
        }
        let old: RefineTrainConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(old.component_emphasis, [1.0; 3]);
        assert_eq!(old.init, None);
    }
}
