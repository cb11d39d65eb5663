//! A model with its full-resolution refiner ([`crate::refine`]): loading a refiner run on
//! top of the model it refines, and refining a point estimate.

use super::TrainedModel;
use super::symmetry::mirror_mean;
use crate::batch::{channel_first, sample_array};
use crate::error::ModelError;
use crate::refine::{Refiner, refiner_inputs};
use crate::run::RunKind;
use crate::run::checkpoint;
use crate::run::checkpoint::{BEST_FILE, LOG_FILE};
use crate::run::refine::RefineRunLog;
use burn::prelude::*;
use fiberflow_data::json::read_json;
use fiberflow_data::{Field, Sample};
use ndarray::{Array4, Axis};
use std::path::{Path, PathBuf};

/// A trained refiner and the run it comes from.
pub struct RefinerPart {
    pub net: Refiner,
    pub log: RefineRunLog,
    pub dir: PathBuf,
}

impl RefinerPart {
    /// The log of `run_dir` when it is a refiner run (its log names the model it refines).
    pub fn run_log(run_dir: &Path) -> Result<Option<RefineRunLog>, ModelError> {
        let path = run_dir.join(LOG_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let raw: serde_json::Value = read_json(&path, "")?;
        if RunKind::of(&raw) != Some(RunKind::Refiner) {
            return Ok(None);
        }
        serde_json::from_value(raw).map(Some).map_err(|e| {
            ModelError::Input(format!("{}: not a refiner run's log ({e})", path.display()))
        })
    }
}

impl TrainedModel {
    /// The model with the refiner of run `dir` (log `log`), which must have been trained
    /// on this model's estimates (same latent-network weights).
    pub fn with_refiner(
        mut self,
        dir: &Path,
        log: RefineRunLog,
        device: &Device,
    ) -> Result<Self, ModelError> {
        if self.refiner.is_some() {
            return Err(ModelError::Config(format!(
                "{}: the model it refines is itself refined",
                dir.display()
            )));
        }
        if log.base_sha256 != self.weights_sha256 {
            return Err(ModelError::Config(format!(
                "the model {} changed since the refiner {} was trained on its estimates (weights {} ≠ {}); train the refiner again",
                log.base.display(),
                dir.display(),
                &self.weights_sha256[..16],
                &log.base_sha256[..16.min(log.base_sha256.len())]
            )));
        }
        let net = checkpoint::load(log.config.refiner.init(device)?, &dir.join(BEST_FILE))?;
        self.refiner = Some(RefinerPart {
            net: net.no_grad(),
            log,
            dir: dir.to_path_buf(),
        });
        Ok(self)
    }

    /// The refined point estimate `(S, 3, H, W)` in m/s of `sample` from its estimate
    /// `estimate`, masked; slices listed in `known` are data and come back as the truth.
    /// With `symmetrize`, the refiner's mean over the eight mirror images of the sample
    /// and the estimate, each mapped back: the refiner is trained on every mirror but is
    /// not equivariant, and the mirror average removes the part of its error that is not,
    /// for 8 refiner evaluations (far cheaper than the latent networks' 8). Without a
    /// refiner, the estimate as given.
    pub fn refined(
        &self,
        sample: &Sample,
        estimate: Array4<f32>,
        (known, symmetrize): (&[usize], bool),
        device: &Device,
    ) -> Result<Array4<f32>, ModelError> {
        let Some(part) = &self.refiner else {
            return Ok(estimate);
        };
        let (_, _, h, w) = estimate.dim();
        part.net.config().check_size(h, w)?;
        let norm = &self.vae.normalizer;
        let mut u = mirror_mean(symmetrize, |mirror| {
            let mut image = sample.clone();
            mirror.apply(&mut image);
            let mut x = estimate.clone();
            mirror.apply_to(Field::U, &mut x);
            let tb = self.stack_tensors(image, mirror, device)?;
            let inputs = refiner_inputs(&tb, part.net.config().pressure)?;
            let x = norm.normalize(channel_first(x.insert_axis(Axis(0)), device));
            let u = norm.denormalize(part.net.forward(x, inputs)) * tb.mask;
            let mut u = sample_array(u, 0)?;
            mirror.apply_to(Field::U, &mut u);
            Ok(u)
        })?;
        for &k in known {
            let truth = &sample.u.index_axis(Axis(0), k) * &sample.domain.index_axis(Axis(0), k);
            u.index_axis_mut(Axis(0), k).assign(&truth);
        }
        Ok(u)
    }
}
