//! Solver settings: the lattice Boltzmann numerics and the physical flow conditions.

use crate::error::SolverError;
use serde::{Deserialize, Serialize};

/// Numerical settings of the lattice Boltzmann solve (lattice units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbmConfig {
    /// Symmetric relaxation time τ⁺. With TRT the permeability does not depend on it, and
    /// 0.7 reached steady state in the fewest steps on default samples (see BENCHMARKS.md).
    pub tau: f64,
    /// TRT magic parameter Λ = (τ⁺ − ½)(τ⁻ − ½); 3/16 puts bounce-back walls exactly half-way.
    pub magic: f64,
    /// Converged when the mean flux changes by less than this (relative) over `check_every` steps.
    pub tol: f64,
    /// ... and the velocity field by less than this (relative L2) over the same window.
    pub field_tol: f64,
    /// Steps between convergence checks.
    pub check_every: usize,
    /// Give up (and report non-convergence) after this many steps.
    pub max_iterations: usize,
    /// Body force in lattice units; results are linear in it, it only sets the f32 range.
    pub force: f64,
    /// Start the 3D solve from the 2D slice solutions.
    pub warm_start: bool,
    /// Refuse lattices whose solve would need more memory than this, GiB.
    pub max_memory_gib: f64,
}

impl Default for LbmConfig {
    fn default() -> Self {
        Self {
            tau: 0.7,
            magic: 3.0 / 16.0,
            tol: 1e-5,
            field_tol: 1e-4,
            check_every: 50,
            max_iterations: 50_000,
            force: 1e-5,
            warm_start: true,
            max_memory_gib: 16.0,
        }
    }
}

impl LbmConfig {
    /// Checks the settings before any work is done.
    pub fn validate(&self) -> Result<(), SolverError> {
        let bad = |m: &str| Err(SolverError::Config(m.to_string()));
        if !(self.tau.is_finite() && self.tau > 0.5) {
            return bad("tau must be > 0.5");
        }
        if !(self.magic.is_finite() && self.magic > 0.0) {
            return bad("magic must be > 0");
        }
        if !(self.tol > 0.0 && self.field_tol > 0.0) {
            return bad("tol and field_tol must be > 0");
        }
        if self.check_every == 0 || self.max_iterations < 2 * self.check_every {
            return bad("check_every must be ≥ 1 and max_iterations ≥ 2·check_every");
        }
        if !(self.max_memory_gib.is_finite() && self.max_memory_gib > 0.0) {
            return bad("max_memory_gib must be > 0");
        }
        if !(self.force.is_finite() && self.force > 0.0 && self.force < 1e-2) {
            return bad("force must lie in (0, 1e-2) lattice units");
        }
        Ok(())
    }

    /// Kinematic viscosity ν = (τ⁺ − ½)/3 in lattice units.
    pub fn nu(&self) -> f64 {
        (self.tau - 0.5) / 3.0
    }

    /// Bytes a solve of `cells` cells with `q` directions holds: two lattices of populations,
    /// the mask, the bounce-back links (at most one 12-byte word per 16 cells and moving
    /// direction), the single pulls (periodic wraps and partial words: budgeted at 8 B per
    /// cell, far more than realistic lattices need), and
    /// the velocity and density fields with the previous velocity kept for the stopping rule.
    pub fn solve_bytes(cells: usize, q: usize) -> f64 {
        let links = 12.0 * q.saturating_sub(1) as f64 / 16.0 + 8.0;
        cells as f64 * (2.0 * 4.0 * q as f64 + 1.0 + links + 4.0 + 2.0 * 12.0)
    }

    /// Antisymmetric relaxation time from the magic parameter.
    pub fn tau_minus(&self) -> f64 {
        0.5 + self.magic / (self.tau - 0.5)
    }
}

/// Physical conditions. Stokes flow is linear, so every field scales with G/μ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Physics {
    /// Dynamic viscosity μ of the resin, Pa·s (epoxy at infusion temperature).
    pub viscosity_pa_s: f64,
    /// Mean pressure gradient driving the flow along +x, Pa/m (1 bar over 10 cm).
    pub pressure_gradient_pa_per_m: f64,
}

impl Default for Physics {
    fn default() -> Self {
        Self {
            viscosity_pa_s: 0.1,
            pressure_gradient_pa_per_m: 1e6,
        }
    }
}

/// Everything a flow solve needs besides the geometry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    pub lbm: LbmConfig,
    pub physics: Physics,
}

impl FlowConfig {
    pub fn validate(&self) -> Result<(), SolverError> {
        self.lbm.validate()?;
        let p = &self.physics;
        if !(p.viscosity_pa_s.is_finite() && p.viscosity_pa_s > 0.0) {
            return Err(SolverError::Config("viscosity_pa_s must be > 0".into()));
        }
        if !(p.pressure_gradient_pa_per_m.is_finite() && p.pressure_gradient_pa_per_m > 0.0) {
            return Err(SolverError::Config(
                "pressure_gradient_pa_per_m must be > 0".into(),
            ));
        }
        Ok(())
    }
}
