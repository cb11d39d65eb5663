//! Features that the networks see next to the flow: the fluid mask and the distance to the
//! nearest fibre in physical units, and the slice-to-slice change of the per-slice 2D
//! pressure. The geometry fixes where the fine structure of the flow is, so a decoder that
//! sees it does not have to squeeze the geometry through its latent; the pressure change
//! is the one cheap input that says where fluid moves along z.

use fiberflow_geometry::distance::periodic_edt;
use ndarray::{Array4, ArrayView4, Axis};

use crate::error::{DataError, Result};

/// Feature channels per voxel: mask, scaled distance.
pub const GEOMETRY_CHANNELS: usize = 2;

/// Distances are given in units of this many micrometres, so typical gap half-widths
/// (0.5–5 µm) are O(1) whatever the pixel size.
pub const DISTANCE_SCALE_UM: f64 = 2.0;

/// `(S, 2, H, W)` features of a `(S, 1, H, W)` fluid mask with pixels `pixel_m` wide:
/// channel 0 the mask (1 = fluid), channel 1 the periodic in-plane distance from each
/// fluid pixel centre to the nearest fibre pixel centre, in units of
/// [`DISTANCE_SCALE_UM`] (0 in fibres; a slice without fibre gets its half width).
pub fn geometry_features(domain: ArrayView4<f32>, pixel_m: f64) -> Result<Array4<f32>> {
    let (s, c, h, w) = domain.dim();
    if c != 1 {
        return Err(DataError::invalid(
            "<domain>",
            format!("expected one mask channel, got {c}"),
        ));
    }
    if !(pixel_m.is_finite() && pixel_m > 0.0) {
        return Err(DataError::invalid(
            "<domain>",
            format!("pixel size {pixel_m} m must be positive"),
        ));
    }
    let scale = pixel_m / (DISTANCE_SCALE_UM * fiberflow_geometry::layout::UM);
    let far = 0.5 * h.min(w) as f64;
    let mut out = Array4::<f32>::zeros((s, GEOMETRY_CHANNELS, h, w));
    for (k, mut slice) in out.axis_iter_mut(Axis(0)).enumerate() {
        let mask = domain
            .index_axis(Axis(0), k)
            .index_axis(Axis(0), 0)
            .mapv(|v| u8::from(v > 0.5));
        let dist = periodic_edt(mask.view(), |v| v == 0);
        for ((y, x), &m) in mask.indexed_iter() {
            slice[[0, y, x]] = f32::from(m);
            slice[[1, y, x]] = (dist[[y, x]].min(far) * scale) as f32;
        }
    }
    Ok(out)
}

/// Channels of [`pressure_change`].
pub const PRESSURE_CHANNELS: usize = 1;

/// Gain of [`pressure_change`], chosen so the feature has a root mean square near 1 on
/// the default packings (the slice-to-slice change is ≈ 0.24 of the pressure's own rms).
pub const PRESSURE_CHANGE_GAIN: f64 = 4.0;

/// `(S, 1, H, W)` change of the per-slice 2D pressure along z, per slice pitch, of a
/// `(S, 1, H, W)` pressure `p2d` on the fluid mask `domain`. Each slice's pressure is first
/// taken relative to its mean over the fluid (a 2D solve fixes its pressure only up to a
/// constant, and other solvers pick other constants). Then: the central difference
/// (p[s+1] − p[s−1]) / 2 with periodic slices (like the solver's z boundary), one-sided
/// where a neighbour pixel is fibre, 0 in fibre and where both are; divided by the rms of
/// the relative pressure over the fluid (so it does not depend on viscosity or driving
/// gradient) and multiplied by [`PRESSURE_CHANGE_GAIN`].
///
/// Why: each slice's 2D solve has its own pressure; in 3D those pressures must join, and
/// their mismatch between neighbouring slices is what pushes fluid along z. On the default
/// quickstart data a linear fit of vz on an approximation of this feature (plain central
/// difference and its 5×5 average, times powers of the distance to fibres) explains ≈ 23 %
/// of vz's energy on the validation split, where the same fit on the fibres' lean (their
/// centre lines' slope along z) explains ≈ 3 % (`scripts/vz_regression.py`).
pub fn pressure_change(p2d: ArrayView4<f32>, domain: ArrayView4<f32>) -> Result<Array4<f32>> {
    if p2d.dim() != domain.dim() || domain.dim().1 != 1 {
        return Err(DataError::invalid(
            "<p_2d>",
            format!(
                "the 2D pressure is {:?} but the mask is {:?}; both must be (S, 1, H, W)",
                p2d.shape(),
                domain.shape()
            ),
        ));
    }
    let (s, _, h, w) = domain.dim();
    let fluid = |k: usize, y: usize, x: usize| domain[[k, 0, y, x]] > 0.5;
    // Per-slice fluid means, then the rms of the pressure relative to them.
    let mut means = vec![0.0f64; s];
    for (k, mean) in means.iter_mut().enumerate() {
        let (mut sum, mut n) = (0.0f64, 0usize);
        for ((_, _, y, x), &v) in p2d.slice(ndarray::s![k..=k, .., .., ..]).indexed_iter() {
            if fluid(k, y, x) {
                sum += f64::from(v);
                n += 1;
            }
        }
        *mean = sum / n.max(1) as f64;
    }
    let rel = |k: usize, y: usize, x: usize| f64::from(p2d[[k, 0, y, x]]) - means[k];
    let (mut sum2, mut n) = (0.0f64, 0usize);
    for ((k, _, y, x), _) in p2d.indexed_iter() {
        if fluid(k, y, x) {
            sum2 += rel(k, y, x).powi(2);
            n += 1;
        }
    }
    let rms = (sum2 / n.max(1) as f64).sqrt();
    let mut out = Array4::<f32>::zeros((s, PRESSURE_CHANNELS, h, w));
    if s < 2 || rms == 0.0 {
        return Ok(out);
    }
    let gain = PRESSURE_CHANGE_GAIN / rms;
    for k in 0..s {
        let (up, down) = ((k + 1) % s, (k + s - 1) % s);
        for y in 0..h {
            for x in 0..w {
                if !fluid(k, y, x) {
                    continue;
                }
                let p = |j: usize| rel(j, y, x);
                let change = match (fluid(up, y, x), fluid(down, y, x)) {
                    (true, true) => 0.5 * (p(up) - p(down)),
                    (true, false) => p(up) - p(k),
                    (false, true) => p(k) - p(down),
                    (false, false) => 0.0,
                };
                out[[k, 0, y, x]] = (gain * change) as f32;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_change_by_hand() {
        // Three slices of one row of 3 pixels; pixel 2 is fibre in slice 2. Every slice's
        // fluid values have mean 0, so the relative pressure is p itself.
        let mut d = Array4::<f32>::ones((3, 1, 1, 3));
        d[[2, 0, 0, 2]] = 0.0;
        let p = Array4::from_shape_vec(
            (3, 1, 1, 3),
            vec![-1.0, 0.0, 1.0, -2.0, 0.0, 2.0, 1.0, -1.0, 0.0],
        )
        .unwrap();
        let f = pressure_change(p.view(), d.view()).unwrap();
        // rms over the 8 fluid values: sqrt((1+0+1+4+0+4+1+1)/8) = sqrt(1.5).
        let g = PRESSURE_CHANGE_GAIN as f32 / 1.5f32.sqrt();
        let close = |a: f32, b: f32| assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        // Pixel 0: central differences with periodic slices.
        close(f[[0, 0, 0, 0]], g * 0.5 * (-2.0 - 1.0));
        close(f[[1, 0, 0, 0]], g * 0.5 * (1.0 - -1.0));
        close(f[[2, 0, 0, 0]], g * 0.5 * (-1.0 - -2.0));
        // Pixel 2: slice 2 is fibre, so slices 1 and 0 use one-sided differences.
        close(f[[1, 0, 0, 2]], g * (2.0 - 1.0));
        close(f[[0, 0, 0, 2]], g * (2.0 - 1.0));
        assert_eq!(f[[2, 0, 0, 2]], 0.0);
        // Invariant to the pressure's scale (viscosity, driving gradient) and to a
        // constant added to any slice (the gauge of a 2D solve).
        let mut other = p.mapv(|v| 10.0 * v);
        other
            .slice_mut(ndarray::s![1, .., .., ..])
            .mapv_inplace(|v| v + 7.0);
        let f2 = pressure_change(other.view(), d.view()).unwrap();
        assert!(f.iter().zip(&f2).all(|(a, b)| (a - b).abs() < 1e-5));
        // One slice has no neighbours; mismatched shapes are refused.
        let one = pressure_change(
            p.slice(ndarray::s![..1, .., .., ..]),
            d.slice(ndarray::s![..1, .., .., ..]),
        );
        assert!(one.unwrap().iter().all(|&v| v == 0.0));
        let err = pressure_change(p.view(), d.slice(ndarray::s![..2, .., .., ..])).unwrap_err();
        assert!(err.to_string().contains("(S, 1, H, W)"), "{err}");
    }

    #[test]
    fn distance_is_physical_and_periodic() {
        // An 8 × 8 slice with a fibre column at x = 0.
        let mut d = Array4::<f32>::ones((1, 1, 8, 8));
        for y in 0..8 {
            d[[0, 0, y, 0]] = 0.0;
        }
        // Pixels 0.5 µm: distance 1 px = 0.5 µm = 0.25 units.
        let f = geometry_features(d.view(), 0.5e-6).unwrap();
        assert_eq!(f[[0, 0, 3, 0]], 0.0);
        assert_eq!(f[[0, 1, 3, 0]], 0.0);
        assert_eq!(f[[0, 0, 3, 1]], 1.0);
        assert!((f[[0, 1, 3, 1]] - 0.25).abs() < 1e-6);
        // x = 7 is next to x = 0 through the periodic boundary.
        assert!((f[[0, 1, 3, 7]] - 0.25).abs() < 1e-6);
        assert!((f[[0, 1, 3, 4]] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn fibre_free_slices_are_finite_and_bad_input_is_refused() {
        let d = Array4::<f32>::ones((2, 1, 4, 6));
        let f = geometry_features(d.view(), 1e-6).unwrap();
        // Half of min(H, W) = 2 px = 2 µm = 1 unit.
        assert!(f.index_axis(Axis(1), 1).iter().all(|&v| v == 1.0));
        assert!(geometry_features(Array4::<f32>::ones((1, 2, 4, 4)).view(), 1e-6).is_err());
        assert!(geometry_features(d.view(), 0.0).is_err());
    }
}
