//! One stack's prediction as numbered stages, in the manner of a diffusers pipeline
//! (von Platen et al., *Diffusers*, 2022): the trained networks, the sampler and the VAE
//! composed for inference, knowing nothing of training. `predict` calls it with a
//! microstructure and its 2D flow; `evaluate` scores the point estimate alone.
//!
//! ```no_run
//! # use fiberflow_model::bundle::Bundle;
//! # use fiberflow_model::predict::{EstimateRequest, PredictRequest, Steering};
//! # use fiberflow_model::predict::sampling::SampleOptions;
//! # use fiberflow_model::diffusion::{SamplerConfig, SamplerKind};
//! # use burn::prelude::*;
//! # fn stack() -> fiberflow_data::Sample { unimplemented!() }
//! let device = Device::flex();
//! let model = Bundle::builtin()?.expect("this build carries a model").load(&device)?;
//! let request = PredictRequest {
//!     options: SampleOptions {
//!         sampler: SamplerConfig::new().with_kind(SamplerKind::DpmSolver).with_steps(10),
//!         guidance: 0.0,
//!     },
//!     // The refined posterior mean over the eight mirror images; 4 draws for the spread.
//!     estimate: EstimateRequest { noises: 4, ..EstimateRequest::default() },
//!     steering: Steering::default(),
//! };
//! // domain (S, 1, H, W), U_2d (S, 3, H, W) and p_2d of the stack, in SI units.
//! let out = model.predict_stack(&stack(), &request, &device)?;
//! println!("U_pred {:?}, mean std {}", out.mean.dim(), out.std.mean().unwrap_or(0.0));
//! # Ok::<(), fiberflow_model::ModelError>(())
//! ```

use super::sampling::{PredictorKind, SampleOptions};
use super::{EstimateRequest, PointEstimate, Steering, TrainedModel};
use crate::batch::{TensorBatch, sample_array, to_tensors};
use crate::error::ModelError;
use burn::prelude::*;
use fiberflow_data::{Batch, Mirror, Sample};
use ndarray::{Array4, Axis};
use std::time::Instant;

/// What one prediction asks for.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    /// The sampler of the draws.
    pub options: SampleOptions,
    /// The point estimate; its `noises` is also the number of draws whose spread is the
    /// uncertainty, and its `seed` seeds them.
    pub estimate: EstimateRequest,
    pub steering: Steering,
}

/// One stack's prediction, in m/s, zero in fibres, each field `(S, 3, H, W)`.
#[derive(Debug, Clone)]
pub struct PredictOutput {
    /// The point estimate asked for (the one made, with steering: see
    /// [`TrainedModel::estimate_for`]).
    pub mean: Array4<f32>,
    /// The standard deviation of the draws: the uncertainty.
    pub std: Array4<f32>,
    /// Which point estimate `mean` is.
    pub estimate: PointEstimate,
    /// Seconds spent on the draws, and on the whole prediction.
    pub draws_s: f64,
    pub total_s: f64,
}

impl TrainedModel {
    /// `sample` (one stack seen through `mirror`) as network inputs on `device`; its `u`
    /// is read only where slices are known.
    pub(crate) fn stack_tensors(
        &self,
        sample: Sample,
        mirror: Mirror,
        device: &Device,
    ) -> Result<TensorBatch, ModelError> {
        let batch = Batch {
            indices: vec![0],
            samples: vec![sample],
            mirrors: vec![mirror],
        };
        to_tensors(&batch, &self.vae.normalizer, device)
    }

    /// Predicts the 3D flow of `sample`: its microstructure, 2D flow (and 2D pressure,
    /// for a model conditioned on it); its `u` is read only on `request.steering`'s
    /// known slices. `device` is the model's.
    pub fn predict_stack(
        &self,
        sample: &Sample,
        request: &PredictRequest,
        device: &Device,
    ) -> Result<PredictOutput, ModelError> {
        if request.estimate.noises == 0 {
            return Err(ModelError::Config("a prediction needs ≥ 1 draw".into()));
        }
        let started = Instant::now();
        // 1. Condition: the stack as network inputs.
        let tb = self.stack_tensors(sample.clone(), Mirror::default(), device)?;
        // 2. Draws: the sampler from independent seeded noises, decoded by D3D and masked.
        let EstimateRequest { noises, seed, .. } = request.estimate;
        let draws = self
            .predict_steered(&tb, &request.options, noises, seed, &request.steering)?
            .into_iter()
            .map(|t| sample_array(t, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let draws_s = started.elapsed().as_secs_f64();
        // 3. Spread: the uncertainty.
        let views: Vec<_> = draws.iter().map(|d| d.view()).collect();
        let stacked = ndarray::stack(Axis(0), &views)
            .map_err(|e| ModelError::Input(format!("draws of different shapes: {e}")))?;
        drop(draws);
        let std = stacked.std_axis(Axis(0), 0.0);
        // 4. Point estimate: the draws' mean where that is the estimate (then refined),
        // else its own evaluation (the posterior mean, the mirror average, refined).
        let estimate = self.estimate_for(request.estimate.kind, &request.steering);
        let draws_are_the_estimate = !request.estimate.symmetrize
            && (estimate == PointEstimate::DrawMean
                || self.log.config.predictor == PredictorKind::Direct);
        let mean = if draws_are_the_estimate {
            let mean = stacked.mean_axis(Axis(0)).expect("≥ 1 draw, checked above");
            match request.estimate.refine {
                true => {
                    let known = &request.steering.known_slices;
                    self.refined(sample, mean, (known, false), device)?
                }
                false => mean,
            }
        } else {
            drop(stacked);
            let request_estimate = EstimateRequest {
                kind: estimate,
                ..request.estimate
            };
            self.sample_estimate(
                sample,
                &request.options,
                &request_estimate,
                &request.steering,
                device,
            )?
        };
        Ok(PredictOutput {
            mean,
            std,
            estimate,
            draws_s,
            total_s: started.elapsed().as_secs_f64(),
        })
    }
}
