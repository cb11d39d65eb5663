//! Periodic fibre centre paths c(z) = c₀ + Σ aₘ·dₘ·sin(2π kₘ z / L_z + φₘ).
//!
//! Every mode has a whole number of periods over the z extent, so the packing is
//! periodic in z like the flow solver's boundary conditions. A full-period mode
//! carries a fibre's misalignment (a straight tilted fibre cannot be periodic), a
//! higher one its waviness.

use serde::{Deserialize, Serialize};
use std::f64::consts::TAU;

/// Most periods one mode may have over the z extent. A packing samples every path at 32
/// heights per period, so an unbounded count (a file edited by hand, a wavelength far
/// below the slice pitch) would hang or exhaust memory. 64 waves over the default 55 µm
/// are 0.86 µm long, far shorter than 5 µm slices can show.
pub const MAX_PERIODS: u32 = 64;

/// One sinusoidal displacement of a fibre centre line.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PathMode {
    /// Amplitude, µm.
    pub amplitude_um: f64,
    /// Whole periods over the z extent (≥ 1).
    pub periods: u32,
    /// Phase, rad.
    pub phase: f64,
    /// In-plane direction of the displacement, rad from +x.
    pub direction: f64,
}

/// A fibre: its radius and the periodic path of its centre.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FibrePath {
    /// Centre at z = 0 before the modes are added, µm, inside the window.
    pub centre_um: [f64; 2],
    /// Radius, µm.
    pub radius_um: f64,
    /// Displacement modes.
    pub modes: Vec<PathMode>,
}

impl FibrePath {
    /// Displacement of the centre from `centre_um` at height `z_um`, and its slope dc/dz.
    pub fn offset_and_slope(&self, z_um: f64, z_period_um: f64) -> ([f64; 2], [f64; 2]) {
        let mut off = [0.0; 2];
        let mut slope = [0.0; 2];
        for m in &self.modes {
            let k = TAU * f64::from(m.periods) / z_period_um;
            let arg = k * z_um + m.phase;
            let (s, c) = arg.sin_cos();
            let (dy, dx) = m.direction.sin_cos();
            off[0] += m.amplitude_um * s * dx;
            off[1] += m.amplitude_um * s * dy;
            slope[0] += m.amplitude_um * k * c * dx;
            slope[1] += m.amplitude_um * k * c * dy;
        }
        (off, slope)
    }

    /// Largest possible displacement from `centre_um`, µm.
    pub fn max_offset_um(&self) -> f64 {
        self.modes.iter().map(|m| m.amplitude_um.abs()).sum()
    }

    /// Largest number of periods of any mode (sets how finely z must be sampled).
    pub fn max_periods(&self) -> u32 {
        self.modes.iter().map(|m| m.periods).max().unwrap_or(0)
    }
}
