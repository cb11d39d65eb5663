//! Accuracy metrics that mean what their names say, replacing the reference's flawed ones
//! (top-k IoU keeping the top (100 − k) %, absolute cosine eps, nMAE over the dataset
//! maximum). All average over fluid voxels only and normalise by the true field of the
//! same sample, so they are scale-free and comparable across samples and datasets.

use crate::error::{EvalError, Result};
use crate::input::{Comparison, Flow};
use crate::reference::{dot, norm};

/// Relative eps of [`cosine_similarity`], times the fluid mean of |t|².
pub const COSINE_REL_EPS: f64 = 1e-6;

/// Relative L2 errors ‖p − t‖ / ‖t‖ over the fluid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelativeL2 {
    /// Per component (vx, vy, vz).
    pub components: [f64; 3],
    /// Over all three components together: √(Σ_c‖p_c − t_c‖²) / √(Σ_c‖t_c‖²).
    pub total: f64,
}

/// Relative L2 error per component and in total. Unlike nMAE over the dataset maximum it
/// is 0 for a perfect and 1 for an all-zero prediction, whatever the flow rate.
pub fn relative_l2(c: &Comparison) -> Result<RelativeL2> {
    let (pred, truth) = (c.pred(), c.truth());
    let mut err = [0.0; 3];
    let mut reference = [0.0; 3];
    for k in 0..3 {
        for ((p, t), &f) in pred
            .component(k)
            .iter()
            .zip(truth.component(k))
            .zip(pred.fluid())
        {
            if f {
                err[k] += (p - t) * (p - t);
                reference[k] += t * t;
            }
        }
    }
    if reference.contains(&0.0) {
        return Err(EvalError::DegenerateTruth {
            metric: "relative L2 error",
            reason: "a true velocity component is zero over the whole fluid",
        });
    }
    Ok(RelativeL2 {
        components: std::array::from_fn(|k| (err[k] / reference[k]).sqrt()),
        total: (err.iter().sum::<f64>() / reference.iter().sum::<f64>()).sqrt(),
    })
}

/// IoU of the fluid voxels holding the k % largest speeds |u| in the truth and in the
/// prediction: round(k·n/100) voxels each (at least one), ties broken by storage order so
/// both sets have exactly that size. Identical fields give 1, disjoint hot spots 0.
pub fn topk_iou(c: &Comparison, k_percent: f64) -> Result<f64> {
    if !(k_percent > 0.0 && k_percent <= 100.0) {
        return Err(EvalError::Parameter {
            name: "k_percent",
            value: k_percent,
            reason: "must lie in (0, 100]",
        });
    }
    let n = c.pred().n_fluid();
    let size = ((k_percent * n as f64 / 100.0).round() as usize).clamp(1, n);
    let (a, b) = (top_set(c.pred(), size), top_set(c.truth(), size));
    let inter = a.iter().zip(&b).filter(|&(&x, &y)| x && y).count();
    Ok(inter as f64 / (2 * size - inter) as f64)
}

/// Flags, per fluid voxel in storage order, of the `size` largest speeds.
fn top_set(flow: &Flow, size: usize) -> Vec<bool> {
    let mut speed: Vec<(f64, usize)> = (0..flow.fluid().len())
        .filter(|&i| flow.fluid()[i])
        .enumerate()
        .map(|(j, i)| (norm(flow.at(i)), j))
        .collect();
    let n = speed.len();
    let descending = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if size < n {
        speed.select_nth_unstable_by(size - 1, descending);
    }
    let mut set = vec![false; n];
    for &(_, j) in &speed[..size] {
        set[j] = true;
    }
    set
}

/// Per-voxel (p·t) / (|p||t| + ε) averaged over the fluid, with ε = 1e-6 · mean_fluid |t|²:
/// it tracks the velocity scale of the sample, so it matters only where both speeds are
/// ~1000× below typical (there the direction is noise), unlike the reference's absolute
/// 1e-8 m²/s², which is of the order of |p||t| itself.
pub fn cosine_similarity(c: &Comparison) -> Result<f64> {
    let (pred, truth) = (c.pred(), c.truth());
    let fluid: Vec<usize> = (0..pred.fluid().len())
        .filter(|&i| pred.fluid()[i])
        .collect();
    let mean_sq = fluid
        .iter()
        .map(|&i| dot(truth.at(i), truth.at(i)))
        .sum::<f64>()
        / fluid.len() as f64;
    if mean_sq == 0.0 {
        return Err(EvalError::DegenerateTruth {
            metric: "cosine similarity",
            reason: "the true velocity is zero over the whole fluid",
        });
    }
    let eps = COSINE_REL_EPS * mean_sq;
    let sum: f64 = fluid
        .iter()
        .map(|&i| {
            let (p, t) = (pred.at(i), truth.at(i));
            dot(p, t) / (norm(p) * norm(t) + eps)
        })
        .sum();
    Ok(sum / fluid.len() as f64)
}

#[cfg(test)]
mod tests {
    use ndarray::{Array4, Axis};

    use super::*;

    fn field(f: impl Fn(usize, usize, usize, usize) -> f32) -> Array4<f32> {
        Array4::from_shape_fn([2, 3, 4, 5], |(s, c, y, x)| f(s, c, y, x))
    }

    /// Fibres at x = 0; the rest is fluid.
    fn mask() -> Array4<f32> {
        Array4::from_shape_fn([2, 1, 4, 5], |(_, _, _, x)| f32::from(u8::from(x > 0)))
    }

    fn smooth(s: usize, c: usize, y: usize, x: usize) -> f32 {
        ((s + 1) * (c + 2)) as f32 * (0.3 * y as f32 + 0.7 * x as f32 + 0.1).sin()
    }

    #[test]
    fn scaled_field_has_relative_error_of_the_scale() {
        let truth = field(smooth);
        let pred = truth.mapv(|v| 1.1 * v);
        let c = Comparison::new(pred.view(), truth.view(), mask().view()).unwrap();
        let r = relative_l2(&c).unwrap();
        for e in r.components.into_iter().chain([r.total]) {
            // f32 storage of 1.1·v limits agreement to ~1e-7.
            assert!((e - 0.1).abs() < 1e-6, "{e}");
        }
    }

    #[test]
    fn relative_l2_per_component_by_hand() {
        // One fluid voxel: t = (3, 4, 1), p = (0, 4, 3): errors 3, 0, 2.
        let truth = Array4::from_shape_vec([1, 3, 1, 1], vec![3.0, 4.0, 1.0]).unwrap();
        let pred = Array4::from_shape_vec([1, 3, 1, 1], vec![0.0, 4.0, 3.0]).unwrap();
        let m = Array4::ones([1, 1, 1, 1]);
        let c = Comparison::new(pred.view(), truth.view(), m.view()).unwrap();
        let r = relative_l2(&c).unwrap();
        assert_eq!(r.components, [1.0, 0.0, 2.0]);
        assert!((r.total - (13.0f64 / 26.0).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn zero_true_component_is_an_error() {
        let truth = field(|s, c, y, x| if c == 2 { 0.0 } else { smooth(s, c, y, x) });
        let c = Comparison::new(truth.view(), truth.view(), mask().view()).unwrap();
        assert!(matches!(
            relative_l2(&c),
            Err(EvalError::DegenerateTruth { .. })
        ));
        let zero = Array4::zeros([2, 3, 4, 5]);
        let c = Comparison::new(truth.view(), zero.view(), mask().view()).unwrap();
        assert!(cosine_similarity(&c).is_err());
    }

    #[test]
    fn iou_of_identical_fields_is_one_and_of_disjoint_hot_spots_zero() {
        let truth = field(smooth);
        let c = Comparison::new(truth.view(), truth.view(), mask().view()).unwrap();
        for k in [5.0, 10.0, 50.0, 100.0] {
            assert_eq!(topk_iou(&c, k).unwrap(), 1.0);
        }
        // Ramp 1…100 against its reverse: the true top-10 % sets {91…100} and {1…10}
        // share no voxel (the reference's version reports 0.82 here).
        let ramp = Array4::from_shape_fn([1, 3, 10, 10], |(_, c, y, x)| {
            if c == 0 { (10 * y + x + 1) as f32 } else { 0.0 }
        });
        let mut reversed = ramp.clone();
        reversed.invert_axis(Axis(2));
        reversed.invert_axis(Axis(3));
        let m = Array4::ones([1, 1, 10, 10]);
        let c = Comparison::new(reversed.view(), ramp.view(), m.view()).unwrap();
        assert_eq!(topk_iou(&c, 10.0).unwrap(), 0.0);
        assert_eq!(topk_iou(&c, 5.0).unwrap(), 0.0);
        // Top 60 %: true values 41…100 against 1…60 share 20 voxels of a union of 100.
        assert!((topk_iou(&c, 60.0).unwrap() - 0.2).abs() < 1e-15);
        assert!(topk_iou(&c, 0.0).is_err());
        assert!(topk_iou(&c, 101.0).is_err());
    }

    #[test]
    fn cosine_is_scale_free() {
        let truth = field(smooth);
        let c = Comparison::new(truth.view(), truth.view(), mask().view()).unwrap();
        let unit = cosine_similarity(&c).unwrap();
        assert!(unit < 1.0 && unit > 1.0 - 1e-4, "{unit}");
        // Powers of two scale f32 values exactly.
        for scale in [2f32.powi(-20), 2f32.powi(10)] {
            let t = truth.mapv(|v| v * scale);
            let c = Comparison::new(t.view(), t.view(), mask().view()).unwrap();
            let cos = cosine_similarity(&c).unwrap();
            assert!((cos - unit).abs() < 1e-14, "scale {scale}: {cos}");
            let neg = t.mapv(|v| -v);
            let c = Comparison::new(neg.view(), t.view(), mask().view()).unwrap();
            assert!((cosine_similarity(&c).unwrap() + unit).abs() < 1e-14);
        }
        // Orthogonal everywhere: p = (−t_y, t_x, 0) with t = (t_x, t_y, 0).
        let t = field(|s, c, y, x| if c == 2 { 0.0 } else { smooth(s, c, y, x) });
        let p = Array4::from_shape_fn(t.raw_dim(), |(s, c, y, x)| match c {
            0 => -t[[s, 1, y, x]],
            1 => t[[s, 0, y, x]],
            _ => 0.0,
        });
        let c = Comparison::new(p.view(), t.view(), mask().view()).unwrap();
        assert!(cosine_similarity(&c).unwrap().abs() < 1e-12);
    }
}
