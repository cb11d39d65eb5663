//! The one place that fixes array layout and units for every fiberflow crate.
//!
//! Arrays are C-ordered `(S, C, H, W)` per sample: `S` slices along z (the fibre
//! direction), `C` channels, `H` rows along y, `W` columns along x. Flow is driven
//! along +x. Velocity channels are `(vx, vy, vz)`. Masks are 1 in fluid, 0 in fibres.
//! All stored fields are SI: metres, m/s, Pa, m². Analytic geometry (fibre centres,
//! radii, windows) is kept in micrometres because that is how engineers state it;
//! field names carry a `_um` or `_m` suffix wherever both could be meant.

use serde::{Deserialize, Serialize};

/// Velocity channel names in storage order.
pub const VELOCITY_CHANNELS: [&str; 3] = ["vx", "vy", "vz"];

/// Metres per micrometre.
pub const UM: f64 = 1e-6;

/// Physical size of one voxel: in-plane pixel pitch and slice pitch, in metres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VoxelSize {
    /// Pixel pitch along x (columns), m.
    pub dx_m: f64,
    /// Pixel pitch along y (rows), m.
    pub dy_m: f64,
    /// Distance between consecutive slices along z, m.
    pub dz_m: f64,
}

impl VoxelSize {
    /// Square pixels of `pixel_um` and slices `pitch_um` apart.
    pub fn from_um(pixel_um: f64, pitch_um: f64) -> Self {
        Self {
            dx_m: pixel_um * UM,
            dy_m: pixel_um * UM,
            dz_m: pitch_um * UM,
        }
    }

    /// `[dx, dy, dz]` in metres, the order of the stored `dxyz` field.
    pub fn as_array(&self) -> [f64; 3] {
        [self.dx_m, self.dy_m, self.dz_m]
    }
}

/// Number of cubic-cell lattice planes spanning `slices` slices `pitch_m` apart at pixel `dx_m`.
pub fn lattice_planes(slices: usize, pitch_m: f64, dx_m: f64) -> usize {
    ((slices as f64 * pitch_m / dx_m).round() as usize).max(1)
}

/// How a sample is sampled: a square `size`×`size` raster of the window and `slices`
/// slices `pitch_um` apart (the z period is `slices · pitch_um`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceGrid {
    /// Pixels along x and y (H = W).
    pub size: usize,
    /// Slices along z (S).
    pub slices: usize,
    /// Slice pitch, µm.
    pub pitch_um: f64,
}

impl Default for SliceGrid {
    /// The reference resolution: 256×256 pixels, 11 slices 5 µm apart.
    fn default() -> Self {
        Self {
            size: 256,
            slices: 11,
            pitch_um: 5.0,
        }
    }
}

impl SliceGrid {
    /// Rejects grids no raster can have: fewer than 8 pixels across, no slices, or a pitch
    /// that is not a positive number.
    pub fn validate(&self) -> Result<(), crate::GeometryError> {
        let bad = |m: &str| {
            Err(crate::GeometryError::Invalid {
                what: "grid",
                msg: m.to_string(),
            })
        };
        if self.size < 8 {
            return bad("at least 8 pixels across are needed");
        }
        if self.slices == 0 {
            return bad("at least 1 slice is needed");
        }
        if !(self.pitch_um.is_finite() && self.pitch_um > 0.0) {
            return bad("the slice pitch must be a positive number of µm");
        }
        Ok(())
    }

    /// z period of the sample, µm.
    pub fn z_period_um(&self) -> f64 {
        self.slices as f64 * self.pitch_um
    }

    /// Voxel size for a square window of `window_um`.
    pub fn voxel(&self, window_um: f64) -> VoxelSize {
        VoxelSize::from_um(window_um / self.size as f64, self.pitch_um)
    }

    /// Lattice planes of the 3D solve over the z period.
    pub fn lattice_planes(&self, window_um: f64) -> usize {
        let v = self.voxel(window_um);
        lattice_planes(self.slices, v.dz_m, v.dx_m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grid_matches_the_reference() {
        let g = SliceGrid::default();
        let v = g.voxel(50.0);
        assert!((v.dx_m - 0.1953125e-6).abs() < 1e-15);
        assert!((v.dz_m / v.dx_m - 25.6).abs() < 1e-9);
        assert_eq!(g.lattice_planes(50.0), 282);
        let small = SliceGrid { size: 64, ..g };
        assert_eq!(small.lattice_planes(50.0), 70);
    }
}
