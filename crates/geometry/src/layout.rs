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
