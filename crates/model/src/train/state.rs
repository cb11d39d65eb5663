//! A network in training — its weights, the exponential moving average of its weights
//! (what is validated and kept) and the AdamW state — with the optimiser step the latent
//! predictor's and the refiner's trainers share: clip by the global gradient norm, step
//! at the scheduled learning rate, then update the EMA with its warm-up decay — and the
//! loop over their epochs.

use super::clip::clip_global_norm;
use super::{ema, schedule};
use crate::error::ModelError;
use crate::run::OptimiserSettings;
use crate::run::checkpoint::{self, BestByError};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use std::ops::ControlFlow;
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

    /// What a checkpoint holds.
    pub fn modules(&self) -> (&M, &M, &ModuleOptimizer) {
        (&self.model, &self.ema, &self.optim)
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

/// What one epoch gives back: the state after it, its history record and the validation
/// error that picks the best epoch.
pub(crate) type EpochResult<M, E> = Result<(TrainState<M>, E, f64), ModelError>;

/// The epochs of a run into `out`, from where its log stands to `epochs`: `epoch` trains
/// and validates one (it sees the log and the observer), then the epoch is closed as
/// [`checkpoint::close_epoch`] (best weights, atomic commit) and `notify` tells the
/// observer, which may stop the run.
pub(crate) fn run_epochs<M: Module, L: BestByError, O: ?Sized>(
    (out, epochs): (&Path, usize),
    log: &mut L,
    mut state: TrainState<M>,
    observer: &mut O,
    mut epoch: impl FnMut(TrainState<M>, usize, &L, &mut O) -> EpochResult<M, L::Epoch>,
    notify: impl Fn(&mut O, &L::Epoch) -> ControlFlow<()>,
) -> Result<(), ModelError> {
    for e in log.progress().0.len()..epochs {
        let (record, error);
        (state, record, error) = epoch(state, e, log, observer)?;
        let closed = (e, record, error);
        let flow =
            checkpoint::close_epoch(out, log, closed, state.modules(), |r| notify(observer, r))?;
        if flow.is_break() {
            break;
        }
    }
    Ok(())
}
