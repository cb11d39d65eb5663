//! Microstructure features that the networks see next to the flow: the fluid mask and the
//! distance to the nearest fibre in physical units. The geometry fixes where the fine
//! structure of the flow is (vz lives in the narrow gaps between leaning fibres), so a
//! decoder that sees it does not have to squeeze the geometry through its latent.

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

#[cfg(test)]
mod tests {
    use super::*;

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
