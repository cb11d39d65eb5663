//! Configuration of the diffusion process (schedule, parameterisation, x̂0 clipping,
//! training loss); the defaults are the reference project's (`Diffusion_model/src/diffusion.py`).

use super::{BetaSchedule, NoiseSchedule, Prediction, PredictionLoss};
use crate::error::ModelError;
use burn::prelude::*;

/// The forward process and the training objective, validated by [`DiffusionConfig::init`].
#[derive(Config, Debug, PartialEq)]
pub struct DiffusionConfig {
    /// Number of training timesteps T; t ∈ {0, …, T − 1}, t = 0 the least noisy.
    #[config(default = 1000)]
    pub train_timesteps: usize,
    /// Linear (the reference) or cosine β_t.
    #[config(default = "BetaSchedule::Linear")]
    pub beta_schedule: BetaSchedule,
    /// β_0 of the linear schedule (unused by the cosine one).
    #[config(default = 1e-4)]
    pub beta_start: f64,
    /// β_{T−1} of the linear schedule (unused by the cosine one).
    #[config(default = 0.02)]
    pub beta_end: f64,
    /// What the denoiser predicts.
    #[config(default = "Prediction::Epsilon")]
    pub prediction: Prediction,
    /// Samplers clamp x̂0 to ±this. The reference clamps at 30; kept as the default because
    /// at large t (√ᾱ ≈ 6e-3 at t = 999) an ε-model's error is amplified ~160× in x̂0, and
    /// the clamp stops one bad early step from throwing the trajectory far off. It is wide
    /// enough never to bind on latents of order one. `None` disables it.
    #[config(default = "Some(30.0)")]
    pub clip_x0: Option<f64>,
    /// Loss between the prediction and its target during training.
    #[config(default = "PredictionLoss::Mse")]
    pub loss: PredictionLoss,
}

impl DiffusionConfig {
    /// Checks every field, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.train_timesteps < 2 {
            return bad(format!(
                "train_timesteps = {} must be ≥ 2",
                self.train_timesteps
            ));
        }
        if self.beta_schedule == BetaSchedule::Linear {
            let (s, e) = (self.beta_start, self.beta_end);
            if !(s.is_finite() && e.is_finite() && 0.0 < s && s < e && e < 1.0) {
                return bad(format!(
                    "linear schedule needs 0 < beta_start < beta_end < 1, got beta_start = {s}, beta_end = {e}"
                ));
            }
        }
        if let Some(c) = self.clip_x0
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!(
                "clip_x0 = {c} must be a positive number (or None to disable it)"
            ));
        }
        Ok(())
    }

    /// Validates the configuration and computes its schedule.
    pub fn init(&self) -> Result<NoiseSchedule, ModelError> {
        self.validate()?;
        Ok(NoiseSchedule::new(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_settings_and_survive_json() {
        let c = DiffusionConfig::new();
        assert_eq!(c.train_timesteps, 1000);
        assert_eq!(c.beta_schedule, BetaSchedule::Linear);
        assert_eq!((c.beta_start, c.beta_end), (1e-4, 0.02));
        assert_eq!(c.prediction, Prediction::Epsilon);
        assert_eq!(c.clip_x0, Some(30.0));
        assert_eq!(c.loss, PredictionLoss::Mse);
        let json = serde_json::to_string(&c.clone().with_prediction(Prediction::V)).unwrap();
        assert!(json.contains("\"v\""), "{json}");
        let back: DiffusionConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c.with_prediction(Prediction::V));
    }

    #[test]
    fn bad_configurations_are_named() {
        let msg = |c: DiffusionConfig| c.init().unwrap_err().to_string();
        let base = DiffusionConfig::new;
        assert!(msg(base().with_train_timesteps(1)).contains("train_timesteps"));
        for (s, e) in [
            (0.02, 0.02),
            (0.02, 1e-4),
            (0.0, 0.02),
            (1e-4, 1.0),
            (f64::NAN, 0.02),
        ] {
            let m = msg(base().with_beta_start(s).with_beta_end(e));
            assert!(m.contains("beta_start < beta_end"), "{m}");
        }
        for c in [0.0, -1.0, f64::INFINITY, f64::NAN] {
            assert!(msg(base().with_clip_x0(Some(c))).contains("clip_x0"));
        }
        // The cosine schedule does not use beta_start/beta_end, so they are not checked.
        let cosine = base()
            .with_beta_schedule(BetaSchedule::Cosine)
            .with_beta_start(1.0);
        assert!(cosine.init().is_ok());
        assert!(base().with_clip_x0(None).init().is_ok());
    }
}
