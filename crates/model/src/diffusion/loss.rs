//! Training losses between the denoiser's output and its target (ε or v, see
//! [`NoiseSchedule::target`](super::NoiseSchedule::target)): the plain MSE of Ho et al.
//! 2020 ("simple" objective, eq. 14) and the reference's normalised per-component MSE.

use super::prediction::same_shape;
use crate::error::ModelError;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Added to the normaliser mean(target²), as the reference, so a zero target is finite.
const NORM_EPS: f64 = 1e-8;

/// How the prediction error is reduced to a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionLoss {
    /// mean((p − t)²) over all elements (Ho et al. 2020).
    Mse,
    /// For each sample b and channel c, mean((p − t)²) / (mean(t²) + 1e-8) over
    /// (S, H, W), averaged over b and c: the reference's `normalized_mse_loss_per_component`
    /// (its items were single slices; here an item is a whole sample).
    NormalizedMse,
}

impl PredictionLoss {
    /// The loss of `prediction` against `target`, both `(B, C, S, H, W)`.
    pub fn compute(
        self,
        prediction: Tensor<5>,
        target: Tensor<5>,
    ) -> Result<Tensor<1>, ModelError> {
        same_shape("prediction loss", &prediction, &target)?;
        Ok(match self {
            Self::Mse => (prediction - target).square().mean(),
            Self::NormalizedMse => {
                let err = (prediction - target.clone()).square().mean_dims(&[2, 3, 4]);
                let scale = target.square().mean_dims(&[2, 3, 4]).add_scalar(NORM_EPS);
                (err / scale).mean()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f32>, shape: [usize; 5]) -> Tensor<5> {
        Tensor::from_data(TensorData::new(v, shape), &Device::flex())
    }

    #[test]
    fn losses_match_a_hand_computation() {
        // Two samples, two channels, two elements each.
        let p = t(
            vec![1.0, 3.0, 0.0, 0.0, 2.0, 2.0, 1.0, -1.0],
            [2, 2, 1, 1, 2],
        );
        let y = t(
            vec![1.0, 1.0, 2.0, 0.0, 0.0, 2.0, 1.0, 1.0],
            [2, 2, 1, 1, 2],
        );
        // Squared errors: [0, 4 | 4, 0 | 4, 0 | 0, 4] → MSE 16/8.
        let mse = PredictionLoss::Mse.compute(p.clone(), y.clone()).unwrap();
        assert!((mse.into_scalar::<f32>() - 2.0).abs() < 1e-6);
        // Per (b, c): mean err² / mean t² = 2/1, 2/2, 2/2, 2/1 → 1.5.
        let got = PredictionLoss::NormalizedMse.compute(p, y).unwrap();
        assert!((got.into_scalar::<f32>() - 1.5).abs() < 1e-6);
        // A zero target divides by the 1e-8 floor: 4 / 1e-8.
        let p = t(vec![2.0, 2.0], [1, 1, 1, 1, 2]);
        let y = t(vec![0.0, 0.0], [1, 1, 1, 1, 2]);
        let got = PredictionLoss::NormalizedMse
            .compute(p, y)
            .unwrap()
            .into_scalar::<f64>();
        assert!((got / 4e8 - 1.0).abs() < 1e-6, "{got}");
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let a = t(vec![0.0; 4], [1, 1, 1, 2, 2]);
        let b = t(vec![0.0; 4], [1, 1, 1, 1, 4]);
        let e = PredictionLoss::Mse.compute(a, b).unwrap_err().to_string();
        assert!(e.contains("prediction loss"), "{e}");
    }
}
