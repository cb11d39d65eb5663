//! Solver settings: the lattice Boltzmann numerics and the physical flow conditions.

use crate::error::SolverError;
use crate::lattice::{D2Q9, D3Q19, VelocitySet};
use serde::{Deserialize, Serialize};

/// Numerical settings of the lattice Boltzmann solve (lattice units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbmConfig {
    /// Symmetric relaxation time τ⁺: a number, or "auto" (see [`LbmConfig::tau_at`]). With
    /// TRT the permeability does not depend on it.
    pub tau: Tau,
    /// Lattice sound speed squared of the equilibrium (the standard ⅓ scaled by moving
    /// density from the rest population to the moving ones). The steady Stokes solution
    /// does not depend on it (its only trace is a bulk viscosity acting on ∇·u, zero at
    /// steady state), but pressure differences spread faster; ½ (rest weight zero)
    /// converged in 28 % fewer steps at 128² (BENCHMARKS.md). Near 0.75 the iteration
    /// diverges.
    pub sound_speed_sq: f64,
    /// TRT magic parameter Λ = (τ⁺ − ½)(τ⁻ − ½); 3/16 puts bounce-back walls exactly half-way.
    pub magic: f64,
    /// Converged when the mean flux changes by less than this (relative) over `check_every`
    /// steps. The default is the 1e-5 per 50 steps of earlier versions, per 16 steps.
    pub tol: f64,
    /// ... and the velocity field by less than this (relative L2) over the same window
    /// (the default: 1e-4 per 50 steps, per 16).
    pub field_tol: f64,
    /// Steps between convergence checks. Short, because the coarse-grid corrections come
    /// every second window (see `coarse_correction_every`).
    pub check_every: usize,
    /// Give up (and report non-convergence) after this many steps.
    pub max_iterations: usize,
    /// Body force in lattice units; results are linear in it, it only sets the f32 range.
    pub force: f64,
    /// Start the 3D solve from the 2D slice solutions where no coarse start applies.
    pub warm_start: bool,
    /// Coarser lattices solved first, each starting the next finer one (0: none); stops
    /// early where a level would be under 48 cells in-plane, so the default 64² sample has
    /// none (see `coarse`).
    pub coarse_levels: usize,
    /// Steps between coarse-grid corrections of the slow modes during a solve (0: none).
    /// They apply where the coarse lattice is at least 32 cells across in-plane for a
    /// volume (from 63²) and 48 for a plane (from 95²), and halved the 3D steps at 64² and
    /// 128² (BENCHMARKS.md); see `correction`. Each correction does most of its work at
    /// once and the fine steps after it little (a 16-step window after one changed the
    /// error by 1–5 %), so they come every second 16-step window: at 128² 417 instead of
    /// 874 fine steps (every 100 steps) for the same error.
    pub coarse_correction_every: usize,
    /// Coarse-lattice steps per correction (each costs about 1/8 of a fine step in 3D); a
    /// volume whose coarse lattice is under 64 cells across in-plane takes proportionally
    /// fewer (75 at 64², where they did as well as 150; see `correction`).
    /// 100 reached a given error a little sooner at 128², but took out only 43 % of a
    /// pressure wave along a 96² plane where 150 take out 70 % (`correction` tests).
    pub coarse_correction_steps: usize,
    /// Refuse lattices whose solve would need more memory than this, GiB.
    pub max_memory_gib: f64,
}

impl Default for LbmConfig {
    fn default() -> Self {
        Self {
            tau: Tau::Auto,
            sound_speed_sq: 0.5,
            magic: 3.0 / 16.0,
            tol: 3e-6,
            field_tol: 3e-5,
            check_every: 16,
            max_iterations: 50_000,
            force: 1e-5,
            warm_start: true,
            coarse_levels: 4,
            coarse_correction_every: 32,
            coarse_correction_steps: 150,
            max_memory_gib: 16.0,
        }
    }
}

impl LbmConfig {
    /// Checks the settings before any work is done.
    pub fn validate(&self) -> Result<(), SolverError> {
        let bad = |m: &str| Err(SolverError::Config(m.to_string()));
        // Above τ = 10 the lattice velocities (∝ 1/ν) fall so low that the f32 populations
        // round the flow away (τ = 1e9 gave a negative permeability); the fastest τ measured
        // lie in 0.7–1.3.
        if let Tau::Fixed(tau) = self.tau
            && !(tau.is_finite() && tau > 0.5 && tau <= 10.0)
        {
            return bad("tau must lie in (0.5, 10]");
        }
        if !(self.sound_speed_sq.is_finite()
            && self.sound_speed_sq > 0.1
            && self.sound_speed_sq <= 0.6)
        {
            return bad("sound_speed_sq must lie in (0.1, 0.6]: the iteration diverges near 0.75");
        }
        // Λ sets τ⁻ = ½ + Λ/(τ⁺ − ½); the usual values are 1/12 to 1/4, and a large Λ moves
        // the bounce-back walls off the half-way links (Λ = 1e9 gave 3.3× the permeability).
        if !(self.magic.is_finite() && self.magic > 0.0 && self.magic <= 1.0) {
            return bad("magic must lie in (0, 1] (3/16 puts the walls half-way)");
        }
        if !(self.tol > 0.0 && self.field_tol > 0.0) {
            return bad("tol and field_tol must be > 0");
        }
        if self.check_every == 0 || self.max_iterations < 2 * self.check_every {
            return bad("check_every must be ≥ 1 and max_iterations ≥ 2·check_every");
        }
        if self.coarse_correction_every != 0
            && (self.coarse_correction_every < 2 * self.check_every
                || self.coarse_correction_steps == 0)
        {
            return bad(
                "coarse_correction_every must be 0 or at least 2·check_every (a correction is judged by the clean window after its own), with coarse_correction_steps ≥ 1",
            );
        }
        if !(self.max_memory_gib.is_finite() && self.max_memory_gib > 0.0) {
            return bad("max_memory_gib must be > 0");
        }
        if !(self.force.is_finite() && self.force > 0.0 && self.force < 1e-2) {
            return bad("force must lie in (0, 1e-2) lattice units");
        }
        Ok(())
    }

    /// τ⁺ on a lattice `in_plane` cells across (the smaller of x and y). "auto" gives 0.7
    /// up to 64 cells and 0.5 + 0.2·(n/64)^0.75 above (0.84 at 128, 1.07 at 256): viscous
    /// relaxation across a pore takes ∝ n²/ν steps and the spreading of pressure ∝ ν/c_s²,
    /// so the ν that balances them grows with n. Measured with c_s² = ½ (BENCHMARKS.md):
    /// 0.7 took the fewest steps at 64² (800 against 900 at 0.8), 0.8–0.9 at 128² (1 950
    /// against 2 450 at 0.7), 1.0–1.3 at 256² (2 650 against 3 150 at 0.8).
    pub fn tau_at(&self, in_plane: usize) -> f64 {
        match self.tau {
            Tau::Fixed(tau) => tau,
            Tau::Auto => 0.5 + 0.2 * (in_plane as f64 / 64.0).max(1.0).powf(0.75),
        }
    }

    /// Kinematic viscosity ν = (τ⁺ − ½)/3 in lattice units, on a lattice `in_plane` cells across.
    pub fn nu_at(&self, in_plane: usize) -> f64 {
        (self.tau_at(in_plane) - 0.5) / 3.0
    }

    /// Bytes a solve of `cells` cells with `q` directions holds, on a lattice whose fastest
    /// memory axis (x in 2D, the fibre axis z in 3D; see `layout`) has `fast` cells: two
    /// lattices of populations, the mask, the bounce-back links (at most one 12-byte word
    /// per 16 cells and moving direction), the single pulls (8 B each: partial words,
    /// budgeted at 8 B per cell, and the pulls across the periodic fast axis, one per
    /// direction with a component along it at each end of every row), the starting velocity
    /// and pressure, the velocity and density fields with the previous velocity kept for the
    /// stopping rule, the copies of the mask and the start in the volume's stepping order
    /// (budgeted for 2D too), and the coarse-grid correction whether or not it applies (a
    /// coarse cell per fine cell; three coarse lattices of populations, its mask, counts,
    /// labels and streaming tables, budgeted at 4× fewer cells, which 2D lattices and 3D
    /// ones with a fast axis of 1–2 cells have, where 3D ones usually have 8× fewer). A
    /// coarse start's own solve comes first and is freed before these are allocated.
    pub fn solve_bytes(cells: usize, q: usize, fast: usize) -> f64 {
        let links = 12.0 * q.saturating_sub(1) as f64 / 16.0;
        let along_x = |c: &[[i32; 3]]| c.iter().filter(|c| c[0] != 0).count() as f64;
        let across_fast = if q == 9 {
            along_x(&D2Q9::C)
        } else {
            along_x(&D3Q19::C)
        };
        let pulls = 8.0 + 8.0 * across_fast / fast.max(1) as f64;
        let reordered = 1.0 + 16.0;
        let correction = 4.0 + (3.0 * 4.0 * q as f64 + 1.0 + 4.0 + 4.0 + links + 8.0) / 4.0;
        cells as f64
            * (2.0 * 4.0 * q as f64
                + 1.0
                + links
                + pulls
                + 16.0
                + 4.0
                + 2.0 * 12.0
                + reordered
                + correction)
    }

    /// Antisymmetric relaxation time from the magic parameter, on a lattice `in_plane`
    /// cells across.
    pub fn tau_minus_at(&self, in_plane: usize) -> f64 {
        0.5 + self.magic / (self.tau_at(in_plane) - 0.5)
    }
}

/// The relaxation time τ⁺ of a config: a number, or "auto" for one chosen from the
/// lattice's size ([`LbmConfig::tau_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TauSetting", into = "TauSetting")]
pub enum Tau {
    Auto,
    Fixed(f64),
}

/// How a [`Tau`] is written in a config file: `tau = 0.8` or `tau = "auto"`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TauSetting {
    Number(f64),
    Word(String),
}

impl TryFrom<TauSetting> for Tau {
    type Error = String;

    fn try_from(s: TauSetting) -> Result<Self, Self::Error> {
        match s {
            TauSetting::Number(v) => Ok(Tau::Fixed(v)),
            TauSetting::Word(w) if w == "auto" => Ok(Tau::Auto),
            TauSetting::Word(w) => Err(format!("tau must be a number or \"auto\", got {w:?}")),
        }
    }
}

impl From<Tau> for TauSetting {
    fn from(t: Tau) -> Self {
        match t {
            Tau::Auto => TauSetting::Word("auto".into()),
            Tau::Fixed(v) => TauSetting::Number(v),
        }
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
    /// Refuses physical parameters whose flow fields would leave the range they are kept
    /// in, before any work: the largest velocity a window `width_m` wide can carry is that
    /// of a channel as wide, G·w²/(8μ), and the largest pressure about G·w (a gradient of
    /// 1e300 Pa/m, or a viscosity in the wrong unit, wrote Inf and NaN with a plausible
    /// permeability). Realistic inputs (μ 0.1–1 Pa·s, G 1e3–1e9 Pa/m, w 10 µm–10 mm) lie
    /// more than 20 decades inside.
    pub fn check_scales(&self, width_m: f64) -> Result<(), SolverError> {
        let p = &self.physics;
        let velocity = p.pressure_gradient_pa_per_m * width_m * width_m / (8.0 * p.viscosity_pa_s);
        let pressure = p.pressure_gradient_pa_per_m * width_m;
        let range = 1e-30..=1e30;
        if range.contains(&velocity) && range.contains(&pressure) {
            return Ok(());
        }
        Err(SolverError::Config(format!(
            "a pressure gradient of {:e} Pa/m and a viscosity of {:e} Pa·s give velocities up to {velocity:.3e} m/s and pressures up to {pressure:.3e} Pa over the {width_m:.3e} m window, outside 1e-30 to 1e30, the range kept well inside f32's; check their units",
            p.pressure_gradient_pa_per_m, p.viscosity_pa_s
        )))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tau_grows_with_the_lattice_from_0_7_at_64_cells() {
        let auto = LbmConfig::default();
        assert_eq!(auto.tau, Tau::Auto);
        assert_eq!(auto.tau_at(12), 0.7);
        assert!((auto.tau_at(64) - 0.7).abs() < 1e-12);
        // 0.5 + 0.2·2^0.75 and 0.5 + 0.2·4^0.75.
        assert!((auto.tau_at(128) - 0.836_358).abs() < 1e-6);
        assert!((auto.tau_at(256) - 1.065_685).abs() < 1e-6);
        let fixed = LbmConfig {
            tau: Tau::Fixed(1.2),
            ..auto
        };
        assert_eq!(fixed.tau_at(256), 1.2);
        assert!((fixed.nu_at(7) - 0.7 / 3.0).abs() < 1e-12);
        assert!((fixed.tau_minus_at(7) - (0.5 + 0.1875 / 0.7)).abs() < 1e-12);
    }

    /// D3Q19 with a fast axis of n cells: 10 directions pull across it at the row ends, 8 B
    /// each; 1 cell costs 80 B a cell more than a very long axis.
    #[test]
    fn a_short_fast_axis_budgets_its_periodic_pulls() {
        let long = LbmConfig::solve_bytes(1000, 19, usize::MAX);
        assert!((LbmConfig::solve_bytes(1000, 19, 1) - long - 80_000.0).abs() < 1e-6);
        assert!((LbmConfig::solve_bytes(1000, 19, 4) - long - 20_000.0).abs() < 1e-6);
        // D2Q9: 6 directions have an x component.
        let long = LbmConfig::solve_bytes(1000, 9, usize::MAX);
        assert!((LbmConfig::solve_bytes(1000, 9, 2) - long - 24_000.0).abs() < 1e-6);
    }

    #[test]
    fn tau_is_written_as_a_number_or_auto() {
        let cfg: LbmConfig = serde_json::from_str(r#"{"tau": "auto"}"#).unwrap();
        assert_eq!(cfg.tau, Tau::Auto);
        let cfg: LbmConfig = serde_json::from_str(r#"{"tau": 0.9}"#).unwrap();
        assert_eq!(cfg.tau, Tau::Fixed(0.9));
        assert_eq!(serde_json::to_value(&cfg).unwrap()["tau"], 0.9);
        assert_eq!(
            serde_json::to_value(LbmConfig::default()).unwrap()["tau"],
            "auto"
        );
        let err = serde_json::from_str::<LbmConfig>(r#"{"tau": "fast"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"tau must be a number or "auto", got "fast""#),
            "{err}"
        );
        let with = |tau, magic| LbmConfig {
            tau: Tau::Fixed(tau),
            magic,
            ..Default::default()
        };
        assert!(with(0.5, 0.1875).validate().is_err());
        assert!(with(10.0, 0.1875).validate().is_ok());
        assert!(with(10.5, 0.1875).validate().is_err());
        assert!(with(0.7, 1.0).validate().is_ok());
        assert!(with(0.7, 1e9).validate().is_err());
    }

    /// A correction is judged by the clean check window after its own, so they may not come
    /// more often than every second window; 0 turns them off.
    #[test]
    fn coarse_corrections_need_room_between_them() {
        let with = |every, steps| LbmConfig {
            coarse_correction_every: every,
            coarse_correction_steps: steps,
            ..Default::default()
        };
        assert!(with(200, 150).validate().is_ok());
        assert!(with(0, 0).validate().is_ok());
        assert!(with(32, 1).validate().is_ok());
        let windows = |check_every, every| LbmConfig {
            check_every,
            ..with(every, 150)
        };
        assert!(windows(10, 20).validate().is_ok());
        assert!(windows(1, 2).validate().is_ok());
        for bad in [with(31, 150), with(200, 0), windows(10, 19), windows(1, 1)] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(
                err.contains("coarse_correction_every must be 0 or at least"),
                "{err}"
            );
        }
    }
}
