//! `fiberflow solve`: Stokes flow through a user microstructure, written as `.npy` + JSON.

use super::geometry::GeometryFile;
use crate::{config_file, output};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use fiberflow_geometry::budget::check_array;
use fiberflow_geometry::layout::{VoxelSize, lattice_planes};
use fiberflow_geometry::mask_io::{SolidValue, load_mask};
use fiberflow_solver::FlowConfig;
use fiberflow_solver::config::Tau;
use fiberflow_solver::sample::{FlowReport, solve_sample, solve_stack};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array3;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Each slice on its own (vz = 0).
    #[value(name = "2d")]
    TwoD,
    /// The full volume (the 2D slice solves still run, as its warm start).
    #[value(name = "3d")]
    ThreeD,
    /// Both, all fields written.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum SolidArg {
    /// 0 / dark pixels are fibre.
    Low,
    /// 1 / bright pixels are fibre.
    High,
}

/// Numerical and physical overrides shared by every command that solves flow.
#[derive(Args, Debug, Clone, Default)]
pub struct FlowArgs {
    /// Solver config (TOML or JSON with [lbm] and [physics] tables); flags override it.
    #[arg(long = "solver-config")]
    pub solver_config: Option<PathBuf>,
    /// TRT relaxation time τ⁺ (permeability does not depend on it).
    #[arg(long)]
    pub tau: Option<f64>,
    /// Relative flux change per check window that counts as converged.
    #[arg(long)]
    pub tol: Option<f64>,
    #[arg(long)]
    pub max_iterations: Option<usize>,
    /// Start every solve from rest: no coarse-lattice start, no 2D warm start for 3D.
    #[arg(long)]
    pub no_warm_start: bool,
    /// Resin viscosity, Pa·s.
    #[arg(long)]
    pub viscosity_pa_s: Option<f64>,
    /// Mean pressure gradient along +x, Pa/m.
    #[arg(long)]
    pub pressure_gradient_pa_per_m: Option<f64>,
}

impl FlowArgs {
    pub fn config(&self) -> Result<FlowConfig> {
        let mut cfg: FlowConfig = config_file::load_or_default(self.solver_config.as_deref())?;
        if let Some(v) = self.tau {
            cfg.lbm.tau = Tau::Fixed(v);
        }
        if let Some(v) = self.tol {
            cfg.lbm.tol = v;
        }
        if let Some(v) = self.max_iterations {
            cfg.lbm.max_iterations = v;
        }
        if self.no_warm_start {
            cfg.lbm.warm_start = false;
            cfg.lbm.coarse_levels = 0;
        }
        if let Some(v) = self.viscosity_pa_s {
            cfg.physics.viscosity_pa_s = v;
        }
        if let Some(v) = self.pressure_gradient_pa_per_m {
            cfg.physics.pressure_gradient_pa_per_m = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
pub struct SolveArgs {
    /// `.npy` mask ((H,W) or (S,H,W), 1 = fluid), a folder of PNG/TIFF slices, or the
    /// `microstructure.json` written by `fiberflow geometry` (exact fibre paths for 3D).
    #[arg(long)]
    microstructure: PathBuf,
    /// Pixel size in x and y, µm (taken from the file for microstructure.json).
    #[arg(long)]
    voxel_size_um: Option<f64>,
    /// Distance between slices, µm (taken from the file for microstructure.json).
    #[arg(long)]
    slice_pitch_um: Option<f64>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Which pixel value marks fibre in the input.
    #[arg(long, value_enum, default_value_t = SolidArg::Low)]
    solid_value: SolidArg,
    #[command(flatten)]
    flow: FlowArgs,
}

/// `permeability.json`.
#[derive(Serialize)]
struct PermeabilityFile<'a> {
    k_3d_m2: Option<f64>,
    k_2d_m2: &'a [f64],
    porosity: f64,
    iterations: usize,
    converged: bool,
    residual: f64,
    /// Wall time of the whole solve, s.
    wall_s: f64,
    units: serde_json::Value,
    voxel_size_m: VoxelSize,
    config: &'a FlowConfig,
    details: &'a FlowReport,
}

pub fn run(a: SolveArgs) -> Result<()> {
    let cfg = a.flow.config()?;
    let (slices, planes_source, voxel) = load_input(&a)?;
    let (ns, h, w) = slices.dim();
    let mut mode = a.mode;
    if ns == 1 && mode != Mode::TwoD {
        eprintln!("note: a single slice has no z extent; solving in 2D only");
        mode = Mode::TwoD;
    }
    // A user stack (no analytic planes) gets its geometry between slices interpolated.
    let lattice = match (mode, &planes_source) {
        (Mode::TwoD, _) => (1, h, w),
        (_, Some(planes)) => planes.dim(),
        (_, None) => (lattice_planes(ns, voxel.dz_m, voxel.dx_m), h, w),
    };
    // Before the solve, so an output folder another command writes is refused up front.
    let _lock = output::lock(&a.out, "solve")?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {msg}",
    )?);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar.set_message(format!(
        "solving {ns} slices in 2D then a {lattice:?} lattice in 3D"
    ));
    let progress = |level: usize, it: usize, res: f64| {
        let lattice = if level == 0 {
            String::new()
        } else {
            format!(" (coarse start: lattice halved {level}×)")
        };
        bar.set_message(format!("3D step {it}{lattice}, flux change {res:.2e}"))
    };
    let started = std::time::Instant::now();
    let sample = match (mode, &planes_source) {
        (Mode::TwoD, _) => solve_sample(slices.view(), None, voxel, &cfg, Some(&progress)),
        (_, Some(planes)) => solve_sample(
            slices.view(),
            Some(planes.view()),
            voxel,
            &cfg,
            Some(&progress),
        ),
        (_, None) => solve_stack(slices.view(), voxel, &cfg, Some(&progress)),
    }
    .with_context(|| a.microstructure.display().to_string())?;
    bar.finish_and_clear();
    if let Some(w) = sample.report.blocked_warning() {
        eprintln!("warning: {w}");
    }

    if mode != Mode::ThreeD {
        output::npy(&a.out.join("U_2d.npy"), &sample.u2d)?;
        output::npy(&a.out.join("p_2d.npy"), &sample.p2d)?;
    }
    if let Some(u) = &sample.u {
        output::npy(&a.out.join("U.npy"), u)?;
    }
    output::npy(&a.out.join("p.npy"), &sample.p)?;
    let r = &sample.report;
    let main = r.solve_3d.clone().unwrap_or_else(|| {
        r.solve_2d
            .iter()
            .max_by_key(|s| s.iterations)
            .cloned()
            .expect("at least one slice")
    });
    let file = PermeabilityFile {
        k_3d_m2: r.k_3d_m2,
        k_2d_m2: &r.k_2d_m2,
        porosity: r.porosity,
        iterations: main.iterations,
        converged: r.converged(),
        residual: main.residual,
        wall_s: started.elapsed().as_secs_f64(),
        units: serde_json::json!({"U": "m/s", "p": "Pa (periodic part; total = p - G x)", "p_2d": "Pa (periodic part, each slice's own 2D solve)", "k": "m^2"}),
        voxel_size_m: voxel,
        config: &cfg,
        details: r,
    };
    output::json(&a.out.join("permeability.json"), &file)?;
    if let Some(k) = r.k_3d_m2 {
        println!("K_3d = {k:.4e} m²");
    }
    let k2 = &r.k_2d_m2;
    println!(
        "K_2d = {:.4e} m² (slice mean; {} slices), porosity {:.4} -> {}",
        k2.iter().sum::<f64>() / k2.len() as f64,
        k2.len(),
        r.porosity,
        a.out.display()
    );
    if !r.converged() {
        eprintln!(
            "warning: the solve did not converge within {} steps (flux change {:.2e} > tol {:.1e}); results are written but are not steady",
            cfg.lbm.max_iterations, main.residual, cfg.lbm.tol
        );
    }
    Ok(())
}

/// Slice masks, optional exact 3D planes (from an analytic microstructure) and voxel size.
fn load_input(a: &SolveArgs) -> Result<(Array3<u8>, Option<Array3<u8>>, VoxelSize)> {
    let path = &a.microstructure;
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let g: GeometryFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a microstructure.json from `fiberflow geometry`",
                path.display()
            )
        })?;
        let checked = || -> Result<()> {
            g.grid.validate()?;
            g.microstructure.validate()?;
            let nz = g.grid.lattice_planes(g.microstructure.window_um);
            let shape = [g.grid.slices.saturating_add(nz), g.grid.size, g.grid.size];
            Ok(check_array("the rasterised microstructure", &shape, 1)?)
        };
        checked().with_context(|| format!("{}", path.display()))?;
        let (slices, planes) = g.microstructure.sample_masks(&g.grid);
        return Ok((
            slices,
            Some(planes),
            g.grid.voxel(g.microstructure.window_um),
        ));
    }
    let solid = match a.solid_value {
        SolidArg::Low => SolidValue::Low,
        SolidArg::High => SolidValue::High,
    };
    let slices = load_mask(path, solid)?;
    let px = positive(a.voxel_size_um, "--voxel-size-um", path)?;
    let pitch = if slices.dim().0 > 1 {
        positive(a.slice_pitch_um, "--slice-pitch-um", path)?
    } else {
        a.slice_pitch_um.unwrap_or(px)
    };
    Ok((slices, None, VoxelSize::from_um(px, pitch)))
}

fn positive(v: Option<f64>, flag: &str, path: &Path) -> Result<f64> {
    match v {
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        Some(v) => bail!("{flag} must be a positive number, got {v}"),
        None => bail!(
            "{}: {flag} is required for image or .npy input",
            path.display()
        ),
    }
}
