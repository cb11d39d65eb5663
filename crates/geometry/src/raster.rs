//! Rasterisation of analytic microstructures to fluid masks (1 = fluid, 0 = fibre).
//!
//! A pixel is fibre when its centre lies inside the fibre: within one radius of the
//! fibre's local axis, measured perpendicular to the axis, so a leaning fibre cuts the
//! plane in the slightly stretched ellipse it really makes.

use crate::layout::SliceGrid;
use crate::packing::{Microstructure, min_image};
use ndarray::{Array2, Array3, Axis};
use rayon::prelude::*;

impl Microstructure {
    /// Pixel pitch, µm, of an `n`×`n` raster of the window.
    pub fn pixel_um(&self, n: usize) -> f64 {
        self.window_um / n as f64
    }

    /// Fluid mask `(n, n)` (rows = y, columns = x) of the plane at height `z_um`.
    pub fn rasterise_plane(&self, z_um: f64, n: usize) -> Array2<u8> {
        let px = self.pixel_um(n);
        let mut mask = Array2::<u8>::ones((n, n));
        for f in &self.fibres {
            let (_, s) = f.offset_and_slope(z_um, self.z_period_um);
            let c = self.centre_at(f, z_um);
            let s2 = 1.0 + s[0] * s[0] + s[1] * s[1];
            let r2 = f.radius_um * f.radius_um;
            // The elliptical cut is at most r·sqrt(1 + |s|²) wide.
            let reach = (f.radius_um * s2.sqrt() / px).ceil() as i64 + 1;
            let (cx, cy) = ((c[0] / px) as i64, (c[1] / px) as i64);
            for iy in cy - reach..=cy + reach {
                let row = iy.rem_euclid(n as i64) as usize;
                for ix in cx - reach..=cx + reach {
                    let p = [(ix as f64 + 0.5) * px, (iy as f64 + 0.5) * px];
                    let d = min_image([p[0] - c[0], p[1] - c[1]], self.window_um);
                    let along = d[0] * s[0] + d[1] * s[1];
                    if d[0] * d[0] + d[1] * d[1] - along * along / s2 < r2 {
                        mask[[row, ix.rem_euclid(n as i64) as usize]] = 0;
                    }
                }
            }
        }
        mask
    }

    /// Fluid masks `(S, n, n)` of `slices` planes `pitch_um` apart, starting at z = 0.
    pub fn rasterise_slices(&self, slices: usize, pitch_um: f64, n: usize) -> Array3<u8> {
        self.rasterise_heights(
            &(0..slices).map(|k| k as f64 * pitch_um).collect::<Vec<_>>(),
            n,
        )
    }

    /// Fluid masks of `planes` equally spaced planes over the whole z period (the 3D lattice).
    pub fn rasterise_volume(&self, planes: usize, n: usize) -> Array3<u8> {
        let dz = self.z_period_um / planes as f64;
        self.rasterise_heights(&(0..planes).map(|k| k as f64 * dz).collect::<Vec<_>>(), n)
    }

    /// Slice masks `(S, n, n)` and the 3D lattice's plane masks `(NZ, n, n)` of a sample grid.
    pub fn sample_masks(&self, grid: &SliceGrid) -> (Array3<u8>, Array3<u8>) {
        let slices = self.rasterise_slices(grid.slices, grid.pitch_um, grid.size);
        let planes = self.rasterise_volume(grid.lattice_planes(self.window_um), grid.size);
        (slices, planes)
    }

    fn rasterise_heights(&self, z_um: &[f64], n: usize) -> Array3<u8> {
        let mut out = Array3::<u8>::zeros((z_um.len(), n, n));
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(z_um.par_iter())
            .for_each(|(mut plane, &z)| plane.assign(&self.rasterise_plane(z, n)));
        out
    }
}

/// Fraction of fibre (zero) pixels in a mask.
pub fn solid_fraction<D: ndarray::Dimension>(mask: &ndarray::Array<u8, D>) -> f64 {
    let solid = mask.iter().filter(|&&v| v == 0).count();
    solid as f64 / mask.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::PackingConfig;
    use crate::path::FibrePath;

    #[test]
    fn voxelised_vf_within_one_percent_at_256() {
        for (vf, seed) in [(0.4, 1), (0.55, 2), (0.65, 3)] {
            let cfg = PackingConfig {
                vf,
                tilt_std_deg: 1.5,
                ..Default::default()
            };
            let (ms, _) = Microstructure::generate(&cfg, 55.0, 50.0 / 256.0, seed).unwrap();
            let masks = ms.rasterise_slices(11, 5.0, 256);
            let got = solid_fraction(&masks);
            assert!((got - vf).abs() / vf < 0.01, "target {vf}, voxelised {got}");
        }
    }

    #[test]
    fn single_fibre_matches_hand_count_and_wraps_periodically() {
        // A radius-2 µm fibre centred on a pixel corner of a 1 µm raster covers the
        // 12 pixels whose centres (±0.5, ±0.5), (±1.5, ±0.5), (±0.5, ±1.5) lie within 2.
        let ms = Microstructure {
            window_um: 10.0,
            z_period_um: 10.0,
            min_gap_um: 0.0,
            fibres: vec![FibrePath {
                centre_um: [0.0, 0.0],
                radius_um: 2.0,
                modes: vec![],
            }],
        };
        let m = ms.rasterise_plane(0.0, 10);
        assert_eq!(m.iter().filter(|&&v| v == 0).count(), 12);
        // Centred on the corner of the window, so all four corners are fibre.
        for (r, c) in [(0, 0), (9, 9), (0, 9), (9, 0)] {
            assert_eq!(m[[r, c]], 0);
        }
        assert_eq!(m[[5, 5]], 1);
    }

    #[test]
    fn leaning_fibre_cuts_a_wider_section() {
        let lean = |amp: f64| Microstructure {
            window_um: 40.0,
            z_period_um: 10.0,
            min_gap_um: 0.0,
            fibres: vec![FibrePath {
                centre_um: [20.0, 20.0],
                radius_um: 5.0,
                modes: vec![crate::path::PathMode {
                    amplitude_um: amp,
                    periods: 1,
                    phase: 0.0,
                    direction: 0.0,
                }],
            }],
        };
        // At z = 0 the path crosses its mean with slope 2πA/L = tan θ: section area πr²/cos θ.
        let amp = 10.0 / std::f64::consts::TAU; // slope 1: θ = 45°
        let n = 800;
        let straight = solid_fraction(&lean(0.0).rasterise_plane(0.0, n));
        let tilted = solid_fraction(&lean(amp).rasterise_plane(0.0, n));
        let ratio = tilted / straight;
        assert!((ratio - 2f64.sqrt()).abs() < 0.01, "{ratio}");
    }
}
