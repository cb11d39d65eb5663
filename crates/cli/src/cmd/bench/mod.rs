//! `fiberflow bench`: what the solver and the networks cost, measured in one run, printed
//! and saved as JSON (one section per target).

mod predict;
mod solver;
mod training;

use crate::output;
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use fiberflow_geometry::layout::SliceGrid;
use fiberflow_geometry::{Microstructure, PackingConfig};
use fiberflow_model::bench::{Memory, Repeats};
use fiberflow_model::device::{Device, DeviceList, DeviceSpec};
use fiberflow_model::diffusion::{SamplerConfig, SamplerKind, TimestepSpacing};
use fiberflow_model::precision::Precision;
use fiberflow_model::train::diffusion::DiffusionTrainConfig;
use fiberflow_model::train::vae::VaeTrainConfig;
use ndarray::Array3;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Lattice Boltzmann kernels and sample convergence.
    Solver,
    /// VAE stage-1 training step.
    Vae,
    /// Latent denoiser training step.
    Diffusion,
    /// Full prediction vs sampler steps, and its speed-up over the 3D solve.
    Predict,
    /// Everything.
    All,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(value_enum, default_value_t = Target::All)]
    target: Target,
    /// In-plane size H = W of the sample (networks: a multiple of 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Slices S of the sample.
    #[arg(long, default_value_t = 11)]
    slices: usize,
    /// Also measure at the reference resolution 256×256 (solver kernels; VAE and denoiser
    /// steps of the reference architectures: slow and memory-hungry on a CPU), and predict
    /// with the reference architectures at --size.
    #[arg(long)]
    reference: bool,
    /// Leave out the reference architectures (they take minutes per training step on a
    /// CPU); `bench vae` still measures the full-resolution VAE the default replaced.
    #[arg(long, conflicts_with = "reference")]
    default_only: bool,
    /// Timed repetitions of every network measurement (training steps, predictions).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Untimed repetitions before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Training batch size (default: each training config's own).
    #[arg(long)]
    batch: Option<usize>,
    /// Sampler steps (= network evaluations) of the timed predictions, each with
    /// DPM-Solver++ and DDIM; the direct predictor (1 evaluation) is always timed.
    #[arg(long, value_delimiter = ',', default_values_t = [5, 10, 20, 50])]
    sampler_steps: Vec<usize>,
    /// Float type the timed predictions' networks compute in (as `predict --precision`;
    /// `predict` and `all` only: training is timed in f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// The trained model timed beside the untrained architectures (`predict` and `all`): a
    /// run folder or a bundle; the built-in model when absent.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Seed of the network weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `cpu`, `libtorch`, `libtorch-cuda:N` or `cuda:N` (as `train --device`); a list such
    /// as `cpu,libtorch` measures the networks on each in turn and prints each device's
    /// speed-up over the first.
    #[arg(long, default_value = "cpu")]
    device: DeviceList,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BenchArgs {
    fn repeats(&self) -> Repeats {
        Repeats {
            warmup: self.warmup,
            timed: self.steps,
        }
    }

    /// The sample grid: `--size`, `--slices`, the default slice pitch.
    fn grid(&self) -> SliceGrid {
        SliceGrid {
            size: self.size,
            slices: self.slices,
            ..SliceGrid::default()
        }
    }

    fn runs(&self, target: Target) -> bool {
        self.target == target || self.target == Target::All
    }

    /// Refuses bad arguments before any measurement starts.
    fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("--steps must be ≥ 1 (timed repetitions)");
        }
        if self.slices == 0 || self.size == 0 {
            bail!("--size and --slices must be ≥ 1");
        }
        if self.batch == Some(0) {
            bail!("--batch must be ≥ 1");
        }
        let specs = self.device.specs();
        if let Some((i, name)) = specs
            .iter()
            .enumerate()
            .find(|(i, d)| specs[..*i].contains(d))
        {
            bail!(
                "--device names `{name}` twice (position {}); each device is measured once",
                i + 1
            );
        }
        if self.target != Target::Solver {
            // The default VAE divides H by its downsampling factor (a 4×4 patch), the
            // default denoiser its latent by its own.
            let f = VaeTrainConfig::default().vae.downsample_factor()
                * DiffusionTrainConfig::default().unet.downsample_factor();
            if !self.size.is_multiple_of(f) {
                bail!(
                    "--size {} is not divisible by {f}, which the default VAE and denoiser need",
                    self.size
                );
            }
        }
        if self.runs(Target::Predict) {
            if self.sampler_steps.is_empty() {
                bail!("--sampler-steps needs at least one step count");
            }
            let schedule = DiffusionTrainConfig::default().diffusion.init()?;
            for &n in &self.sampler_steps {
                for kind in [SamplerKind::DpmSolver, SamplerKind::Ddim] {
                    let sampler = SamplerConfig::new()
                        .with_kind(kind)
                        .with_steps(n)
                        .with_spacing(TimestepSpacing::Trailing);
                    if let Err(e) = sampler.init(&schedule) {
                        bail!("--sampler-steps {n}: {e}");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where the numbers come from.
#[derive(Serialize)]
struct Machine {
    command: Vec<String>,
    cpu: Option<String>,
    threads: usize,
    device: String,
}

/// Measures training steps of `--target` on one named device.
type StepsOn = dyn Fn(&BenchArgs, &str, &Device) -> Result<Vec<training::StepRow>>;

/// How much faster `device` ran one measurement than the first device of `--device`.
#[derive(Serialize)]
struct Speedup {
    what: String,
    baseline: String,
    device: String,
    /// Baseline seconds / this device's seconds.
    ratio: f64,
}

/// A measurement that can be compared across devices.
trait Measured {
    fn device(&self) -> &str;
    /// What was measured, the same string on every device.
    fn what(&self) -> String;
    fn seconds(&self) -> Option<f64>;
}

/// Each measurement of a later device against the same one on the first device: every
/// device runs the same plan, so the k-th row of each is paired with the k-th of the first.
fn speedups<'a, M: Measured + 'a>(rows: impl IntoIterator<Item = &'a M>) -> Vec<Speedup> {
    let mut devices: Vec<(&str, Vec<&M>)> = Vec::new();
    for row in rows {
        match devices.iter_mut().find(|(d, _)| *d == row.device()) {
            Some((_, list)) => list.push(row),
            None => devices.push((row.device(), vec![row])),
        }
    }
    let Some(((first, base), others)) = devices.split_first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (device, list) in others {
        for (b, o) in base.iter().zip(list) {
            if let (true, Some(tb), Some(to)) = (b.what() == o.what(), b.seconds(), o.seconds()) {
                out.push(Speedup {
                    what: b.what(),
                    baseline: first.to_string(),
                    device: device.to_string(),
                    ratio: tb / to,
                });
            }
        }
    }
    out
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    #[serde(skip_serializing_if = "Option::is_none")]
    solver: Option<solver::SolverBench>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vae: Option<Vec<training::StepRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diffusion: Option<Vec<training::StepRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    predict: Option<predict::PredictSection>,
    /// With several devices: every network measurement's speed-up over the first device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    speedups: Vec<Speedup>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    a.validate()?;
    let devices: Vec<(String, Device)> = a
        .device
        .specs()
        .iter()
        .map(DeviceSpec::to_string)
        .zip(a.device.open()?)
        .collect();
    let machine = Machine {
        command: std::env::args().collect(),
        cpu: cpu_model(),
        threads: rayon::current_num_threads(),
        device: a.device.to_string(),
    };
    println!(
        "{} on {} threads, device {}",
        machine.cpu.as_deref().unwrap_or("unknown CPU"),
        machine.threads,
        machine.device
    );
    let on_each = |f: &StepsOn| {
        devices
            .iter()
            .map(|(name, device)| f(&a, name, device))
            .collect::<Result<Vec<_>>>()
            .map(|rows| rows.into_iter().flatten().collect::<Vec<_>>())
    };
    let solver = a
        .runs(Target::Solver)
        .then(|| solver::run(&a))
        .transpose()?;
    let vae = a
        .runs(Target::Vae)
        .then(|| on_each(&training::vae))
        .transpose()?;
    let diffusion = a
        .runs(Target::Diffusion)
        .then(|| on_each(&training::diffusion))
        .transpose()?;
    let predict = a
        .runs(Target::Predict)
        .then(|| predict::run(&a, &devices))
        .transpose()?;
    let mut ratios = speedups(vae.iter().flatten());
    ratios.extend(speedups(diffusion.iter().flatten()));
    ratios.extend(speedups(predict.iter().flat_map(|p| &p.rows)));
    for s in &ratios {
        println!(
            "speed-up {} over {}: {:6.2}x  {}",
            s.device, s.baseline, s.ratio, s.what
        );
    }
    let report = Report {
        machine,
        solver,
        vae,
        diffusion,
        predict,
        speedups: ratios,
    };
    if let Some(path) = &a.json {
        output::json(path, &report)?;
        println!("-> {}", path.display());
    }
    Ok(())
}

/// The solver benches' sample: the default packing (Vf 0.5) on `grid`, as slice masks
/// and 3D lattice planes.
fn default_sample(grid: &SliceGrid) -> Result<(Microstructure, Array3<u8>, Array3<u8>)> {
    let cfg = PackingConfig::default();
    let (ms, _) = Microstructure::generate(
        &cfg,
        grid.z_period_um(),
        cfg.window_um / grid.size as f64,
        1,
    )?;
    let (slices, planes) = ms.sample_masks(grid);
    Ok((ms, slices, planes))
}

/// `, peak RSS … MiB (+… MiB)` when the memory was measured.
fn memory_note(m: Option<Memory>) -> String {
    m.map(|m| {
        format!(
            ", peak RSS {:.0} MiB (+{:.0} MiB)",
            m.peak_rss_mib,
            m.peak_rss_mib - m.rss_before_mib
        )
    })
    .unwrap_or_default()
}

/// The CPU's model name from /proc/cpuinfo (Linux).
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row(&'static str, &'static str, Option<f64>);

    impl Measured for Row {
        fn device(&self) -> &str {
            self.0
        }
        fn what(&self) -> String {
            self.1.to_string()
        }
        fn seconds(&self) -> Option<f64> {
            self.2
        }
    }

    #[test]
    fn speedups_compare_each_measurement_with_the_first_device() {
        let rows = [
            Row("cpu", "vae", Some(4.0)),
            Row("cpu", "denoiser", Some(3.0)),
            Row("cpu", "skipped", None),
            Row("libtorch", "vae", Some(1.0)),
            Row("libtorch", "denoiser", Some(1.5)),
            Row("libtorch", "skipped", None),
            Row("libtorch-cuda:0", "vae", Some(0.5)),
        ];
        let s = speedups(&rows);
        let got: Vec<(&str, &str, f64)> = s
            .iter()
            .map(|s| (s.what.as_str(), s.device.as_str(), s.ratio))
            .collect();
        assert_eq!(
            got,
            [
                ("vae", "libtorch", 4.0),
                ("denoiser", "libtorch", 2.0),
                ("vae", "libtorch-cuda:0", 8.0)
            ]
        );
        assert!(s.iter().all(|s| s.baseline == "cpu"));
        assert!(speedups(&rows[..3]).is_empty());
        // Rows measured twice (the same sampler steps listed twice) pair one to one.
        let twice = [
            Row("cpu", "ddim 10", Some(2.0)),
            Row("cpu", "ddim 10", Some(2.0)),
            Row("libtorch", "ddim 10", Some(1.0)),
            Row("libtorch", "ddim 10", Some(0.5)),
        ];
        let ratios: Vec<f64> = speedups(&twice).iter().map(|s| s.ratio).collect();
        assert_eq!(ratios, [2.0, 4.0]);
    }
}
