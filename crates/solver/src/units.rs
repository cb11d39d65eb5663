//! Conversion of lattice results to SI units.
//!
//! Lattice Stokes flow −∇p + ν∇²u + F = 0 maps onto −∇P + μ∇²U + G = 0 with
//! U = u·(ν/F)·(G/μ)·dx² and P = p·G·dx/F, where p = c_s²·δρ and dx is the voxel size.
//! The reported pressure is the periodic part; the total is P − G·x.

use crate::config::{FlowConfig, LbmConfig};

/// SI value of one lattice unit of each field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// m/s per lattice velocity unit.
    pub velocity: f64,
    /// Pa per lattice pressure unit.
    pub pressure: f64,
    /// m² per lattice permeability unit (cells²).
    pub permeability: f64,
}

impl Scales {
    /// Scales of a solve on a lattice `in_plane` cells across (its τ sets ν).
    pub fn new(cfg: &FlowConfig, dx_m: f64, in_plane: usize) -> Self {
        let LbmConfig { force, .. } = cfg.lbm;
        let g_over_mu = cfg.physics.pressure_gradient_pa_per_m / cfg.physics.viscosity_pa_s;
        Self {
            velocity: cfg.lbm.nu_at(in_plane) / force * g_over_mu * dx_m * dx_m,
            pressure: cfg.physics.pressure_gradient_pa_per_m * dx_m / force,
            permeability: dx_m * dx_m,
        }
    }
}
