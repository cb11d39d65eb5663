//! Test-time symmetrisation: the point prediction averaged over the eight mirror images of
//! the input. Each mirror maps a Stokes flow driven along +x to another one
//! (`fiberflow_data::Mirror`), so the true flow of a mirrored sample is the mirrored true
//! flow; the networks are not mirror-equivariant, and averaging their eight answers, each
//! mapped back, is the group average that removes the part of their error that is not
//! (test-time augmentation, as Krizhevsky, Sutskever & Hinton 2012 averaged over
//! reflected crops, here with exact symmetries of the physics).

use super::{EstimateRequest, PointEstimate, Steering, TrainedModel};
use crate::batch::sample_array;
use crate::error::ModelError;
use crate::predict::sampling::SampleOptions;
use burn::prelude::*;
use fiberflow_data::{Field, Mirror, Sample};
use ndarray::Array4;

impl TrainedModel {
    /// The point estimate `(S, 3, H, W)` in m/s of one sample's flow: of the sample as
    /// given, or, when `request.symmetrize`, the mean over its eight mirror images of the
    /// estimate mapped back; then refined when the model has a refiner and
    /// `request.refine`. Draws are seeded as in [`TrainedModel::predict`] for every image;
    /// the posterior mean takes one noise per image when symmetrized (the eight images
    /// already average over the noise; more noises gained 1 % at most, measured
    /// unsymmetrized), so it costs 8 network evaluations. `device` is the model's.
    pub fn sample_estimate(
        &self,
        sample: &Sample,
        options: &SampleOptions,
        request: &EstimateRequest,
        steering: &Steering,
        device: &Device,
    ) -> Result<Array4<f32>, ModelError> {
        let symmetrize = request.symmetrize;
        let estimate = (request.kind, request.noises, request.seed);
        let slices = sample.domain.dim().0;
        let estimate = match estimate {
            (kind, _, seed)
                if symmetrize
                    && self.estimate_for(kind, steering) == PointEstimate::PosteriorMean =>
            {
                (PointEstimate::PosteriorMean, 1, seed)
            }
            other => other,
        };
        let mean = mirror_mean(symmetrize, |mirror| {
            let mut image = sample.clone();
            mirror.apply(&mut image);
            let tb = self.stack_tensors(image, mirror, device)?;
            self.check_input(&tb)?;
            // Known slices follow their slices through a z mirror.
            let steering = Steering {
                known_slices: steering
                    .known_slices
                    .iter()
                    .map(|&k| match mirror.z {
                        true if k < slices => slices - 1 - k,
                        _ => k,
                    })
                    .collect(),
                ..steering.clone()
            };
            let u = self.point_estimate(&tb, options, estimate, &steering)?;
            let mut u = sample_array(u, 0)?;
            mirror.apply_to(Field::U, &mut u);
            Ok(u)
        })?;
        match request.refine {
            true => self.refined(sample, mean, (&steering.known_slices, symmetrize), device),
            false => Ok(mean),
        }
    }
}

/// The mean of `estimate(mirror)` over the eight mirrors (`symmetrize`) or the identity
/// alone; `estimate` maps its answer back to the input's frame.
pub(super) fn mirror_mean(
    symmetrize: bool,
    mut estimate: impl FnMut(Mirror) -> Result<Array4<f32>, ModelError>,
) -> Result<Array4<f32>, ModelError> {
    let images: Vec<Mirror> = if symmetrize {
        Mirror::all().collect()
    } else {
        vec![Mirror::default()]
    };
    let mut sum: Option<Array4<f32>> = None;
    for &mirror in &images {
        let u = estimate(mirror)?;
        sum = Some(match sum {
            Some(s) => s + &u,
            None => u.as_standard_layout().into_owned(),
        });
    }
    let sum = sum.ok_or_else(|| ModelError::Config("no mirror image".into()))?;
    Ok(sum / images.len() as f32)
}
