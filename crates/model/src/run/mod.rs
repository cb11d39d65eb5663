//! Run folders: the file names, run logs and checkpoints that training writes and
//! inference reads. Both sides depend on this module and neither on the other, so loading
//! a trained model never reaches into a training loop.

pub mod checkpoint;
pub mod diffusion;
pub mod refine;
pub mod vae;

use crate::error::ModelError;
use checkpoint::LOG_FILE;
use fiberflow_data::json::read_json;
use serde_json::Value;
use std::path::Path;

/// Which trainer made a run folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Vae,
    Diffusion,
    Refiner,
}

impl RunKind {
    /// The kind's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vae => "VAE",
            Self::Diffusion => "diffusion",
            Self::Refiner => "refiner",
        }
    }

    /// The kind of run whose `log.json` reads as `raw`, told by the field that only that
    /// trainer's log has; `None` for anything else. The one place this rule lives.
    pub fn of(raw: &Value) -> Option<Self> {
        if raw.get("base_sha256").is_some() {
            Some(Self::Refiner)
        } else if raw.get("vae_key").is_some() {
            Some(Self::Diffusion)
        } else if raw.get("stage").is_some() {
            Some(Self::Vae)
        } else {
            None
        }
    }
}

/// The log of any run folder.
#[derive(Debug, Clone)]
pub enum AnyRunLog {
    Vae(Box<vae::RunLog>),
    Diffusion(Box<diffusion::DiffusionRunLog>),
    Refiner(Box<refine::RefineRunLog>),
}

impl AnyRunLog {
    /// Reads the `log.json` of run folder `dir`, whichever trainer wrote it.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(LOG_FILE);
        let raw: Value = read_json(&path, "pass the folder of a training run")?;
        let kind = RunKind::of(&raw).ok_or_else(|| {
            ModelError::Input(format!("{}: not the log of a training run", path.display()))
        })?;
        let unreadable = |e: serde_json::Error| {
            ModelError::Input(format!(
                "{}: not a readable {} run log ({e})",
                path.display(),
                kind.name()
            ))
        };
        Ok(match kind {
            RunKind::Vae => Self::Vae(serde_json::from_value(raw).map_err(unreadable)?),
            RunKind::Diffusion => {
                let mut log: diffusion::DiffusionRunLog =
                    serde_json::from_value(raw).map_err(unreadable)?;
                log.config.reconcile_older_run();
                Self::Diffusion(Box::new(log))
            }
            RunKind::Refiner => Self::Refiner(serde_json::from_value(raw).map_err(unreadable)?),
        })
    }
}

/// The optimiser settings every training config holds, checked by one set of rules so
/// that the trainers accept and refuse the same values.
pub(crate) struct OptimiserSettings {
    pub epochs: usize,
    pub batch_size: usize,
    /// Batches per optimiser step (1 for a trainer without accumulation).
    pub accumulation: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub ema_decay: f64,
}

/// The [`OptimiserSettings`] of a training config, whose fields carry the same names.
macro_rules! optimiser_settings {
    ($config:expr, accumulation: $accumulation:expr) => {
        $crate::run::OptimiserSettings {
            epochs: $config.epochs,
            batch_size: $config.batch_size,
            accumulation: $accumulation,
            lr: $config.lr,
            min_lr: $config.min_lr,
            warmup_steps: $config.warmup_steps,
            weight_decay: $config.weight_decay,
            grad_clip: $config.grad_clip,
            ema_decay: $config.ema_decay,
        }
    };
}
pub(crate) use optimiser_settings;

impl OptimiserSettings {
    /// Names the first setting that breaks its rule.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.epochs == 0 || self.batch_size == 0 || self.accumulation == 0 {
            return bad(format!(
                "epochs, batch_size and accumulation must be ≥ 1, got {}, {} and {}",
                self.epochs, self.batch_size, self.accumulation
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "need 0 ≤ min_lr ≤ lr and lr > 0, got lr = {}, min_lr = {}",
                self.lr, self.min_lr
            ));
        }
        if !(self.weight_decay.is_finite()
            && self.weight_decay >= 0.0
            && self.grad_clip.is_finite()
            && self.grad_clip > 0.0)
        {
            return bad(format!(
                "weight_decay must be a number ≥ 0 and grad_clip one > 0, got {} and {}",
                self.weight_decay, self.grad_clip
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("ema_decay = {} must be in [0, 1)", self.ema_decay));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{AnyRunLog, OptimiserSettings, RunKind};
    use serde_json::json;

    #[test]
    fn run_kinds_are_told_by_their_own_fields() {
        let of = |v| RunKind::of(&v);
        assert_eq!(
            of(json!({"stage": "One", "config": {}})),
            Some(RunKind::Vae)
        );
        assert_eq!(
            of(json!({"vae_key": "k", "vae": "v"})),
            Some(RunKind::Diffusion)
        );
        assert_eq!(
            of(json!({"base_sha256": "s", "base": "b"})),
            Some(RunKind::Refiner)
        );
        assert_eq!(of(json!({"shape": [1, 2]})), None);
        let tmp = tempfile::tempdir().unwrap();
        let error = |text: &str| {
            std::fs::write(tmp.path().join("log.json"), text).unwrap();
            AnyRunLog::read(tmp.path()).unwrap_err().to_string()
        };
        assert!(error(r#"{"shape": [1]}"#).contains("not the log of a training run"));
        assert!(error(r#"{"vae_key": 3}"#).contains("not a readable diffusion run log"));
    }

    fn error(s: OptimiserSettings) -> String {
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn each_rule_names_its_setting() {
        let ok = || OptimiserSettings {
            epochs: 1,
            batch_size: 2,
            accumulation: 1,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 10,
            weight_decay: 0.0,
            grad_clip: 1.0,
            ema_decay: 0.999,
        };
        assert!(ok().validate().is_ok());
        assert!(
            error(OptimiserSettings {
                accumulation: 0,
                ..ok()
            })
            .contains("accumulation")
        );
        assert!(
            error(OptimiserSettings {
                min_lr: 1.0,
                ..ok()
            })
            .contains("min_lr")
        );
        assert!(
            error(OptimiserSettings {
                lr: f64::NAN,
                ..ok()
            })
            .contains("lr = NaN")
        );
        assert!(
            error(OptimiserSettings {
                grad_clip: 0.0,
                ..ok()
            })
            .contains("grad_clip")
        );
        assert!(
            error(OptimiserSettings {
                weight_decay: -1.0,
                ..ok()
            })
            .contains("weight_decay")
        );
        assert!(
            error(OptimiserSettings {
                ema_decay: 1.0,
                ..ok()
            })
            .contains("ema_decay = 1")
        );
    }
}
