//! The loop over a run's epochs that every trainer shares (the VAE stages, the latent
//! predictor and the refiner): each trainer supplies how one epoch trains and validates;
//! the runner resumes where the log stands, keeps the best epoch's weights, commits the
//! checkpoint and the log atomically and lets the observer stop the run.

use crate::error::ModelError;
use crate::run::checkpoint::{self, BestByScore, Checkpointed};
use std::ops::ControlFlow;
use std::path::Path;

/// What one epoch gives back: the trainer's state after it, its history record and the
/// validation score that picks the best epoch.
pub(crate) type EpochResult<S, E> = Result<(S, E, f64), ModelError>;

/// The epochs of a run into `out`, from where its log stands to `epochs`: `epoch` trains
/// and validates one (it sees the log and the observer), then the epoch is closed as
/// [`checkpoint::close_epoch`] (best weights, atomic commit) and `notify` tells the
/// observer, which may stop the run.
pub(crate) fn run_epochs<S: Checkpointed, L: BestByScore, O: ?Sized>(
    (out, epochs): (&Path, usize),
    log: &mut L,
    mut state: S,
    observer: &mut O,
    mut epoch: impl FnMut(S, usize, &L, &mut O) -> EpochResult<S, L::Epoch>,
    notify: impl Fn(&mut O, &L::Epoch) -> ControlFlow<()>,
) -> Result<(), ModelError> {
    for e in log.progress().0.len()..epochs {
        let (record, error);
        (state, record, error) = epoch(state, e, log, observer)?;
        let closed = (e, record, error);
        let flow = checkpoint::close_epoch(out, log, closed, &state, |r| notify(observer, r))?;
        if flow.is_break() {
            break;
        }
    }
    Ok(())
}
