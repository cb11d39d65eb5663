//! The model a command predicts with: the run or bundle of `--model`, or the built-in
//! bundle, announced so that a user knows which model spoke.

use anyhow::Result;
use fiberflow_model::bundle;
use fiberflow_model::device::Device;
use fiberflow_model::predict::TrainedModel;
use std::path::Path;

/// Loads `--model`, or the built-in model when it is absent (saying so on stderr).
pub fn load_model(path: Option<&Path>, device: &Device) -> Result<TrainedModel> {
    let (model, builtin) = bundle::load_model(path, device)?;
    if let Some(card) = builtin {
        eprintln!(
            "no --model given: using the built-in model ({}; `fiberflow model info` prints its card)",
            card.summary()
        );
    }
    Ok(model)
}
