//! One sample's flows in SI units: a 2D solve of every slice on its own (vz = 0) and a
//! 3D solve of the volume sampled back at the slice planes.
//!
//! The slice pitch (5 µm) is ~25 pixels, so the 3D lattice needs geometry between the
//! slices. The caller passes it as `planes`: NZ = round(S·pitch/dx) equally spaced planes
//! over the z period, from the generator's analytic fibre paths or, for a user stack, from
//! the signed-distance interpolation in `fiberflow_geometry::distance`. Plane j sits at
//! z = j·S·pitch/NZ, i.e. the lattice z spacing differs from dx by under 1/(2·NZ).
//! The 3D field at slice k is interpolated linearly between the two nearest planes and
//! set to zero in the slice's fibres.

use crate::coarse::{self, Start};
use crate::config::FlowConfig;
use crate::error::SolverError;
use crate::solve::{Dim, LatticeFlow, Progress, check_memory, solve_lattice};
use crate::units::Scales;
use fiberflow_geometry::distance::interpolate_planes;
use fiberflow_geometry::layout::{VoxelSize, lattice_planes};
use fiberflow_geometry::percolation::percolates_x;
#[cfg(test)]
use ndarray::s;
use ndarray::{Array4, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Convergence and permeability of one solve, as written to `permeability.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolveStats {
    pub iterations: usize,
    /// Steps on each coarser lattice solved for the start, next coarser first. Omitted
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coarse_iterations: Vec<usize>,
    /// Coarse-grid corrections taken, each `coarse_correction_steps` coarse steps. Omitted
    /// when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrections: usize,
    /// Relaxation time τ⁺ used (records made before `tau = "auto"` lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau: Option<f64>,
    pub converged: bool,
    /// Relative change of the mean flux over the last check window.
    pub residual: f64,
    /// Relative L2 change of the velocity over the last check window.
    pub field_residual: f64,
    /// Wall time, s. Not serialised, so that identical solves write identical records.
    #[serde(skip)]
    pub wall_s: f64,
}

/// What a sample solve reports besides the fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowReport {
    /// Permeability along x of the 3D volume, m² (None for a 2D-only solve).
    pub k_3d_m2: Option<f64>,
    /// Permeability along x of each slice solved in 2D, m².
    pub k_2d_m2: Vec<f64>,
    /// Fluid fraction of the slices.
    pub porosity: f64,
    /// Lattice planes of the 3D solve.
    pub planes_3d: Option<usize>,
    pub solve_3d: Option<SolveStats>,
    pub solve_2d: Vec<SolveStats>,
    /// Wall time of all 2D solves together, s (they run side by side, so it is not the
    /// sum of theirs). Not serialised, like every wall time.
    #[serde(skip)]
    pub wall_2d_s: f64,
    /// Superficial velocity ⟨u⟩ of the 3D volume, m/s.
    pub mean_velocity_3d_m_s: Option<[f64; 3]>,
    /// Slices whose fluid does not connect along x on its own: their 2D flow is zero (the
    /// exact 2D answer: no flow crosses a blocked slice with vz = 0), and the 3D solve
    /// starts from rest there. Omitted when empty, so ordinary records are unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_slices: Vec<usize>,
}

impl FlowReport {
    /// What a user must hear about slices blocked on their own, if there are any.
    pub fn blocked_warning(&self) -> Option<String> {
        let through_z = if self.k_3d_m2.is_some() {
            "; the 3D flow crosses them through z"
        } else {
            ""
        };
        (!self.blocked_slices.is_empty()).then(|| {
            format!(
                "slices {:?} do not connect along x on their own: their 2D flow is zero{through_z}",
                self.blocked_slices
            )
        })
    }

    /// True when every solve met its stopping rule.
    pub fn converged(&self) -> bool {
        self.solve_2d.iter().all(|s| s.converged)
            && self.solve_3d.as_ref().is_none_or(|s| s.converged)
    }
}

/// Fields of one sample, `(S, C, H, W)`, SI units.
#[derive(Debug, Clone)]
pub struct FlowSample {
    /// Per-slice 2D flow, vz ≡ 0, m/s.
    pub u2d: Array4<f32>,
    /// 3D flow at the slice planes, m/s (None for a 2D-only solve).
    pub u: Option<Array4<f32>>,
    /// Periodic pressure (total pressure minus the mean gradient), Pa: from the 3D solve
    /// when there is one, else from the 2D solves.
    pub p: Array4<f32>,
    /// Periodic pressure of each slice's own 2D solve, Pa. It comes with the 2D flow at no
    /// extra cost, and its change from slice to slice is what drives vz in 3D.
    pub p2d: Array4<f32>,
    pub report: FlowReport,
}

/// Solves a stack of slices given alone (a user's images, or a dataset sample's `domain`
/// scored as the solve-from-slices baseline) in 2D and 3D: the geometry between slices
/// comes from the signed-distance interpolation, on NZ = round(S·pitch/dx) planes, and
/// the lattice is checked against the memory budget before it is allocated.
pub fn solve_stack(
    slices: ArrayView3<u8>,
    voxel: VoxelSize,
    cfg: &FlowConfig,
    progress: Option<Progress>,
) -> Result<FlowSample, SolverError> {
    let (ns, h, w) = slices.dim();
    check_pitch(ns, voxel)?;
    let nz = lattice_planes(ns, voxel.dz_m, voxel.dx_m);
    check_memory((nz, h, w), Dim::Three, &cfg.lbm)?;
    let planes = interpolate_planes(slices, nz);
    solve_sample(slices, Some(planes.view()), voxel, cfg, progress)
}

/// Solves one sample. `slices` is `(S, H, W)`; `planes`, `(NZ, H, W)`, enables the 3D solve.
pub fn solve_sample(
    slices: ArrayView3<u8>,
    planes: Option<ArrayView3<u8>>,
    voxel: VoxelSize,
    cfg: &FlowConfig,
    progress: Option<Progress>,
) -> Result<FlowSample, SolverError> {
    cfg.validate()?;
    let (ns, h, w) = slices.dim();
    if planes.is_some() {
        check_pitch(ns, voxel)?;
    }
    let blocked = check_geometry(slices, planes.as_ref(), voxel)?;
    let scales = Scales::new(cfg, voxel.dx_m, h.min(w));
    cfg.check_scales(voxel.dx_m * h.max(w) as f64)?;

    // 2D: slices are independent, so they run side by side.
    let started_2d = Instant::now();
    let flows_2d = solve_slices(slices, &blocked, cfg)?;
    let wall_2d_s = started_2d.elapsed().as_secs_f64();
    let mut u2d = Array4::<f32>::zeros((ns, 3, h, w));
    let mut p2d = Array4::<f32>::zeros((ns, 1, h, w));
    for (k, solved) in flows_2d.iter().enumerate() {
        if let Some((flow, _)) = solved {
            let fluid = slices.index_axis(Axis(0), k);
            write_slice(flow, (0, 0, 0.0), fluid, &scales, (&mut u2d, &mut p2d), k);
        }
    }
    let porosity = slices.iter().filter(|&&v| v != 0).count() as f64 / slices.len() as f64;
    let mut report = report_2d(&flows_2d, &scales, (porosity, wall_2d_s), blocked);
    let Some(planes) = planes else {
        return Ok(FlowSample {
            u2d,
            u: None,
            p: p2d.clone(),
            p2d,
            report,
        });
    };

    // 3D, started from a coarser lattice's solution where the lattice is large enough for
    // one, else optionally from the 2D solutions interpolated onto the planes.
    let nz = planes.dim().0;
    let warm = (cfg.lbm.warm_start && coarse::extent(planes.dim(), &cfg.lbm).is_none())
        .then(|| interpolated_2d(&flows_2d, planes, (ns, h, w)));
    let t = Instant::now();
    let flow = solve_lattice(planes, Dim::Three, &cfg.lbm, warm.as_ref(), progress)?;
    let wall = t.elapsed().as_secs_f64();
    let mut u = Array4::<f32>::zeros((ns, 3, h, w));
    let mut p = Array4::<f32>::zeros((ns, 1, h, w));
    for k in 0..ns {
        // Slice k sits at plane coordinate k·NZ/S.
        let between = bracket(k as f64 * nz as f64 / ns as f64, nz);
        write_slice(
            &flow,
            between,
            slices.index_axis(Axis(0), k),
            &scales,
            (&mut u, &mut p),
            k,
        );
    }
    report.k_3d_m2 = Some(flow.permeability * scales.permeability);
    report.planes_3d = Some(nz);
    report.solve_3d = Some(SolveStats::of(&flow, wall));
    report.mean_velocity_3d_m_s = Some(flow.mean_velocity.map(|v| v * scales.velocity));
    Ok(FlowSample {
        u2d,
        u: Some(u),
        p,
        p2d,
        report,
    })
}

/// Cubic lattice cells: a pitch below the pixel leaves fewer planes than slices, and the 3D
/// flow would silently skip slices (usually a pitch given in the wrong unit).
fn check_pitch(slices: usize, voxel: VoxelSize) -> Result<(), SolverError> {
    if slices > 1 && voxel.dz_m < voxel.dx_m {
        return Err(SolverError::Geometry(format!(
            "the slice pitch {:.4} µm is smaller than the pixel {:.4} µm, so the 3D lattice cannot hold one plane per slice; check the units of the pitch and the voxel size",
            voxel.dz_m * 1e6,
            voxel.dx_m * 1e6
        )));
    }
    Ok(())
}

/// The report of the 2D solves (`None`: a blocked slice, whose zero flow is exact); the
/// 3D solve fills in its part.
fn report_2d(
    flows_2d: &[Option<(LatticeFlow, f64)>],
    scales: &Scales,
    (porosity, wall_2d_s): (f64, f64),
    blocked_slices: Vec<usize>,
) -> FlowReport {
    FlowReport {
        k_3d_m2: None,
        k_2d_m2: flows_2d
            .iter()
            .map(|f| {
                f.as_ref()
                    .map_or(0.0, |(f, _)| f.permeability * scales.permeability)
            })
            .collect(),
        porosity,
        planes_3d: None,
        solve_3d: None,
        solve_2d: flows_2d
            .iter()
            .map(|f| match f {
                Some((f, t)) => SolveStats::of(f, *t),
                None => SolveStats {
                    iterations: 0,
                    coarse_iterations: Vec::new(),
                    corrections: 0,
                    tau: None,
                    converged: true,
                    residual: 0.0,
                    field_residual: 0.0,
                    wall_s: 0.0,
                },
            })
            .collect(),
        wall_2d_s,
        mean_velocity_3d_m_s: None,
        blocked_slices,
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl SolveStats {
    fn of(flow: &LatticeFlow, wall_s: f64) -> Self {
        Self {
            iterations: flow.iterations,
            coarse_iterations: flow.coarse_iterations.clone(),
            corrections: flow.corrections,
            tau: Some(flow.tau),
            converged: flow.converged,
            residual: flow.residual,
            field_residual: flow.field_residual,
            wall_s,
        }
    }
}

/// Checks a sample's geometry before any solve and returns the slices that do not
/// percolate along x on their own (solved as zero flow in 2D).
fn check_geometry(
    slices: ArrayView3<u8>,
    planes: Option<&ArrayView3<u8>>,
    voxel: VoxelSize,
) -> Result<Vec<usize>, SolverError> {
    let (ns, h, w) = slices.dim();
    if ns == 0 {
        return Err(SolverError::Geometry("no slice to solve".into()));
    }
    if let Some(p) = planes
        && (p.dim().1, p.dim().2) != (h, w)
    {
        return Err(SolverError::Geometry(format!(
            "3D planes are {:?} in-plane but slices are {h}×{w}",
            (p.dim().1, p.dim().2)
        )));
    }
    if (voxel.dx_m - voxel.dy_m).abs() > 1e-9 * voxel.dx_m {
        return Err(SolverError::Geometry(
            "the lattice needs square pixels (dx = dy)".into(),
        ));
    }
    // A slice that does not percolate alone may still carry flow in 3D, through z (a
    // slot inclined in x–z): only the volume must connect when there is a 3D solve.
    let blocked: Vec<usize> = slices
        .axis_iter(Axis(0))
        .enumerate()
        .filter(|(_, slice)| !percolates_x(slice.insert_axis(Axis(0))))
        .map(|(k, _)| k)
        .collect();
    if planes.is_none() && blocked.len() == ns {
        return Err(SolverError::NotPercolating {
            what: "every slice".into(),
        });
    }
    if let Some(p) = planes
        && !percolates_x(p.view())
    {
        return Err(SolverError::NotPercolating {
            what: "3D volume".into(),
        });
    }
    Ok(blocked)
}

/// The 2D flow of every slice but the `blocked` ones, with its wall time.
fn solve_slices(
    slices: ArrayView3<u8>,
    blocked: &[usize],
    cfg: &FlowConfig,
) -> Result<Vec<Option<(LatticeFlow, f64)>>, SolverError> {
    slices
        .axis_iter(Axis(0))
        .into_par_iter()
        .enumerate()
        .map(|(k, slice)| {
            if blocked.contains(&k) {
                return Ok(None);
            }
            let t = Instant::now();
            let flow = solve_lattice(slice.insert_axis(Axis(0)), Dim::Two, &cfg.lbm, None, None)?;
            Ok(Some((flow, t.elapsed().as_secs_f64())))
        })
        .collect()
}

/// The 2D solutions interpolated linearly onto the 3D lattice's planes (vz = 0, zero in
/// fibre): the 3D solve's warm start.
fn interpolated_2d(
    flows_2d: &[Option<(LatticeFlow, f64)>],
    planes: ArrayView3<u8>,
    (ns, h, w): (usize, usize, usize),
) -> Start {
    let nz = planes.dim().0;
    let mut init = vec![[0.0f32; 3]; nz * h * w];
    for j in 0..nz {
        let (k0, k1, t) = bracket(j as f64 * ns as f64 / nz as f64, ns);
        for c in 0..h * w {
            if planes[[j, c / w, c % w]] != 0 {
                let at = |k: usize| {
                    flows_2d[k]
                        .as_ref()
                        .map_or([0.0; 3], |(f, _)| f.velocity[c])
                };
                let (a, b) = (at(k0), at(k1));
                init[j * h * w + c] = [
                    (1.0 - t) * a[0] + t * b[0],
                    (1.0 - t) * a[1] + t * b[1],
                    0.0,
                ];
            }
        }
    }
    Start {
        velocity: init,
        pressure: vec![0.0; nz * h * w],
    }
}

/// Neighbouring integer positions around `pos` on a periodic axis of `n`, and the weight of the upper one.
fn bracket(pos: f64, n: usize) -> (usize, usize, f32) {
    let lo = pos.floor();
    let i0 = (lo as usize) % n;
    (i0, (i0 + 1) % n, (pos - lo) as f32)
}

/// Writes slice `k` of `(S, C, H, W)` SI fields from a lattice flow interpolated between
/// planes `j0` and `j1` (weight `t` on `j1`), zero where the slice is fibre.
fn write_slice(
    flow: &LatticeFlow,
    (j0, j1, t): (usize, usize, f32),
    fluid: ArrayView2<u8>,
    scales: &Scales,
    (u, p): (&mut Array4<f32>, &mut Array4<f32>),
    k: usize,
) {
    let hw = flow.grid.ny * flow.grid.nx;
    let (vs, ps) = (scales.velocity as f32, scales.pressure as f32);
    let mix = |a: f32, b: f32| (1.0 - t) * a + t * b;
    for ((y, x), &m) in fluid.indexed_iter() {
        if m == 0 {
            continue;
        }
        let c = y * flow.grid.nx + x;
        let (a, b) = (flow.velocity[j0 * hw + c], flow.velocity[j1 * hw + c]);
        for ch in 0..3 {
            u[[k, ch, y, x]] = mix(a[ch], b[ch]) * vs;
        }
        p[[k, 0, y, x]] = mix(flow.pressure[j0 * hw + c], flow.pressure[j1 * hw + c]) * ps;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LbmConfig;
    use ndarray::Array3;

    fn cfg() -> FlowConfig {
        FlowConfig {
            lbm: LbmConfig {
                tol: 1e-7,
                field_tol: 1e-6,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A slit of `n` fluid rows between fibre rows, `s` slices.
    fn slit(s: usize, n: usize) -> Array3<u8> {
        Array3::from_shape_fn((s, n + 2, 6), |(_, y, _)| u8::from(y >= 1 && y <= n))
    }

    #[test]
    fn a_pitch_below_the_pixel_is_refused_before_any_solve() {
        // 5 µm slices given as 5 nm (a unit slip): 3 slices would share one plane.
        let voxel = VoxelSize::from_um(0.5, 0.005);
        let e = solve_stack(slit(3, 6).view(), voxel, &cfg(), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("slice pitch 0.0050 µm is smaller than the pixel 0.5000 µm"),
            "{e}"
        );
    }

    #[test]
    fn slit_flow_in_si_units_matches_the_analytic_profile_and_permeability() {
        let (n, dx) = (10, 0.5e-6);
        let masks = slit(2, n);
        let voxel = VoxelSize::from_um(0.5, 1.0);
        let cfg = cfg();
        let planes = masks.clone();
        let out = solve_sample(masks.view(), Some(planes.view()), voxel, &cfg, None).unwrap();
        let (g, mu) = (
            cfg.physics.pressure_gradient_pa_per_m,
            cfg.physics.viscosity_pa_s,
        );
        let width = n as f64 * dx;
        for j in 1..=n {
            let d = (j as f64 - 0.5) * dx;
            let exact = g / (2.0 * mu) * d * (width - d);
            for field in [&out.u2d, out.u.as_ref().unwrap()] {
                let got = f64::from(field[[1, 0, j, 3]]);
                assert!((got - exact).abs() < 1e-3 * exact, "{got} vs {exact}");
            }
        }
        // Superficial: K = (h²/12)·(h/H) for a slit of width h in a period H, times the
        // node-sum quadrature term 1 + 1/(2N²) of a parabola sampled at N nodes.
        let quadrature = 1.0 + 0.5 / (n * n) as f64;
        let k = width * width / 12.0 * n as f64 / (n + 2) as f64 * quadrature;
        for got in out.report.k_2d_m2.iter().chain(out.report.k_3d_m2.iter()) {
            assert!((got - k).abs() < 1e-3 * k, "{got} vs {k}");
        }
        assert!(out.report.converged());
        let u = out.u.as_ref().unwrap();
        let vz = u
            .slice(s![.., 2, .., ..])
            .iter()
            .map(|v| v.abs())
            .fold(0.0, f32::max);
        let vx = u
            .slice(s![.., 0, .., ..])
            .iter()
            .map(|v| v.abs())
            .fold(0.0, f32::max);
        assert!(vz < 1e-6 * vx, "vz {vz}");
    }

    #[test]
    fn an_inclined_slot_whose_slices_are_blocked_flows_in_3d() {
        // Fluid where (x − z) mod 64 < 32: a slab inclined at 45° in x–z. No slice connects
        // along x, the volume does, and Stokes flow runs along the slab, so ⟨vz⟩ = ⟨vx⟩.
        // Plane Poiseuille in a gap h = 32 dx/√2 driven by g/√2, half the volume fluid:
        // ⟨vx⟩ = ½ (g/√2) h²/(12 μ) /√2, so K = μ⟨vx⟩/g = h²/48 = 32²/96 dx².
        let n = 64;
        let mask = Array3::from_shape_fn((n, 4, n), |(z, _, x)| u8::from((x + n - z) % n < 32));
        let dx = 0.5e-6;
        let voxel = VoxelSize::from_um(0.5, 0.5);
        let out = solve_sample(mask.view(), Some(mask.view()), voxel, &cfg(), None).unwrap();
        assert_eq!(out.report.blocked_slices, (0..n).collect::<Vec<_>>());
        let warning = out.report.blocked_warning().unwrap();
        assert!(warning.ends_with("their 2D flow is zero; the 3D flow crosses them through z"));
        assert!(out.u2d.iter().all(|&v| v == 0.0));
        assert!(out.report.k_2d_m2.iter().all(|&k| k == 0.0));
        let k = out.report.k_3d_m2.unwrap();
        let exact = 32.0 * 32.0 / 96.0 * dx * dx;
        // Measured: K 0.04 % below, vz/vx = 1 + 4e-6 (the 45° staircase walls of the
        // bounce-back lattice cost almost nothing at this width).
        assert!((k / exact - 1.0).abs() < 0.01, "K {k:e} vs {exact:e}");
        let [vx, vy, vz] = out.report.mean_velocity_3d_m_s.unwrap();
        assert!((vz / vx - 1.0).abs() < 1e-3, "vz/vx {}", vz / vx);
        assert!(vy.abs() < 1e-6 * vx, "vy {vy}");
        assert!(out.report.converged());
    }

    #[test]
    fn blocked_geometry_and_bad_voxels_are_errors() {
        let mut masks = slit(1, 4);
        masks.slice_mut(s![0, .., 2]).fill(0);
        let e = solve_sample(
            masks.view(),
            None,
            VoxelSize::from_um(0.5, 1.0),
            &cfg(),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, SolverError::NotPercolating { .. }), "{e}");
        let masks = slit(1, 4);
        let voxel = VoxelSize {
            dx_m: 1e-6,
            dy_m: 2e-6,
            dz_m: 1e-6,
        };
        assert!(solve_sample(masks.view(), None, voxel, &cfg(), None).is_err());
    }

    #[test]
    fn planes_and_brackets() {
        assert_eq!(bracket(3.25, 10), (3, 4, 0.25));
        assert_eq!(bracket(9.5, 10), (9, 0, 0.5));
    }
}
