//! One sample's metrics as a flat serde record, the row of the per-sample CSV and an entry
//! of the JSON report, and the settings they need.

use fiberflow_geometry::layout::VoxelSize;
use ndarray::ArrayView4;
use serde::{Deserialize, Serialize};

use crate::corrected::{cosine_similarity, relative_l2, topk_iou};
use crate::error::{EvalError, Result, positive};
use crate::input::{Comparison, check_voxel};
use crate::physics::{
    fibre_rms, flow_rate_cv, flow_rate_x, mean, mean_abs_divergence, mean_speed, permeability,
};
use crate::reference::reference_metrics;

/// Resin viscosity of the generated datasets, Pa·s.
pub const DEFAULT_VISCOSITY_PA_S: f64 = 0.1;
/// Driving pressure gradient of the generated datasets, Pa/m.
pub const DEFAULT_PRESSURE_GRADIENT_PA_PER_M: f64 = 1e6;

/// What the metrics need besides the fields, checked once at construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalConfig {
    voxel: VoxelSize,
    dataset_max: [f64; 3],
    viscosity_pa_s: f64,
    pressure_gradient_pa_per_m: f64,
}

impl EvalConfig {
    /// `voxel`: the samples' voxel size; `dataset_max`: max |vx|, |vy|, |vz| of the dataset
    /// (the reference's nMAE/nMSE normalisers). Viscosity and pressure gradient take the
    /// dataset defaults; see [`EvalConfig::with_flow`].
    pub fn new(voxel: VoxelSize, dataset_max: [f64; 3]) -> Result<Self> {
        check_voxel(&voxel)?;
        for m in dataset_max {
            positive("dataset maximum |velocity component|", m)?;
        }
        Ok(Self {
            voxel,
            dataset_max,
            viscosity_pa_s: DEFAULT_VISCOSITY_PA_S,
            pressure_gradient_pa_per_m: DEFAULT_PRESSURE_GRADIENT_PA_PER_M,
        })
    }

    /// The viscosity μ (Pa·s) and pressure gradient G (Pa/m) of K = μ⟨vx⟩/G.
    pub fn with_flow(self, viscosity_pa_s: f64, pressure_gradient_pa_per_m: f64) -> Result<Self> {
        Ok(Self {
            viscosity_pa_s: positive("viscosity_pa_s", viscosity_pa_s)?,
            pressure_gradient_pa_per_m: positive(
                "pressure_gradient_pa_per_m",
                pressure_gradient_pa_per_m,
            )?,
            ..self
        })
    }

    pub fn voxel(&self) -> VoxelSize {
        self.voxel
    }

    pub fn dataset_max(&self) -> [f64; 3] {
        self.dataset_max
    }

    pub fn viscosity_pa_s(&self) -> f64 {
        self.viscosity_pa_s
    }

    pub fn pressure_gradient_pa_per_m(&self) -> f64 {
        self.pressure_gradient_pa_per_m
    }
}

/// Declares [`SampleMetrics`] with one f64 field per metric and the list of their names,
/// so the CSV columns, the JSON keys and the summary cannot drift apart.
macro_rules! sample_metrics {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Every metric of one sample (u, v, w = vx, vy, vz). `ref_*` are the reference's
        /// metrics computed as it computes them; the others are the corrected ones.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct SampleMetrics {
            /// Which sample (index or name), the first CSV column.
            pub sample_id: String,
            $( $(#[$doc])* pub $name: f64, )*
        }

        impl SampleMetrics {
            /// Metric names in column order (after `sample_id`).
            pub const METRIC_NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Metric values in the order of [`Self::METRIC_NAMES`].
            pub fn metric_values(&self) -> Vec<f64> {
                vec![$(self.$name),*]
            }
        }
    };
}

sample_metrics! {
    /// Fluid MAE of vx, m/s (reference).
    ref_mae_u,
    /// Fluid MAE of vy, m/s (reference).
    ref_mae_v,
    /// Fluid MAE of vz, m/s (reference).
    ref_mae_w,
    /// Mean of the three MAEs, m/s (reference).
    ref_mae_total,
    /// Fluid MSE of vx, m²/s² (reference).
    ref_mse_u,
    /// Fluid MSE of vy, m²/s² (reference).
    ref_mse_v,
    /// Fluid MSE of vz, m²/s² (reference).
    ref_mse_w,
    /// Mean of the three MSEs (reference).
    ref_mse_total,
    /// √MSE of vx, m/s (reference).
    ref_rmse_u,
    /// √MSE of vy, m/s (reference).
    ref_rmse_v,
    /// √MSE of vz, m/s (reference).
    ref_rmse_w,
    /// √(mean MSE), m/s (reference).
    ref_rmse_total,
    /// MAE of vx over the dataset max |vx| (reference).
    ref_nmae_u,
    /// MAE of vy over the dataset max |vy| (reference).
    ref_nmae_v,
    /// MAE of vz over the dataset max |vz| (reference).
    ref_nmae_w,
    /// Mean of the three nMAEs (reference).
    ref_nmae_total,
    /// MSE of vx over (max |vx|)² (reference).
    ref_nmse_u,
    /// MSE of vy over (max |vy|)² (reference).
    ref_nmse_v,
    /// MSE of vz over (max |vz|)² (reference).
    ref_nmse_w,
    /// Mean of the three nMSEs (reference).
    ref_nmse_total,
    /// Fluid-mean cosine with the absolute eps 1e-8 (reference, biased towards 0).
    ref_cosine_similarity,
    /// "Top-10 %" speed IoU as implemented: about the top 90 % (reference).
    ref_iou_top10,
    /// "Top-5 %" speed IoU as implemented: about the top 95 % (reference).
    ref_iou_top5,
    /// 1 / (1 + ref_nmae_total) (reference).
    ref_accuracy_score,
    /// ‖p − t‖/‖t‖ of vx over the fluid.
    rel_l2_u,
    /// ‖p − t‖/‖t‖ of vy over the fluid.
    rel_l2_v,
    /// ‖p − t‖/‖t‖ of vz over the fluid.
    rel_l2_w,
    /// ‖p − t‖/‖t‖ of the whole velocity over the fluid.
    rel_l2_total,
    /// IoU of the true top 10 % fluid speeds.
    iou_top10,
    /// IoU of the true top 5 % fluid speeds.
    iou_top5,
    /// Fluid-mean cosine with eps = 1e-6 · mean |t|².
    cosine_similarity,
    /// Mean fluid |∇·u| of the prediction over mean |u_true| / dx.
    div_rel_pred,
    /// Mean fluid |∇·u| of the truth over mean |u_true| / dx (the sampling's own level).
    div_rel_true,
    /// RMS speed of the prediction in fibre voxels, m/s (0 for a masked prediction).
    fibre_rms_pred,
    /// Population std over x of the predicted flow rate Q(x), over the true mean flow rate.
    flow_cv_pred,
    /// Coefficient of variation over x of the true flow rate Q(x).
    flow_cv_true,
    /// Permeability μ⟨vx⟩/G of the prediction, m².
    k_pred_m2,
    /// Permeability μ⟨vx⟩/G of the truth, m².
    k_true_m2,
    /// Signed relative permeability error (K_pred − K_true)/K_true.
    k_rel_err,
}

/// Computes every metric of one sample: prediction and truth `(S, 3, H, W)` in m/s, mask
/// `(S, 1, H, W)` with 1 = fluid. Scores that need a scale take it from the truth, so a
/// poor or zero prediction still gets finite numbers; a truth without flow is an error.
pub fn evaluate_sample(
    sample_id: impl Into<String>,
    pred: ArrayView4<f32>,
    truth: ArrayView4<f32>,
    mask: ArrayView4<f32>,
    config: &EvalConfig,
) -> Result<SampleMetrics> {
    let c = Comparison::new(pred, truth, mask)?;
    let voxel = config.voxel;
    let r = reference_metrics(&c, config.dataset_max)?;
    let rel = relative_l2(&c)?;
    // relative_l2 has checked that every true component is nonzero in the fluid.
    let div_scale = mean_speed(c.truth()) / voxel.dx_m;
    let q_true = flow_rate_x(c.truth());
    let q_mean = mean(&q_true);
    let (mu, g) = (config.viscosity_pa_s, config.pressure_gradient_pa_per_m);
    let k_pred = permeability(c.pred(), mu, g)?;
    let k_true = permeability(c.truth(), mu, g)?;
    if k_true == 0.0 {
        return Err(EvalError::DegenerateTruth {
            metric: "permeability error",
            reason: "the true mean vx is zero",
        });
    }
    Ok(SampleMetrics {
        sample_id: sample_id.into(),
        ref_mae_u: r.mae[0],
        ref_mae_v: r.mae[1],
        ref_mae_w: r.mae[2],
        ref_mae_total: r.mae_total,
        ref_mse_u: r.mse[0],
        ref_mse_v: r.mse[1],
        ref_mse_w: r.mse[2],
        ref_mse_total: r.mse_total,
        ref_rmse_u: r.rmse[0],
        ref_rmse_v: r.rmse[1],
        ref_rmse_w: r.rmse[2],
        ref_rmse_total: r.rmse_total,
        ref_nmae_u: r.nmae[0],
        ref_nmae_v: r.nmae[1],
        ref_nmae_w: r.nmae[2],
        ref_nmae_total: r.nmae_total,
        ref_nmse_u: r.nmse[0],
        ref_nmse_v: r.nmse[1],
        ref_nmse_w: r.nmse[2],
        ref_nmse_total: r.nmse_total,
        ref_cosine_similarity: r.cosine_similarity,
        ref_iou_top10: r.iou_top10,
        ref_iou_top5: r.iou_top5,
        ref_accuracy_score: r.accuracy_score,
        rel_l2_u: rel.components[0],
        rel_l2_v: rel.components[1],
        rel_l2_w: rel.components[2],
        rel_l2_total: rel.total,
        iou_top10: topk_iou(&c, 10.0)?,
        iou_top5: topk_iou(&c, 5.0)?,
        cosine_similarity: cosine_similarity(&c)?,
        div_rel_pred: mean_abs_divergence(c.pred(), &voxel)? / div_scale,
        div_rel_true: mean_abs_divergence(c.truth(), &voxel)? / div_scale,
        fibre_rms_pred: fibre_rms(c.pred()),
        flow_cv_pred: flow_rate_cv(&flow_rate_x(c.pred()), q_mean)?,
        flow_cv_true: flow_rate_cv(&q_true, q_mean)?,
        k_pred_m2: k_pred,
        k_true_m2: k_true,
        k_rel_err: (k_pred - k_true) / k_true,
    })
}

#[cfg(test)]
mod tests {
    use ndarray::{Array4, Axis};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    const VOXEL: VoxelSize = VoxelSize {
        dx_m: 0.2e-6,
        dy_m: 0.2e-6,
        dz_m: 5e-6,
    };

    fn config() -> EvalConfig {
        EvalConfig::new(VOXEL, [3.9e-3, 1.9e-3, 4.0e-3]).unwrap()
    }

    /// A flow-like truth (mean vx > 0), a noisy prediction and a random fibre mask.
    fn case(seed: u64) -> (Array4<f32>, Array4<f32>, Array4<f32>) {
        let (s, h, w) = (3, 7, 6);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let truth = Array4::from_shape_fn((s, 3, h, w), |(_, c, _, _)| {
            let base = if c == 0 { 1e-3 } else { 0.0 };
            base + rng.random_range(-5e-4..5e-4f32)
        });
        let pred = truth.mapv(|v| v + rng.random_range(-2e-4..2e-4f32));
        let mask =
            Array4::from_shape_fn((s, 1, h, w), |_| f32::from(u8::from(rng.random_bool(0.8))));
        (pred, truth, mask)
    }

    #[test]
    fn perfect_prediction_scores_perfectly() {
        let (_, truth, mask) = case(1);
        let masked = &truth * &mask;
        let m = evaluate_sample("0", masked.view(), truth.view(), mask.view(), &config()).unwrap();
        for v in [
            m.ref_mae_total,
            m.ref_mse_total,
            m.ref_nmae_total,
            m.rel_l2_total,
            m.k_rel_err,
            m.fibre_rms_pred,
        ] {
            assert_eq!(v, 0.0);
        }
        for v in [m.iou_top10, m.iou_top5, m.ref_accuracy_score] {
            assert_eq!(v, 1.0);
        }
        assert!((m.cosine_similarity - 1.0).abs() < 1e-3);
        assert_eq!(m.div_rel_pred, m.div_rel_true);
        assert_eq!(m.flow_cv_pred, m.flow_cv_true);
        assert_eq!(m.k_pred_m2, m.k_true_m2);
        assert_eq!(SampleMetrics::METRIC_NAMES.len(), m.metric_values().len());
    }

    /// Mirroring y (rows) and negating vy maps a flow to its mirror image: every metric
    /// here is symmetric under it, so nothing may change.
    #[test]
    fn mirror_symmetry_leaves_metrics_unchanged() {
        let (pred, truth, mask) = case(2);
        let mirror = |a: &Array4<f32>, negate_vy: bool| {
            let mut m = a.clone();
            m.invert_axis(Axis(2));
            if negate_vy {
                m.index_axis_mut(Axis(1), 1).mapv_inplace(|v| -v);
            }
            m
        };
        let a = evaluate_sample("a", pred.view(), truth.view(), mask.view(), &config()).unwrap();
        let (mp, mt, mm) = (
            mirror(&pred, true),
            mirror(&truth, true),
            mirror(&mask, false),
        );
        let b = evaluate_sample("a", mp.view(), mt.view(), mm.view(), &config()).unwrap();
        for ((name, x), y) in SampleMetrics::METRIC_NAMES
            .iter()
            .zip(a.metric_values())
            .zip(b.metric_values())
        {
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(1e-30),
                "{name}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn metrics_respond_to_errors() {
        let (pred, truth, mask) = case(3);
        let m = evaluate_sample("3", pred.view(), truth.view(), mask.view(), &config()).unwrap();
        assert!(m.rel_l2_total > 0.0 && m.ref_mae_u > 0.0 && m.fibre_rms_pred > 0.0);
        assert!(m.iou_top10 < 1.0 && m.cosine_similarity < 1.0);
        // The reference's inflated scores sit above the corrected ones.
        assert!(m.ref_iou_top10 > m.iou_top10);
        // A 20 % slower prediction underestimates K by 20 %.
        let slow = truth.mapv(|v| 0.8 * v);
        let m = evaluate_sample("3", slow.view(), truth.view(), mask.view(), &config()).unwrap();
        assert!((m.k_rel_err + 0.2).abs() < 1e-6, "{}", m.k_rel_err);
        assert!((m.rel_l2_total - 0.2).abs() < 1e-6);
    }

    #[test]
    fn bad_config_and_degenerate_truth_are_errors() {
        assert!(EvalConfig::new(VOXEL, [1.0, -1.0, 1.0]).is_err());
        assert!(EvalConfig::new(VoxelSize { dx_m: 0.0, ..VOXEL }, [1.0; 3]).is_err());
        assert!(config().with_flow(0.0, 1e6).is_err());
        assert!(config().with_flow(0.1, f64::NAN).is_err());
        let cfg = config().with_flow(0.2, 2e6).unwrap();
        assert_eq!(
            (cfg.viscosity_pa_s(), cfg.pressure_gradient_pa_per_m()),
            (0.2, 2e6)
        );
        // vx = ±1e-3 in alternate rows: no net flow, so no flow rate or K to compare with.
        let shape = (2, 3, 4, 5);
        let truth = Array4::from_shape_fn(shape, |(_, c, y, _)| match c {
            0 if y % 2 == 0 => 1e-3f32,
            0 => -1e-3,
            _ => 1e-4,
        });
        let full = Array4::ones((2, 1, 4, 5));
        assert!(matches!(
            evaluate_sample("4", truth.view(), truth.view(), full.view(), &config()),
            Err(EvalError::DegenerateTruth { .. })
        ));
    }
}
