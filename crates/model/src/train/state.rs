//! A network in training — its weights, the exponential moving average of its weights
//! (what is validated and kept) and the AdamW state — with the optimiser step the latent
//! predictor's and the refiner's trainers share: clip by the global gradient norm, step
//! at the scheduled learning rate, then update the EMA with its warm-up decay.

use super::clip::clip_global_norm;
use super::{ema, schedule};
use crate::error::ModelError;
use crate::run::OptimiserSettings;
use crate::run::checkpoint::{self, Checkpointed};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use std::path::Path;

pub(crate) struct TrainState<M> {
    pub model: M,
    pub ema: M,
    pub optim: ModuleOptimizer,
}

impl<M: Module> TrainState<M> {
    /// A fresh state: the EMA starts at the initial weights.
    pub fn new(model: M, optim: ModuleOptimizer) -> Self {
        Self {
            ema: model.valid(),
            model,
            optim,
        }
    }

    /// The state saved in checkpoint folder `dir`, into this one's architecture.
    pub fn load(self, dir: &Path) -> Result<Self, ModelError> {
        let (model, ema, optim) = checkpoint::load_state(dir, self.model, self.ema, self.optim)?;
        Ok(Self { model, ema, optim })
    }

    /// Optimiser step `step` of `total_steps` on `grads`; returns the new state, the global
    /// gradient norm before clipping and the learning rate.
    pub fn step(
        self,
        mut grads: GradientsParams,
        (step, total_steps): (usize, usize),
        settings: &OptimiserSettings,
    ) -> (Self, f64, f64) {
        let Self {
            model,
            ema,
            mut optim,
        } = self;
        let norm = clip_global_norm(&model, &mut grads, settings.grad_clip);
        let lr = schedule::learning_rate(
            step,
            total_steps,
            settings.warmup_steps,
            settings.lr,
            settings.min_lr,
        );
        let model = optim.step(lr, model, grads);
        let decay = ema::warmup_decay(step as u64, settings.ema_decay);
        let ema = ema::update(ema, &model.valid(), decay);
        (Self { model, ema, optim }, norm, lr)
    }
}

impl<M: Module> Checkpointed for TrainState<M> {
    fn save_best(&self, path: &Path) -> Result<(), ModelError> {
        checkpoint::save_atomic(&self.ema, path)
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        checkpoint::save_state(dir, &self.model, &self.ema, &self.optim)
    }
}
