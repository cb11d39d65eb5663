//! Test helpers: seeded tensors, comparisons, and denoisers whose exact output is known
//! (an oracle that knows x0; the posterior mean of Gaussian data).

use super::{NoiseSchedule, Prediction, seeded_rng, standard_normal};
use crate::error::ModelError;
use burn::prelude::*;

/// A seeded N(0, 1) tensor on the CPU.
pub fn normal(shape: [usize; 5], seed: u64) -> Tensor<5> {
    standard_normal(shape, &mut seeded_rng(seed), &Device::flex())
}

pub fn values(x: Tensor<5>) -> Vec<f32> {
    x.into_data().try_into_vec().unwrap()
}

/// Asserts |a − b| ≤ tol elementwise.
pub fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "max |a − b| = {worst} > {tol}");
}

/// Converts (x0, ε) at ᾱ into the output of a perfect network of parameterisation `p`,
/// written out here rather than through the code under test.
fn output(p: Prediction, ab: f64, x0: Tensor<5>, eps: Tensor<5>) -> Tensor<5> {
    match p {
        Prediction::Epsilon => eps,
        Prediction::V => eps.mul_scalar(ab.sqrt()) - x0.mul_scalar((1.0 - ab).sqrt()),
    }
}

/// A denoiser that knows x0 and returns the exact prediction for the x_t it is given:
/// ε = (x_t − √ᾱ x0)/√(1 − ᾱ). All samples share the timestep (as in sampling).
pub fn oracle(
    schedule: &NoiseSchedule,
    x0: Tensor<5>,
) -> impl FnMut(Tensor<5>, &[usize]) -> Result<Tensor<5>, ModelError> {
    let (p, ab) = (schedule.prediction(), schedule.alphas_cumprod().to_vec());
    move |x_t, t| {
        let ab = ab[t[0]];
        let eps = (x_t - x0.clone().mul_scalar(ab.sqrt())).div_scalar((1.0 - ab).sqrt());
        Ok(output(p, ab, x0.clone(), eps))
    }
}

/// The exact denoiser for data x0 ~ N(0, s² I): E[x0 | x_t] = √ᾱ s² x_t / (ᾱ s² + 1 − ᾱ).
pub fn gaussian_data(
    schedule: &NoiseSchedule,
    s: f64,
) -> impl FnMut(Tensor<5>, &[usize]) -> Result<Tensor<5>, ModelError> {
    let (p, ab) = (schedule.prediction(), schedule.alphas_cumprod().to_vec());
    move |x_t, t| {
        let ab = ab[t[0]];
        let var = ab * s * s + 1.0 - ab;
        let x0 = x_t.clone().mul_scalar(ab.sqrt() * s * s / var);
        let eps = x_t.mul_scalar((1.0 - ab).sqrt() / var);
        Ok(output(p, ab, x0, eps))
    }
}
