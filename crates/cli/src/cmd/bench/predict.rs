//! `fiberflow bench predict`: time per sample of the full prediction (features, E2D,
//! sampling, D3D) against the number of network evaluations, and its speed-up over
//! solving the same sample's 3D flow, with and without the 2D solves the prediction
//! needs as input.

use super::training::Architecture;
use super::{BenchArgs, default_sample, memory_note};
use crate::models::load_model;
use anyhow::{Context, Result};
use fiberflow_data::{Batch, Mirror, Sample};
use fiberflow_geometry::layout::SliceGrid;
use fiberflow_model::ModelError;
use fiberflow_model::bench::{PredictBench, bench_predict, untrained_model};
use fiberflow_model::device::Device;
use fiberflow_model::diffusion::{SamplerConfig, SamplerKind, TimestepSpacing};
use fiberflow_model::precision::Precision;
use fiberflow_model::predict::TrainedModel;
use fiberflow_model::predict::sampling::{PredictorKind, SampleOptions};
use fiberflow_model::train::diffusion::DiffusionTrainConfig;
use fiberflow_model::train::vae::VaeTrainConfig;
use fiberflow_solver::FlowConfig;
use fiberflow_solver::sample::solve_sample;
use ndarray::Axis;
use serde::Serialize;

/// The solver's cost for the sample the predictions are timed on.
#[derive(Serialize)]
struct SolveTime {
    /// All per-slice 2D solves (the prediction's input).
    wall_2d_s: f64,
    /// The 3D solve (warm-started from the 2D solutions).
    wall_3d_s: f64,
    iterations_3d: usize,
    converged: bool,
}

#[derive(Serialize)]
struct Speedup {
    /// 3D solve time / prediction time.
    vs_3d_solve: f64,
    /// (2D + 3D solve) / (2D solve + prediction): from a microstructure alone.
    with_2d_solves: f64,
}

#[derive(Serialize)]
pub(super) struct PredictRow {
    /// The `--device` name it ran on.
    device: String,
    /// Untrained networks of this architecture; none for the trained model of `model`.
    architecture: Option<Architecture>,
    /// The trained model timed: `--model`, or `built-in`.
    model: Option<String>,
    predictor: PredictorKind,
    /// `dpm_solver` or `ddim`; none for the direct predictor.
    sampler: Option<SamplerKind>,
    #[serde(flatten)]
    measured: Option<PredictBench>,
    speedup: Option<Speedup>,
    skipped: Option<String>,
}

impl super::Measured for PredictRow {
    fn device(&self) -> &str {
        &self.device
    }

    fn what(&self) -> String {
        let nfe = self.measured.as_ref().map_or(0, |m| m.nfe);
        let what = match (&self.architecture, &self.model) {
            (Some(a), _) => format!("{a:?}"),
            (None, m) => m.clone().unwrap_or_default(),
        };
        format!("predict {what} {} {nfe} NFE", sampler_name(self.sampler))
    }

    fn seconds(&self) -> Option<f64> {
        self.measured.as_ref().map(|m| m.timing.median_s)
    }
}

#[derive(Serialize)]
pub struct PredictSection {
    sample: SliceGrid,
    precision: Precision,
    solve: SolveTime,
    pub(super) rows: Vec<PredictRow>,
}

/// The solver's cost once, then every prediction on each of `devices`.
pub(super) fn run(a: &BenchArgs, devices: &[(String, Device)]) -> Result<PredictSection> {
    let grid = a.grid();
    let (ms, slices, planes) = default_sample(&grid)?;
    let voxel = grid.voxel(ms.window_um);
    let flow = solve_sample(
        slices.view(),
        Some(planes.view()),
        voxel,
        &FlowConfig::default(),
        None,
    )?;
    let s3 = flow
        .report
        .solve_3d
        .clone()
        .context("the solver skipped the 3D solve")?;
    let solve = SolveTime {
        wall_2d_s: flow.report.wall_2d_s,
        wall_3d_s: s3.wall_s,
        iterations_3d: s3.iterations,
        converged: flow.report.converged(),
    };
    println!(
        "solver on the {}x{}x{} sample: 2D solves {:.3} s, 3D solve {:.3} s ({} steps)",
        grid.slices, grid.size, grid.size, solve.wall_2d_s, solve.wall_3d_s, solve.iterations_3d
    );
    let batch = Batch {
        indices: vec![0],
        samples: vec![Sample {
            domain: slices.mapv(f32::from).insert_axis(Axis(1)),
            u2d: flow.u2d,
            u: flow.u.context("the solver returned no 3D flow")?,
            p: flow.p,
            p2d: Some(flow.p2d),
            dxyz: voxel.as_array(),
        }],
        mirrors: vec![Mirror::default()],
    };
    let mut rows = Vec::new();
    for (name, device) in devices {
        rows.extend(rows_on(a, &batch, &solve, name, device)?);
        rows.extend(trained_row(a, &batch, &solve, name, device)?);
    }
    Ok(PredictSection {
        sample: grid,
        precision: a.precision,
        solve,
        rows,
    })
}

/// Every architecture, predictor and sampler of `a` on one device.
fn rows_on(
    a: &BenchArgs,
    batch: &Batch,
    solve: &SolveTime,
    name: &str,
    device: &Device,
) -> Result<Vec<PredictRow>> {
    let mut architectures = vec![Architecture::Default];
    if a.reference {
        architectures.push(Architecture::Reference);
    }
    let mut rows = Vec::new();
    for arch in architectures {
        let diffusion = DiffusionTrainConfig {
            unet: arch.unet(),
            seed: a.seed,
            ..Default::default()
        };
        let mut direct = diffusion.clone();
        direct.predictor = PredictorKind::Direct;
        direct.unet.time_conditioned = false;
        let mut plan = vec![(direct, None, 1)];
        for &steps in &a.sampler_steps {
            for kind in [SamplerKind::DpmSolver, SamplerKind::Ddim] {
                plan.push((diffusion.clone(), Some(kind), steps));
            }
        }
        let target = VaeTrainConfig::default().target;
        let mut model: Option<(PredictorKind, TrainedModel)> = None;
        for (cfg, sampler, steps) in plan {
            // One model per predictor kind, built when first needed.
            if model.as_ref().is_none_or(|(k, _)| *k != cfg.predictor) {
                model = Some((
                    cfg.predictor,
                    untrained_model(&arch.vae(), target, &cfg, device)?.with_precision(a.precision),
                ));
            }
            let (_, m) = model.as_ref().expect("just built");
            let options = SampleOptions {
                sampler: SamplerConfig::new()
                    .with_kind(sampler.unwrap_or(SamplerKind::Ddim))
                    .with_steps(steps)
                    .with_spacing(TimestepSpacing::Trailing),
                guidance: 0.0,
            };
            let result = bench_predict(m, batch, &options, a.repeats(), a.seed, device);
            let row = predict_row(Some(arch), cfg.predictor, sampler, result, solve, name)?;
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The trained model of `--model` (the built-in one when absent) with its own validation
/// sampler: what a user's `predict` costs per draw.
fn trained_row(
    a: &BenchArgs,
    batch: &Batch,
    solve: &SolveTime,
    name: &str,
    device: &Device,
) -> Result<Option<PredictRow>> {
    let model = match load_model(a.model.as_deref(), device) {
        Ok(model) => model.with_precision(a.precision),
        // A build without a built-in model times the untrained architectures alone.
        Err(e) if a.model.is_none() => {
            println!("predict {name:9} trained model: skipped, {e}");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let label = a
        .model
        .as_ref()
        .map_or("built-in".to_string(), |p| p.display().to_string());
    let options = SampleOptions {
        sampler: model.log.config.val_sampler.clone(),
        guidance: 0.0,
    };
    let predictor = model.log.config.predictor;
    let sampler = (predictor == PredictorKind::Diffusion).then_some(options.sampler.kind);
    let result = bench_predict(&model, batch, &options, a.repeats(), a.seed, device);
    let mut row = predict_row(None, predictor, sampler, result, solve, name)?;
    row.model = Some(label);
    Ok(Some(row))
}

fn sampler_name(sampler: Option<SamplerKind>) -> &'static str {
    match sampler {
        Some(SamplerKind::DpmSolver) => "dpm-solver++",
        Some(SamplerKind::Ddim) => "ddim",
        Some(SamplerKind::Ddpm) => "ddpm",
        None => "direct",
    }
}

/// A measured row with its speed-ups, or a reference architecture that does not fit.
fn predict_row(
    architecture: Option<Architecture>,
    predictor: PredictorKind,
    sampler: Option<SamplerKind>,
    result: Result<PredictBench, ModelError>,
    solve: &SolveTime,
    device: &str,
) -> Result<PredictRow> {
    let name = sampler_name(sampler);
    let mut row = PredictRow {
        device: device.to_string(),
        architecture,
        model: None,
        predictor,
        sampler,
        measured: None,
        speedup: None,
        skipped: None,
    };
    match result {
        Ok(m) => {
            let t = m.timing.median_s;
            let speedup = Speedup {
                vs_3d_solve: solve.wall_3d_s / t,
                with_2d_solves: (solve.wall_2d_s + solve.wall_3d_s) / (solve.wall_2d_s + t),
            };
            let what = architecture.map_or("trained".into(), |a| format!("{a:?}"));
            println!(
                "predict {device:9} {what:9} {name:12} {:3} NFE: {:8.3} s/sample (min {:.3} s), {:6.1}x faster than the 3D solve, {:5.1}x with the 2D solves{}",
                m.nfe,
                t,
                m.timing.min_s,
                speedup.vs_3d_solve,
                speedup.with_2d_solves,
                memory_note(m.memory)
            );
            row.measured = Some(m);
            row.speedup = Some(speedup);
        }
        // The reference architectures and a trained model may not fit the bench's grid.
        Err(ModelError::Input(why)) if architecture != Some(Architecture::Default) => {
            let what = architecture.map_or("trained".into(), |a| format!("{a:?}"));
            println!("predict {device:9} {what:9} {name:12}: skipped, {why}");
            row.skipped = Some(why);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(row)
}
