//! Time-stepping to steady state with a physical stopping rule, in lattice units.

use crate::coarse::{self, Start};
use crate::config::LbmConfig;
use crate::correction::Correction;
use crate::error::SolverError;
use crate::kernel::{self, Grid, Streaming, Trt};
use crate::lattice::{D2Q9, D3Q19, VelocitySet};
use crate::layout::{self, FibreFast};
use fiberflow_geometry::percolation::percolates_x;
use ndarray::ArrayView3;
use rayon::prelude::*;

/// Which velocity set to use: D2Q9 for a single plane, D3Q19 for a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Two,
    Three,
}

/// A converged (or abandoned) lattice solution.
#[derive(Debug, Clone)]
pub struct LatticeFlow {
    pub grid: Grid,
    /// Velocity per cell (index (z·ny + y)·nx + x), lattice units, zero in fibre.
    pub velocity: Vec<[f32; 3]>,
    /// Lattice pressure c_s²·δρ per cell (its periodic part), zero in fibre.
    pub pressure: Vec<f32>,
    /// Steps taken.
    pub iterations: usize,
    /// Steps taken on each coarser lattice solved for the start, next coarser first
    /// (empty without a coarse start). One coarse step costs about 1/8 (3D) or 1/4 (2D)
    /// of a step here.
    pub coarse_iterations: Vec<usize>,
    /// Coarse-grid corrections taken (see `correction`), each `coarse_correction_steps`
    /// coarse steps; their two fine steps and one averaging step are in `iterations`.
    pub corrections: usize,
    /// Whether both stopping criteria were met before `max_iterations`.
    pub converged: bool,
    /// Relative change of the mean flux over the last check window.
    pub residual: f64,
    /// Relative L2 change of the velocity field over the last check window.
    pub field_residual: f64,
    /// Superficial (box-averaged) velocity ⟨u⟩ in lattice units.
    pub mean_velocity: [f64; 3],
    /// Relaxation time τ⁺ of this solve (from the config, or chosen for the lattice's size).
    pub tau: f64,
    /// Permeability K = ν⟨u_x⟩/F along x, in cells².
    pub permeability: f64,
    /// Fluid fraction of the lattice.
    pub porosity: f64,
}

/// Progress hook: called at each convergence check with (level, step, flux residual);
/// level 0 is the lattice asked for, 1 the next coarser one solved for its start, ….
pub type Progress<'a> = &'a (dyn Fn(usize, usize, f64) + Sync);

/// Solves steady Stokes flow along +x through the `(nz, ny, nx)` mask (1 = fluid).
/// `init` optionally gives a starting state (warm start); without one, the solve starts
/// from a coarser lattice's solution where `cfg.coarse_levels` allows, else from rest.
pub fn solve_lattice(
    mask: ArrayView3<u8>,
    dim: Dim,
    cfg: &LbmConfig,
    init: Option<&Start>,
    progress: Option<Progress>,
) -> Result<LatticeFlow, SolverError> {
    cfg.validate()?;
    let (nz, ny, nx) = mask.dim();
    if nx < 2 || ny < 2 {
        return Err(SolverError::Geometry(format!(
            "lattice must be at least 2×2 in-plane, got {ny}×{nx}"
        )));
    }
    let populations = nz
        .saturating_mul(ny)
        .saturating_mul(nx)
        .saturating_add(32)
        .saturating_mul(19);
    if populations > Streaming::MAX_POPULATIONS {
        return Err(SolverError::Geometry(format!(
            "a {nz}×{ny}×{nx} lattice is too large for the solver's 32-bit indices"
        )));
    }
    if dim == Dim::Two && nz != 1 {
        return Err(SolverError::Geometry(format!(
            "a 2D solve takes one plane, got {nz}"
        )));
    }
    check_memory((nz, ny, nx), dim, cfg)?;
    let grid = Grid { nx, ny, nz };
    let fluid: Vec<u8> = mask.iter().map(|&v| u8::from(v != 0)).collect();
    if let Some(init) = init
        && (init.velocity.len() != grid.cells() || init.pressure.len() != grid.cells())
    {
        return Err(SolverError::Geometry(format!(
            "warm start has {} cells, lattice has {}",
            init.velocity.len(),
            grid.cells()
        )));
    }
    let (from_coarse, coarse_iterations) = match init {
        Some(_) => (None, Vec::new()),
        None => coarse_start(mask, dim, cfg, (&grid, &fluid), progress)?,
    };
    let init = init.or(from_coarse.as_ref());
    let in_plane = nx.min(ny);
    let mut flow = match dim {
        Dim::Two => run::<9, D2Q9>(grid, &fluid, (cfg, in_plane, 0), init, progress)?,
        Dim::Three => {
            let t = FibreFast::new(grid);
            let fluid = t.lattice_order(&fluid);
            let init = init.map(|s| t.start_in_lattice_order(s));
            let settings = (cfg, in_plane, layout::FLOW_AXIS);
            let flow = run::<19, D3Q19>(t.lattice(), &fluid, settings, init.as_ref(), progress)?;
            LatticeFlow {
                grid,
                velocity: t
                    .geometry_order(&flow.velocity)
                    .into_iter()
                    .map(FibreFast::vector_to_geometry)
                    .collect(),
                pressure: t.geometry_order(&flow.pressure),
                mean_velocity: FibreFast::vector_to_geometry(flow.mean_velocity),
                ..flow
            }
        }
    };
    flow.coarse_iterations = coarse_iterations;
    Ok(flow)
}

/// A coarse level stops at tolerances this many times looser than the lattice it starts
/// (so 10 000× two levels down), up to `COARSE_LOOSEST`: only a start, it is bound by its
/// discretisation error, not by its stopping rule. With corrections every 32 steps, the
/// fine solve's error against a tight solution was the same to three digits at every check
/// whether the coarse level stopped at 10× or 100× (128²: 0.60 after the first window,
/// 1.7e-5 at step 417), and the coarse levels took 528 instead of 672 steps at 128², 172 +
/// 384 instead of 261 + 416 at 256² (same 382 fine steps, fields within 1.4e-5).
const COARSE_LOOSER: f64 = 100.0;

/// The loosest (flux, field) tolerances a coarse level gets: what the 64² level of a 256²
/// solve got in that measurement. Deeper levels (inputs of 768² and more) stop there too.
const COARSE_LOOSEST: (f64, f64) = (1e-3, 1e-2);

/// The prolonged solution of the next coarser lattice, when `cfg.coarse_levels` and the
/// lattice's extent allow one (see [`coarse`]), with the steps of every coarser level.
fn coarse_start(
    mask: ArrayView3<u8>,
    dim: Dim,
    cfg: &LbmConfig,
    (grid, fluid): (&Grid, &[u8]),
    progress: Option<Progress>,
) -> Result<(Option<Start>, Vec<usize>), SolverError> {
    let Some(extent) = coarse::extent(mask.dim(), cfg) else {
        return Ok((None, Vec::new()));
    };
    let coarse_mask = coarse::restrict(mask, extent);
    // Coarsening can close a diagonal one-cell channel; a coarse lattice that carries no
    // flow along x would never meet the flux criterion, so that start is skipped.
    if !percolates_x(coarse_mask.view()) {
        return Ok((None, Vec::new()));
    }
    let coarse_cfg = LbmConfig {
        coarse_levels: cfg.coarse_levels - 1,
        tol: (cfg.tol * COARSE_LOOSER).min(COARSE_LOOSEST.0.max(cfg.tol)),
        field_tol: (cfg.field_tol * COARSE_LOOSER).min(COARSE_LOOSEST.1.max(cfg.field_tol)),
        ..cfg.clone()
    };
    let up = |level: usize, step: usize, residual: f64| {
        if let Some(p) = progress {
            p(level + 1, step, residual);
        }
    };
    let flow = solve_lattice(coarse_mask.view(), dim, &coarse_cfg, None, Some(&up))?;
    let in_plane = |g: &Grid| g.nx.min(g.ny);
    let nu_ratio = cfg.nu_at(in_plane(&flow.grid)) / cfg.nu_at(in_plane(grid));
    let coarse = (&flow.grid, &flow.velocity[..], &flow.pressure[..]);
    let start = coarse::prolong(coarse, grid, fluid, nu_ratio as f32);
    let mut steps = vec![flow.iterations];
    steps.extend(flow.coarse_iterations);
    Ok((Some(start), steps))
}

/// Refuses, before anything is allocated, a lattice whose solve would exceed the memory limit.
pub fn check_memory(
    (nz, ny, nx): (usize, usize, usize),
    dim: Dim,
    cfg: &LbmConfig,
) -> Result<(), SolverError> {
    let q = if dim == Dim::Two { 9 } else { 19 };
    let cells = nz.saturating_mul(ny).saturating_mul(nx);
    let fast = if dim == Dim::Two { nx } else { nz };
    let need = LbmConfig::solve_bytes(cells, q, fast) / f64::from(1u32 << 30);
    if need > cfg.max_memory_gib {
        return Err(SolverError::Geometry(format!(
            "a {nz}×{ny}×{nx} lattice needs {need:.1} GiB, more than max_memory_gib = {} (check the voxel size and slice pitch, or raise the limit)",
            cfg.max_memory_gib
        )));
    }
    Ok(())
}

/// Steps the lattice `grid` (in the kernel's memory order) to steady state; the body force
/// acts along lattice axis `flow_axis`, and `in_plane` is the geometry's in-plane extent,
/// which sets τ.
fn run<const Q: usize, V: VelocitySet<Q>>(
    grid: Grid,
    fluid: &[u8],
    (cfg, in_plane, flow_axis): (&LbmConfig, usize, usize),
    init: Option<&Start>,
    progress: Option<Progress>,
) -> Result<LatticeFlow, SolverError> {
    let trt = Trt::new(cfg, in_plane, flow_axis);
    let streaming = Streaming::new::<Q, V>(&grid, fluid);
    let mut f = kernel::equilibrium::<Q, V>(&grid, &trt, fluid, init);
    let mut f_new = vec![0.0f32; f.len()];
    let mut prev: Option<f64> = None;
    // The check's fields, reused (see `kernel::macroscopic_into`).
    let mut rho = vec![0.0f32; grid.cells()];
    let (mut vel, mut prev_vel) = (
        vec![[0.0f32; 3]; grid.cells()],
        vec![[0.0f32; 3]; grid.cells()],
    );
    let (mut residual, mut field_residual) = (f64::INFINITY, f64::INFINITY);
    let mut iterations = 0;
    let mut converged = false;
    let mut correction = Correction::new::<Q, V>(grid, fluid, &trt, (cfg, in_plane));
    let mut corrections = 0;
    while iterations < cfg.max_iterations {
        // The last window is cut short so that `max_iterations` is a hard limit.
        let window = cfg.check_every.min(cfg.max_iterations - iterations);
        for _ in 0..window {
            kernel::step::<Q, V>(&grid, &trt, &f, fluid, &streaming, &mut f_new);
            std::mem::swap(&mut f, &mut f_new);
        }
        iterations += window;
        if iterations == cfg.check_every {
            average_two_steps::<Q, V>(&grid, &trt, &mut f, fluid, &streaming, &mut f_new);
        }
        let lattice = (&grid, trt.force, &f[..], fluid, &streaming);
        kernel::macroscopic_into::<Q, V>(lattice, &mut rho, &mut vel);
        let (flux, change) = flux_and_change(&vel, &prev_vel, flow_axis);
        if !flux.is_finite() {
            return Err(SolverError::Diverged {
                iteration: iterations,
            });
        }
        if let Some(prev_flux) = prev {
            residual = ((flux - prev_flux) / flux).abs();
            field_residual = change;
        }
        if let Some(p) = progress {
            p(0, iterations, residual);
        }
        prev = Some(flux);
        std::mem::swap(&mut vel, &mut prev_vel);
        if residual < cfg.tol && field_residual < cfg.field_tol {
            converged = true;
            break;
        }
        // Room for the correction's steps and two windows after it (the jump, then a
        // clean one), so the last check never sees an unsmoothed correction.
        let room = iterations + 3 + 2 * cfg.check_every <= cfg.max_iterations;
        if let Some(c) = &mut correction
            && room
            && c.due(iterations, field_residual)
        {
            let lattice = (&trt, fluid, &streaming);
            iterations += c.apply::<Q, V>(lattice, &mut f, &mut f_new, iterations);
            // The block-constant correction feeds the undamped period-2 mode too.
            average_two_steps::<Q, V>(&grid, &trt, &mut f, fluid, &streaming, &mut f_new);
            iterations += 1;
            corrections += 1;
        }
    }
    drop((rho, vel, prev_vel));
    average_two_steps::<Q, V>(&grid, &trt, &mut f, fluid, &streaming, &mut f_new);
    let (density, velocity) = kernel::macroscopic::<Q, V>(&grid, trt.force, &f, fluid, &streaming);
    let cs2 = cfg.sound_speed_sq as f32;
    let pressure = density.into_iter().map(|d| cs2 * d).collect();
    let mean_velocity = mean(&velocity);
    let porosity = fluid.iter().filter(|&&v| v != 0).count() as f64 / grid.cells() as f64;
    Ok(LatticeFlow {
        grid,
        velocity,
        pressure,
        iterations,
        coarse_iterations: Vec::new(),
        corrections,
        converged,
        residual,
        field_residual,
        mean_velocity,
        tau: cfg.tau_at(in_plane),
        permeability: cfg.nu_at(in_plane) * mean_velocity[flow_axis] / cfg.force,
        porosity,
    })
}

/// Replaces `f` by the mean of itself and the next state. Momentum across a one-cell gap
/// (fibre on both sides along a lattice direction) is reversed by bounce-back every step
/// and conserved by the collision, so the iteration has an undamped period-2 mode there:
/// from any start the state swings about the fixed point by what the start and the body
/// force put into that mode (3e-3 relative L2 between odd and even steps on a 64² sample,
/// and a warm start kept a 1e-1 error on the tested gap). The mean of two consecutive
/// states is the fixed point on that mode exactly and moves the converging rest by one
/// step's change. Done once after the first check window (so the stopping rule sees no
/// swing) and once at the end (for what the approach to steady state put in since).
fn average_two_steps<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    trt: &Trt,
    f: &mut [f32],
    fluid: &[u8],
    streaming: &Streaming,
    scratch: &mut [f32],
) {
    kernel::step::<Q, V>(grid, trt, f, fluid, streaming, scratch);
    f.par_iter_mut()
        .zip(&*scratch)
        .for_each(|(a, b)| *a = 0.5 * (*a + *b));
}

fn mean(vel: &[[f32; 3]]) -> [f64; 3] {
    let mut s = [0.0f64; 3];
    for v in vel {
        for a in 0..3 {
            s[a] += f64::from(v[a]);
        }
    }
    s.map(|x| x / vel.len() as f64)
}

/// Mean velocity along `axis` of `vel`, and its relative L2 change from `prev`, in one
/// parallel pass (a check comes every few steps). Partial sums over fixed blocks, added
/// in order, so the result does not depend on how the threads split the work.
fn flux_and_change(vel: &[[f32; 3]], prev: &[[f32; 3]], axis: usize) -> (f64, f64) {
    let parts: Vec<[f64; 3]> = vel
        .par_chunks(1 << 14)
        .zip(prev.par_chunks(1 << 14))
        .map(|(a, b)| {
            let mut s = [0.0f64; 3];
            for (u, v) in a.iter().zip(b) {
                s[0] += f64::from(u[axis]);
                for k in 0..3 {
                    s[1] += f64::from(u[k] - v[k]).powi(2);
                    s[2] += f64::from(u[k]).powi(2);
                }
            }
            s
        })
        .collect();
    let [flux, diff, norm] = parts
        .iter()
        .fold([0.0; 3], |t, p| [t[0] + p[0], t[1] + p[1], t[2] + p[2]]);
    let change = if norm > 0.0 {
        (diff / norm).sqrt()
    } else {
        f64::INFINITY
    };
    (flux / vel.len() as f64, change)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand values across more than one block of the parallel pass: the mean of the flow
    /// component, and ‖v − p‖/‖v‖ with v = 2p, i.e. ½.
    #[test]
    fn flux_and_change_by_hand() {
        let n: usize = (1 << 14) + 5;
        let vel: Vec<[f32; 3]> = (0..n)
            .map(|i| [0.0, if i % 2 == 0 { 1.0 } else { 3.0 }, 0.5])
            .collect();
        let prev: Vec<[f32; 3]> = vel.iter().map(|v| v.map(|c| 0.5 * c)).collect();
        let (flux, change) = flux_and_change(&vel, &prev, 1);
        let want = (1.0 * n.div_ceil(2) as f64 + 3.0 * (n / 2) as f64) / n as f64;
        assert!((flux - want).abs() < 1e-12, "{flux} vs {want}");
        assert!((change - 0.5).abs() < 1e-12, "{change}");
        assert_eq!(flux_and_change(&vel, &vel, 1).1, 0.0);
        let zero = vec![[0.0f32; 3]; 3];
        assert_eq!(flux_and_change(&zero, &zero, 0).1, f64::INFINITY);
    }
}
