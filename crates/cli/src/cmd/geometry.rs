//! `fiberflow geometry`: draw one packing, write its masks and analytic description.

use crate::{config_file, output};
use anyhow::{Context, Result};
use clap::Args;
use fiberflow_geometry::layout::SliceGrid;
use fiberflow_geometry::mask_io::png_slices;
use fiberflow_geometry::raster::solid_fraction;
use fiberflow_geometry::{GeometryError, Microstructure, PackingConfig, PackingReport};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `microstructure.json`: everything needed to rebuild the sample exactly.
#[derive(Debug, Serialize, Deserialize)]
pub struct GeometryFile {
    pub seed: u64,
    pub grid: SliceGrid,
    pub packing: PackingConfig,
    pub report: PackingReport,
    pub vf_voxelised: f64,
    pub microstructure: Microstructure,
}

/// Sampling of a sample: in-plane size and slices.
#[derive(Args, Debug, Clone)]
pub struct GridArgs {
    /// Pixels along x and y (H = W); the reference uses 256.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Slices along z.
    #[arg(long, default_value_t = 11)]
    pub slices: usize,
    /// Slice pitch, µm.
    #[arg(long, default_value_t = 5.0)]
    pub pitch_um: f64,
}

impl GridArgs {
    pub fn grid(&self) -> Result<SliceGrid> {
        checked_grid(self.size, self.slices, self.pitch_um)
    }
}

/// The grid of the `--size`, `--slices` and `--pitch-um` flags, validated.
pub fn checked_grid(size: usize, slices: usize, pitch_um: f64) -> Result<SliceGrid> {
    let grid = SliceGrid {
        size,
        slices,
        pitch_um,
    };
    grid.validate()
        .context("check --size, --slices and --pitch-um")?;
    Ok(grid)
}

#[derive(Args, Debug)]
pub struct GeometryArgs {
    /// Output folder: domain.npy (S,H,W; 1 = fluid), microstructure.json, slices/*.png.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    grid: GridArgs,
    /// Packing config (TOML or JSON, fields of PackingConfig); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Target fibre volume fraction.
    #[arg(long)]
    vf: Option<f64>,
    /// Standard deviation of the fibre lean, degrees.
    #[arg(long)]
    tilt_std_deg: Option<f64>,
    /// Waviness amplitude, µm.
    #[arg(long)]
    wave_amplitude_um: Option<f64>,
    /// Waviness wavelength, µm (0 = the z extent).
    #[arg(long)]
    wave_wavelength_um: Option<f64>,
    /// Minimum gap between fibres, pixels (default 1). Dense packings at coarse pixels need
    /// ½ or ¼ (fibres may then touch on the raster); `fiberflow generate` relaxes it by
    /// itself.
    #[arg(long)]
    min_gap_px: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: GeometryArgs) -> Result<()> {
    let mut cfg: PackingConfig = config_file::load_or_default(a.config.as_deref())?;
    for (field, value) in [
        (&mut cfg.vf, a.vf),
        (&mut cfg.tilt_std_deg, a.tilt_std_deg),
        (&mut cfg.wave_amplitude_um, a.wave_amplitude_um),
        (&mut cfg.wave_wavelength_um, a.wave_wavelength_um),
        (&mut cfg.min_gap_px, a.min_gap_px),
    ] {
        if let Some(v) = value {
            *field = v;
        }
    }
    let grid = a.grid.grid()?;
    // The masks, their encoded .npy and the PNGs (at most a byte per pixel each).
    fiberflow_geometry::budget::check_array(
        "the slice masks",
        &[grid.slices + 1, grid.size, grid.size],
        3,
    )?;
    let _lock = output::lock(&a.out, "geometry")?;
    let (ms, report) = match Microstructure::generate(
        &cfg,
        grid.z_period_um(),
        cfg.window_um / grid.size as f64,
        a.seed,
    ) {
        Err(e @ GeometryError::Jammed { .. }) if cfg.min_gap_px >= 0.25 => {
            // `fiberflow generate` halves the gap on a jam; a single geometry keeps what
            // was asked for, so say how to get there.
            let gap = cfg.min_gap_px;
            anyhow::bail!(
                "{e}. Fibres are kept {gap} px apart; at {} px dense packings may need \
                 `--min-gap-px {}` or `{}` (fibres may then touch on the raster)",
                grid.size,
                gap / 2.0,
                gap / 4.0
            );
        }
        done => done?,
    };
    let slices = ms.rasterise_slices(grid.slices, grid.pitch_um, grid.size);
    output::npy(&a.out.join("domain.npy"), &slices)?;
    let dir = a.out.join("slices");
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    for (name, png) in png_slices(&slices)? {
        fiberflow_data::atomic::write_atomic(&dir.join(name), &png)?;
    }
    let vf_voxel = solid_fraction(&slices);
    println!(
        "{} fibres, Vf {:.4} (voxelised {:.4}), min gap {:.3} µm -> {}",
        report.n_fibres,
        report.vf_analytic,
        vf_voxel,
        report.min_gap_found_um,
        a.out.display()
    );
    let file = GeometryFile {
        seed: a.seed,
        grid,
        packing: cfg,
        report,
        vf_voxelised: vf_voxel,
        microstructure: ms,
    };
    output::json(&a.out.join("microstructure.json"), &file)?;
    Ok(())
}
