//! Field-error metrics over the fluid, per velocity component.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Sums over the fluid that the metrics need, per component, accumulated over batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorSums {
    /// Σ (p_c − t_c)² per component.
    pub err2: [f64; 3],
    /// Σ t_c² per component.
    pub true2: [f64; 3],
    /// Σ p_c² per component.
    pub pred2: [f64; 3],
}

/// Summary of a field comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FieldErrors {
    /// ‖p_c − t_c‖ / ‖t_c‖ over the fluid, per component (vx, vy, vz).
    pub relative_l2: [f64; 3],
    /// ‖p − t‖ / ‖t‖ over all components of whatever the caller passed: training
    /// validates on components normalised by their standard deviations, so vz weighs like
    /// vx (unlike `fiberflow_eval`'s `rel_l2_total`, in m/s). Run logs written before the
    /// rename call it `relative_l2_total`.
    #[serde(alias = "relative_l2_total")]
    pub relative_l2_total_normalised: f64,
    /// ‖vz_pred‖ / ‖vz_true‖: 1 when the magnitude of vz is recovered (the reference's
    /// VAE reached 0.043).
    pub vz_ratio: f64,
}

impl ErrorSums {
    /// Adds a batch `(B, 3, S, H, W)` under its fluid mask `(B, 1, S, H, W)`.
    pub fn add(&mut self, pred: Tensor<5>, target: Tensor<5>, mask: Tensor<5>) {
        let sums = |t: Tensor<5>| -> Vec<f64> {
            t.sum_dims(&[0, 2, 3, 4])
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .expect("f64 data")
        };
        let (p, t) = (pred * mask.clone(), target * mask);
        let e = sums((p.clone() - t.clone()).square());
        let tt = sums(t.square());
        let pp = sums(p.square());
        for c in 0..3 {
            self.err2[c] += e[c];
            self.true2[c] += tt[c];
            self.pred2[c] += pp[c];
        }
    }

    pub fn errors(&self) -> FieldErrors {
        let ratio = |a: f64, b: f64| if b > 0.0 { (a / b).sqrt() } else { f64::NAN };
        FieldErrors {
            relative_l2: std::array::from_fn(|c| ratio(self.err2[c], self.true2[c])),
            relative_l2_total_normalised: ratio(self.err2.iter().sum(), self.true2.iter().sum()),
            vz_ratio: ratio(self.pred2[2], self.true2[2]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn errors_match_a_hand_computation() {
        let dev = Device::flex();
        // Two voxels, the second in fibre (ignored).
        let t = |v: Vec<f32>| Tensor::<5>::from_data(TensorData::new(v, [1, 3, 1, 1, 2]), &dev);
        let target = t(vec![3.0, 100.0, 4.0, 100.0, 2.0, 100.0]);
        let pred = t(vec![3.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let mask =
            Tensor::<5>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 1, 1, 1, 2]), &dev);
        let mut s = ErrorSums::default();
        s.add(pred, target, mask);
        let e = s.errors();
        assert_eq!(e.relative_l2, [0.0, 1.0, 0.5]);
        assert!((e.relative_l2_total_normalised - (17f64 / 29.0).sqrt()).abs() < 1e-12);
        assert!((e.vz_ratio - 0.5).abs() < 1e-12);
    }

    /// Run logs written before the rename (the built-in model's among them) still read.
    #[test]
    fn logs_with_the_old_name_read() {
        let old = r#"{"relative_l2":[0.1,0.2,0.3],"relative_l2_total":0.25,"vz_ratio":0.9}"#;
        let e: FieldErrors = serde_json::from_str(old).unwrap();
        assert_eq!(e.relative_l2_total_normalised, 0.25);
        let new = serde_json::to_string(&e).unwrap();
        assert!(
            new.contains("\"relative_l2_total_normalised\":0.25"),
            "{new}"
        );
    }
}
