//! The reference's per-sample metrics, formula for formula, so fiberflow numbers compare
//! with those of the Python pipeline it replaces (`scripts/eval_testset_end2end.py` of
//! `Ruby-004/Diffusion_model_project`).
//!
//! Kept as implemented there, bugs included: the absolute cosine eps of 1e-8 (of the order
//! of |p||t| at these speeds), the top-k IoU that keeps the top (100 − k) % and nMAE over
//! the dataset maximum. The reference sums in f32 (where `Σm + 1e-8` rounds to `Σm`); here
//! sums are f64 with the eps written where the reference writes it, so results agree to
//! f32 rounding (~1e-6 relative).

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result, positive};
use crate::input::Comparison;

/// The reference's eps, in the units of whatever it is added to.
pub const REF_EPS: f64 = 1e-8;

/// The reference's per-sample metrics; components in the order (u, v, w) = (vx, vy, vz).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReferenceMetrics {
    /// Σ(|p − t|·m) / (Σm + 1e-8) per component, m/s.
    pub mae: [f64; 3],
    /// Mean of the three.
    pub mae_total: f64,
    /// Σ((p − t)²·m) / (Σm + 1e-8) per component, m²/s².
    pub mse: [f64; 3],
    /// Mean of the three.
    pub mse_total: f64,
    /// √mse per component.
    pub rmse: [f64; 3],
    /// √mse_total (not the mean of the component RMSEs).
    pub rmse_total: f64,
    /// mae / (max_c + 1e-8), max_c the dataset maximum |c|.
    pub nmae: [f64; 3],
    /// Mean of the three.
    pub nmae_total: f64,
    /// mse / (max_c² + 1e-8).
    pub nmse: [f64; 3],
    /// Mean of the three.
    pub nmse_total: f64,
    /// See [`ref_cosine_similarity`].
    pub cosine_similarity: f64,
    /// [`ref_iou_topk`] with k = 10.
    pub iou_top10: f64,
    /// [`ref_iou_topk`] with k = 5.
    pub iou_top5: f64,
    /// 1 / (1 + nmae_total).
    pub accuracy_score: f64,
}

/// All reference metrics of one sample; `dataset_max` is the per-component maximum |c| of
/// the dataset (`U_per_component.max_{u,v,w}` in the reference's `statistics.json`).
pub fn reference_metrics(c: &Comparison, dataset_max: [f64; 3]) -> Result<ReferenceMetrics> {
    for m in dataset_max {
        positive("dataset maximum |velocity component|", m)?;
    }
    let (pred, truth) = (c.pred(), c.truth());
    let n_fluid = pred.n_fluid() as f64;
    let mut abs = [0.0; 3];
    let mut sq = [0.0; 3];
    for k in 0..3 {
        for ((p, t), &f) in pred
            .component(k)
            .iter()
            .zip(truth.component(k))
            .zip(pred.fluid())
        {
            if f {
                abs[k] += (p - t).abs();
                sq[k] += (p - t) * (p - t);
            }
        }
    }
    let mae = abs.map(|s| s / (n_fluid + REF_EPS));
    let mse = sq.map(|s| s / (n_fluid + REF_EPS));
    let mean3 = |a: [f64; 3]| (a[0] + a[1] + a[2]) / 3.0;
    let nmae: [f64; 3] = std::array::from_fn(|k| mae[k] / (dataset_max[k] + REF_EPS));
    let nmse: [f64; 3] =
        std::array::from_fn(|k| mse[k] / (dataset_max[k] * dataset_max[k] + REF_EPS));
    let nmae_total = mean3(nmae);
    Ok(ReferenceMetrics {
        mae,
        mae_total: mean3(mae),
        mse,
        mse_total: mean3(mse),
        rmse: mse.map(f64::sqrt),
        rmse_total: mean3(mse).sqrt(),
        nmae,
        nmae_total,
        nmse,
        nmse_total: mean3(nmse),
        cosine_similarity: ref_cosine_similarity(c),
        iou_top10: ref_iou_topk(c, 10.0)?,
        iou_top5: ref_iou_topk(c, 5.0)?,
        accuracy_score: 1.0 / (1.0 + nmae_total),
    })
}

/// Per-voxel (p·t) / (|p||t| + 1e-8), averaged over the fluid. With velocities of
/// 1e-4…1e-3 m/s, |p||t| is 1e-8…1e-6, so the eps pulls the score towards 0.
pub fn ref_cosine_similarity(c: &Comparison) -> f64 {
    let (pred, truth) = (c.pred(), c.truth());
    let sum: f64 = (0..pred.fluid().len())
        .filter(|&i| pred.fluid()[i])
        .map(|i| {
            let (p, t) = (pred.at(i), truth.at(i));
            dot(p, t) / (norm(p) * norm(t) + REF_EPS)
        })
        .sum();
    sum / pred.n_fluid() as f64
}

/// The reference's "top-k %" IoU of speed over fluid voxels: with speeds sorted
/// descending, the threshold is `sorted[min(int(n·(100 − k)/100), n − 1)]`, each set is
/// {speed ≥ its threshold} and IoU = |A∩B| / (|A∪B| + 1e-8). The index counts from the
/// top, so "top-10 %" keeps about the top 90 % of voxels and the IoU is inflated.
pub fn ref_iou_topk(c: &Comparison, k_percent: f64) -> Result<f64> {
    let (a, b) = (
        ref_topk_set(c, 0, k_percent)?,
        ref_topk_set(c, 1, k_percent)?,
    );
    let inter = a.iter().zip(&b).filter(|&(&x, &y)| x && y).count();
    let union = a.iter().zip(&b).filter(|&(&x, &y)| x || y).count();
    Ok(inter as f64 / (union as f64 + REF_EPS))
}

/// The set the reference selects as "top-k %" of the prediction (`which` = 0) or the
/// truth (1), one flag per fluid voxel in storage order.
fn ref_topk_set(c: &Comparison, which: usize, k_percent: f64) -> Result<Vec<bool>> {
    if !(k_percent > 0.0 && k_percent < 100.0) {
        return Err(EvalError::Parameter {
            name: "k_percent",
            value: k_percent,
            reason: "must lie in (0, 100)",
        });
    }
    let flow = [c.pred(), c.truth()][which];
    let speed: Vec<f64> = (0..flow.fluid().len())
        .filter(|&i| flow.fluid()[i])
        .map(|i| norm(flow.at(i)))
        .collect();
    let n = speed.len();
    // Python's int(len * (100 - k) / 100): the same f64 operations, truncated.
    let k_idx = (n as f64 * (100.0 - k_percent) / 100.0) as usize;
    let mut sorted = speed.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[k_idx.min(n - 1)];
    Ok(speed.iter().map(|&s| s >= threshold).collect())
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use ndarray::Array4;

    use super::*;

    /// Hand-computable sample: 4 voxels in a row (S = H = 1, W = 4), the last one fibre.
    fn tiny() -> Comparison {
        let truth = Array4::from_shape_vec(
            [1, 3, 1, 4],
            vec![
                1.0, 2.0, 0.0, 9.0, // vx
                0.0, 1.0, 0.0, 9.0, // vy
                0.0, 0.0, 2.0, 9.0, // vz
            ],
        )
        .unwrap();
        let pred = Array4::from_shape_vec(
            [1, 3, 1, 4],
            vec![
                2.0, 2.0, 0.0, -5.0, // vx: errors 1, 0, 0 (fibre ignored)
                0.0, -1.0, 0.0, 7.0, // vy: errors 0, 2, 0
                0.0, 0.0, 5.0, 3.0, // vz: errors 0, 0, 3
            ],
        )
        .unwrap();
        let mask = Array4::from_shape_vec([1, 1, 1, 4], vec![1.0, 1.0, 1.0, 0.0]).unwrap();
        Comparison::new(pred.view(), truth.view(), mask.view()).unwrap()
    }

    #[test]
    fn hand_computed_errors() {
        let max = [2.0, 0.5, 4.0];
        let r = reference_metrics(&tiny(), max).unwrap();
        let d = 3.0 + REF_EPS;
        let close =
            |a: f64, b: f64| assert!((a - b).abs() <= 1e-14 * b.abs().max(1.0), "{a} vs {b}");
        for (got, want) in r.mae.iter().zip([1.0 / d, 2.0 / d, 3.0 / d]) {
            close(*got, want);
        }
        close(r.mae_total, 2.0 / d);
        for (got, want) in r.mse.iter().zip([1.0 / d, 4.0 / d, 9.0 / d]) {
            close(*got, want);
        }
        close(r.mse_total, 14.0 / 3.0 / d);
        close(r.rmse[1], (4.0 / d).sqrt());
        // rmse_total is √(mean mse), not the mean of the component RMSEs.
        close(r.rmse_total, (14.0 / 3.0 / d).sqrt());
        let nmae = [
            1.0 / d / (2.0 + REF_EPS),
            2.0 / d / (0.5 + REF_EPS),
            3.0 / d / (4.0 + REF_EPS),
        ];
        for (got, want) in r.nmae.iter().zip(nmae) {
            close(*got, want);
        }
        close(r.nmae_total, nmae.iter().sum::<f64>() / 3.0);
        // The eps sits outside the square: max² + 1e-8.
        close(r.nmse[2], 9.0 / d / (16.0 + REF_EPS));
        close(
            r.accuracy_score,
            1.0 / (1.0 + nmae.iter().sum::<f64>() / 3.0),
        );
        // Cosine per fluid voxel: (2·1)/(2·1 + eps); (4 − 1)/(√5·√5 + eps); (5·2)/(5·2 + eps).
        let cos = 2.0 / (2.0 + REF_EPS) + 3.0 / (5.0 + REF_EPS) + 10.0 / (10.0 + REF_EPS);
        close(r.cosine_similarity, cos / 3.0);
    }

    #[test]
    fn dataset_max_must_be_positive() {
        assert!(reference_metrics(&tiny(), [1.0, 0.0, 1.0]).is_err());
        assert!(reference_metrics(&tiny(), [1.0, f64::NAN, 1.0]).is_err());
    }

    /// Identical vectors of 1e-4 m/s: |p||t| = 1e-8 equals the eps, so the reference
    /// reports 0.5 where the true cosine is 1 (its absolute-eps bug).
    #[test]
    fn cosine_eps_halves_small_velocities() {
        let u = Array4::from_elem([1, 3, 2, 2], 0.0f32);
        let mut u = u;
        u.index_axis_mut(ndarray::Axis(1), 0).fill(1e-4);
        let mask = Array4::ones([1, 1, 2, 2]);
        let c = Comparison::new(u.view(), u.view(), mask.view()).unwrap();
        let v = f64::from(1e-4f32);
        assert!((ref_cosine_similarity(&c) - v * v / (v * v + REF_EPS)).abs() < 1e-12);
        assert!((ref_cosine_similarity(&c) - 0.5).abs() < 1e-6);
    }

    /// A ramp of 100 speeds 1…100 (vx only): "top-10 %" takes sorted[90] = 10 as threshold
    /// and keeps 91 voxels, not 10. Against the reversed ramp (anti-correlated fields,
    /// whose true top-10 % sets are disjoint) it still reports IoU 82/100.
    #[test]
    fn topk_bug_keeps_about_ninety_percent() {
        let ramp = Array4::from_shape_fn([1, 3, 10, 10], |(_, c, y, x)| {
            if c == 0 { (10 * y + x + 1) as f32 } else { 0.0 }
        });
        let reversed = Array4::from_shape_fn([1, 3, 10, 10], |(_, c, y, x)| {
            if c == 0 {
                (100 - (10 * y + x)) as f32
            } else {
                0.0
            }
        });
        let mask = Array4::ones([1, 1, 10, 10]);
        let c = Comparison::new(reversed.view(), ramp.view(), mask.view()).unwrap();
        let kept = |k| {
            ref_topk_set(&c, 1, k)
                .unwrap()
                .iter()
                .filter(|&&s| s)
                .count()
        };
        assert_eq!(kept(10.0), 91);
        assert_eq!(kept(5.0), 96);
        let iou = ref_iou_topk(&c, 10.0).unwrap();
        assert!((iou - 82.0 / (100.0 + REF_EPS)).abs() < 1e-15, "{iou}");
        assert!(ref_iou_topk(&c, 0.0).is_err());
        assert!(ref_iou_topk(&c, 100.0).is_err());
    }
}
