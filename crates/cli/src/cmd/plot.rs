//! `fiberflow plot RUN_DIR`: PNG curves of a training run from its `log.json` — a VAE
//! stage (every loss term, train and validation; per-component errors and the vz ratio)
//! or a latent-predictor run (prediction and physics losses; decoded validation errors;
//! physics terms of the decoded validation flow against those of the true flow), or a
//! refiner run (losses; refined validation errors beside the unrefined ones).

use anyhow::{Context, Result};
use clap::Args;
use fiberflow_model::metrics::FieldErrors;
use fiberflow_model::physics::PhysicsMetrics;
use fiberflow_model::run::AnyRunLog;
use fiberflow_model::run::diffusion::{DiffusionEpoch, DiffusionRunLog};
use fiberflow_model::run::refine::{RefineEpoch, RefineRunLog};
use fiberflow_model::run::vae::{EpochRecord, RunLog, Stage};
use fiberflow_viz::{LinePlot, Series};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// A run folder of `fiberflow train vae`, `train diffusion` or `train refiner`.
    run: PathBuf,
    /// Where the PNGs go [default: the run folder].
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: PlotArgs) -> Result<()> {
    let out = a.out.unwrap_or_else(|| a.run.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for file in plot_run(&a.run, &out)? {
        println!("{}", file.display());
    }
    Ok(())
}

/// Writes `loss.png` and `errors.png` (and `physics.png` for a latent-predictor run) of
/// the run in `run` into `out`; returns their paths.
pub fn plot_run(run: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let plots = match AnyRunLog::read(run)? {
        AnyRunLog::Refiner(log) => refiner_plots(&log)?,
        AnyRunLog::Diffusion(log) => diffusion_plots(&log)?,
        AnyRunLog::Vae(log) => vae_plots(&log)?,
    };
    plots
        .into_iter()
        .map(|(name, plot)| {
            let file = out.join(name);
            plot.write_png(&file)?;
            Ok(file)
        })
        .collect()
}

/// Reads one curve's value from an epoch record.
type Getter<T> = fn(&T) -> f64;

/// Adds the curve of one value per epoch (epochs counted from 1), leaving out values a
/// plot cannot show (not finite, or ≤ 0 on a log axis); a curve with none left is omitted.
fn add(plot: LinePlot, log_y: bool, name: &str, values: &[f64]) -> Result<LinePlot> {
    let points: Vec<(f64, f64)> = values
        .iter()
        .enumerate()
        .map(|(k, &v)| ((k + 1) as f64, v))
        .filter(|&(_, v)| v.is_finite() && (!log_y || v > 0.0))
        .collect();
    if points.is_empty() {
        return Ok(plot);
    }
    Ok(plot.with_series(Series::new(name, points)?))
}

/// Validation relative L2 errors per component and in total, and the vz ratio.
fn errors_plot(title: &str, errors: &[FieldErrors]) -> Result<LinePlot> {
    let mut plot = LinePlot::new(title, "epoch", "relative L2 error / ratio [-]");
    let curves: [(&str, Getter<FieldErrors>); 5] = [
        ("vx", |e| e.relative_l2[0]),
        ("vy", |e| e.relative_l2[1]),
        ("vz", |e| e.relative_l2[2]),
        ("total", |e| e.relative_l2_total_normalised),
        ("vz ratio", |e| e.vz_ratio),
    ];
    for (name, get) in curves {
        let v: Vec<f64> = errors.iter().map(get).collect();
        plot = add(plot, false, name, &v)?;
    }
    Ok(plot)
}

fn vae_plots(log: &RunLog) -> Result<Vec<(&'static str, LinePlot)>> {
    let stage = match log.stage {
        Stage::One => "VAE stage 1",
        Stage::Two => "VAE stage 2",
    };
    let h = &log.history;
    let first = h.first().context("the run has no finished epoch yet")?;
    let mut loss = LinePlot::new(format!("{stage}: losses"), "epoch", "loss [-]").log_y(true);
    for (split, get) in [
        (
            "train",
            (|r| &r.train) as fn(&EpochRecord) -> &BTreeMap<String, f64>,
        ),
        ("val", |r| &r.val),
    ] {
        for key in first.train.keys() {
            let v: Vec<f64> = h
                .iter()
                .map(|r| get(r).get(key).copied().unwrap_or(f64::NAN))
                .collect();
            loss = add(loss, true, &format!("{split} {key}"), &v)?;
        }
    }
    let errors: Vec<FieldErrors> = h.iter().map(|r| r.val_errors).collect();
    let what = match log.stage {
        Stage::One => "D3D(E3D(U))",
        Stage::Two => "cross-reconstruction D3D(E2D(U_2d))",
    };
    Ok(vec![
        ("loss.png", loss),
        (
            "errors.png",
            errors_plot(&format!("{stage}: validation {what} vs U"), &errors)?,
        ),
    ])
}

/// Losses, and the refined validation errors with the unrefined ones as flat lines.
fn refiner_plots(log: &RefineRunLog) -> Result<Vec<(&'static str, LinePlot)>> {
    let h = &log.history;
    if h.is_empty() {
        anyhow::bail!("the run has no finished epoch yet");
    }
    let mut loss = LinePlot::new("refiner: losses", "epoch", "loss [-]").log_y(true);
    let curves: [(&str, Getter<RefineEpoch>); 2] = [
        ("train loss", |r| r.train_loss),
        ("val loss", |r| r.val_loss),
    ];
    for (name, get) in curves {
        let v: Vec<f64> = h.iter().map(get).collect();
        loss = add(loss, true, name, &v)?;
    }
    let errors: Vec<FieldErrors> = h.iter().map(|r| r.val_errors).collect();
    let mut plot = errors_plot("refiner: refined validation estimate vs U", &errors)?;
    let before = &log.input_val_errors;
    for (c, name) in ["vx", "vy", "vz"].iter().enumerate() {
        let flat = vec![before.relative_l2[c]; h.len()];
        plot = add(plot, false, &format!("{name} unrefined"), &flat)?;
    }
    Ok(vec![("loss.png", loss), ("errors.png", plot)])
}

fn diffusion_plots(log: &DiffusionRunLog) -> Result<Vec<(&'static str, LinePlot)>> {
    let h = &log.history;
    if h.is_empty() {
        anyhow::bail!("the run has no finished epoch yet");
    }
    let kind = format!("{:?}", log.config.predictor).to_lowercase();
    let mut loss = LinePlot::new(format!("{kind}: losses"), "epoch", "loss [-]").log_y(true);
    let curves: [(&str, Getter<DiffusionEpoch>); 3] = [
        ("train loss", |r| r.train_loss),
        ("val loss", |r| r.val_loss),
        ("train physics", |r| r.train_physics.unwrap_or(f64::NAN)),
    ];
    for (name, get) in curves {
        let v: Vec<f64> = h.iter().map(get).collect();
        loss = add(loss, true, name, &v)?;
    }
    let errors: Vec<FieldErrors> = h.iter().map(|r| r.val_errors).collect();
    let terms: [(&str, Getter<PhysicsMetrics>); 4] = [
        ("divergence", |m| m.divergence),
        ("fibre velocity", |m| m.fibre_velocity),
        ("flow-rate CV²", |m| m.flow_rate),
        ("smoothness", |m| m.smoothness),
    ];
    let mut physics = LinePlot::new(
        format!("{kind}: physics of the decoded validation flow"),
        "epoch",
        "dimensionless term [-]",
    )
    .log_y(true);
    for (name, get) in terms {
        let v: Vec<f64> = h.iter().map(|r| get(&r.val_physics)).collect();
        physics = add(physics, true, name, &v)?;
        let truth = vec![get(&log.val_physics_truth); h.len()];
        physics = add(physics, true, &format!("{name} (true flow)"), &truth)?;
    }
    let mut plots = vec![
        ("loss.png", loss),
        (
            "errors.png",
            errors_plot(&format!("{kind}: decoded validation flow vs U"), &errors)?,
        ),
    ];
    // Logs written before the physics terms were recorded hold zeros there.
    if h.iter().any(|r| r.val_physics != PhysicsMetrics::default()) {
        plots.push(("physics.png", physics));
    }
    Ok(plots)
}
