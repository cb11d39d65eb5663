//! Reconstruction and regularisation losses on masked flow volumes `(B, C, S, H, W)`.

use burn::prelude::*;
use burn::tensor::TensorData;

/// Floor of the per-channel normaliser, so a channel whose target is zero in the fluid
/// (vz of a 2D flow) contributes |prediction| instead of dividing by zero.
const NORM_FLOOR: f64 = 1e-6;

/// Σ_fluid e(p − t) / Σ_fluid e(t) per sample and channel `(B, C, 1, 1, 1)`, for an
/// elementwise error e; the shared form of the normalised losses.
fn per_channel(
    pred: Tensor<5>,
    target: Tensor<5>,
    mask: Tensor<5>,
    e: impl Fn(Tensor<5>) -> Tensor<5>,
) -> Tensor<5> {
    let err = e((pred - target.clone()) * mask.clone()).sum_dims(&[2, 3, 4]);
    let scale = e(target * mask).sum_dims(&[2, 3, 4]).clamp_min(NORM_FLOOR);
    err / scale
}

/// [`per_channel`] averaged over channels and samples.
fn normalized(
    pred: Tensor<5>,
    target: Tensor<5>,
    mask: Tensor<5>,
    e: impl Fn(Tensor<5>) -> Tensor<5>,
) -> Tensor<1> {
    per_channel(pred, target, mask, e).mean()
}

/// Masked, per-component normalised MAE: for every sample b and channel c,
/// Σ_fluid |p − t| / Σ_fluid |t|, averaged over channels and samples. The reference
/// project's `normalized_mae_per_channel`; it weighs the sparse vz as much as vx.
/// `mask` is `(B, 1, S, H, W)`, 1 in fluid.
pub fn normalized_mae(pred: Tensor<5>, target: Tensor<5>, mask: Tensor<5>) -> Tensor<1> {
    normalized(pred, target, mask, |x| x.abs())
}

/// Masked, per-component normalised MSE: Σ_fluid (p − t)² / Σ_fluid t², averaged.
pub fn normalized_mse(pred: Tensor<5>, target: Tensor<5>, mask: Tensor<5>) -> Tensor<1> {
    normalized(pred, target, mask, |x| x.square())
}

/// Per sample and channel, Σ_fluid (p − t)² / Σ_fluid t² `(B, C)`: each sample's squared
/// relative L2 error per component.
pub fn squared_relative_errors(pred: Tensor<5>, target: Tensor<5>, mask: Tensor<5>) -> Tensor<2> {
    let [b, c, ..] = pred.dims();
    per_channel(pred, target, mask, |x| x.square()).reshape([b, c])
}

/// [`normalized_mse`] with channel c weighted by `weights[c]`: Σ_c w_c · mean_b e_bc / C.
/// With w_c = 1 / (the mean of e_bc of a baseline prediction), the baseline scores 1 and a
/// relative improvement counts alike on every channel, however different their errors.
/// `pred` and `target` are velocity volumes `(B, 3, S, H, W)`.
pub fn weighted_normalized_mse(
    pred: Tensor<5>,
    target: Tensor<5>,
    mask: Tensor<5>,
    weights: [f64; 3],
) -> Tensor<1> {
    let w = Tensor::<1>::from_data(
        TensorData::new(weights.map(|v| v as f32).to_vec(), [3]),
        &pred.device(),
    )
    .reshape([1, 3, 1, 1, 1]);
    (per_channel(pred, target, mask, |x| x.square()) * w).mean()
}

/// KL(N(μ, σ²) ‖ N(0, 1)) averaged over latent elements (so β is per element).
pub fn kl_divergence(mu: Tensor<5>, logvar: Tensor<5>) -> Tensor<1> {
    (logvar.clone().exp() + mu.square() - logvar - 1.0)
        .mean()
        .mul_scalar(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f32>, shape: [usize; 5]) -> Tensor<5> {
        Tensor::from_data(TensorData::new(v, shape), &Device::flex())
    }

    #[test]
    fn normalized_mae_matches_a_hand_computation() {
        // One sample, two channels, two voxels; the second voxel is fibre.
        let pred = t(vec![1.0, 9.0, -1.0, 5.0], [1, 2, 1, 1, 2]);
        let target = t(vec![2.0, 0.0, 1.0, 0.0], [1, 2, 1, 1, 2]);
        let mask = t(vec![1.0, 0.0], [1, 1, 1, 1, 2]);
        // channel 0: |1−2|/|2| = 0.5; channel 1: |−1−1|/|1| = 2 → mean 1.25.
        let got = normalized_mae(pred.clone(), target.clone(), mask.clone()).into_scalar::<f32>();
        assert!((got - 1.25).abs() < 1e-6, "{got}");
        // MSE: 1/4 and 4/1 → 2.125.
        let got = normalized_mse(pred.clone(), target.clone(), mask.clone()).into_scalar::<f32>();
        assert!((got - 2.125).abs() < 1e-6, "{got}");
        let per = squared_relative_errors(pred, target, mask);
        assert_eq!(
            per.into_data().try_to_vec::<f32>().unwrap(),
            vec![0.25, 4.0]
        );
    }

    #[test]
    fn weighted_normalized_mse_scores_the_weights_baseline_one() {
        // Three channels, one fluid voxel: squared relative errors 1/4, 4 and 1/9.
        let pred = t(vec![1.0, -1.0, 2.0], [1, 3, 1, 1, 1]);
        let target = t(vec![2.0, 1.0, 3.0], [1, 3, 1, 1, 1]);
        let mask = t(vec![1.0], [1, 1, 1, 1, 1]);
        let got =
            weighted_normalized_mse(pred.clone(), target.clone(), mask.clone(), [4.0, 0.25, 9.0])
                .into_scalar::<f32>();
        assert!((got - 1.0).abs() < 1e-6, "{got}");
        // Unit weights are the plain normalised MSE.
        let plain = normalized_mse(pred.clone(), target.clone(), mask.clone()).into_scalar::<f32>();
        let got = weighted_normalized_mse(pred, target, mask, [1.0; 3]).into_scalar::<f32>();
        assert!((got - plain).abs() < 1e-6, "{got} vs {plain}");
    }

    #[test]
    fn kl_is_zero_for_the_prior_and_matches_the_formula() {
        let zero = t(vec![0.0; 4], [1, 1, 1, 2, 2]);
        assert!(kl_divergence(zero.clone(), zero).into_scalar::<f32>().abs() < 1e-7);
        // μ = 1, log σ² = ln 2: ½(2 + 1 − ln 2 − 1) = 1 − ½ ln 2.
        let mu = t(vec![1.0], [1, 1, 1, 1, 1]);
        let lv = t(vec![2f32.ln()], [1, 1, 1, 1, 1]);
        let got = kl_divergence(mu, lv).into_scalar::<f32>();
        assert!((got - (1.0 - 0.5 * 2f32.ln())).abs() < 1e-6, "{got}");
    }
}
