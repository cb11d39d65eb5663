//! `fiberflow evaluate`: metrics of a trained model on a dataset split — reference-exact
//! (`ref_` prefix) and corrected — per sample and summarised, as JSON and CSV. With
//! `--score vae` the VAE alone (E3D → D3D) is scored, with `--score copy2d` the 2D
//! flow itself and with `--score solve3d` the 3D solve of the slices alone, so every
//! report can show what the model adds and how close it comes to the physics it replaces.

use super::sampler_args::SamplerArgs;
use crate::models::load_model;
use crate::output;
use crate::progress::Bar;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use fiberflow_data::{Batch, Dataset, Loader, LoaderConfig, Progress, Statistics, Subset};
use fiberflow_eval::{
    EvalConfig, ProjectionConfig, SampleMetrics, Summary, evaluate_sample, project_divergence_free,
    write_csv,
};
use fiberflow_geometry::layout::VoxelSize;
use fiberflow_model::batch::{sample_array, to_tensors};
use fiberflow_model::device::{Device, DeviceSpec};
use fiberflow_model::predict::TrainedModel;
use fiberflow_solver::FlowConfig;
use fiberflow_solver::sample::solve_stack;
use ndarray::{Array4, Axis};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum SplitArg {
    Train,
    Val,
    Test,
    /// Every sample: for a dataset no model was trained on, e.g. another packing family.
    All,
}

impl SplitArg {
    /// The samples it names (`None`: all).
    pub fn subset(self) -> Option<Subset> {
        match self {
            Self::Train => Some(Subset::Train),
            Self::Val => Some(Subset::Val),
            Self::Test => Some(Subset::Test),
            Self::All => None,
        }
    }
}

/// What `evaluate` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreArg {
    /// The trained model's point prediction.
    Model,
    /// The VAE alone, D3D(E3D(U)): it needs the true 3D flow, so it bounds what a perfect
    /// latent predictor could reach.
    Vae,
    /// U_2d as the prediction of U (vz = 0).
    Copy2d,
    /// The 3D solve of the sample's slices alone, as `fiberflow solve` treats a user stack
    /// (geometry interpolated between slices, the dataset's solver settings): what the
    /// networks replace.
    Solve3d,
}

/// The baselines `--baseline` (an older spelling of `--score`) takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum BaselineArg {
    Copy2d,
    Solve3d,
}

#[derive(Args, Debug, Serialize)]
pub struct EvaluateArgs {
    /// A diffusion (or direct predictor) run folder, a model bundle (`fiberflow model
    /// export`) or the URL of an archive of either; the built-in model when absent (not
    /// used with --baseline).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Dataset folder, or the URL of an archive of one (with --sha256).
    #[arg(long)]
    dataset: PathBuf,
    /// SHA-256 of the one `--dataset` or `--model` given as an `https://` URL of a .tar, .zip
    /// or bundle (fetched into the user's cache, verified, unpacked); or write URL#sha256=HEX.
    #[arg(long)]
    sha256: Option<String>,
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Draws per sample: their starting noises average the posterior mean, or the draws
    /// themselves are averaged (`--estimate draw-mean`).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// `--score vae`, as earlier versions spelt it.
    #[arg(long, hide = true, conflicts_with = "score")]
    sanity_mode: bool,
    /// What is scored; a baseline needs no model.
    #[arg(long, value_enum, default_value_t = ScoreArg::Model)]
    score: ScoreArg,
    /// `--score copy2d|solve3d`, as earlier versions spelt it.
    #[arg(long, value_enum, hide = true, conflicts_with = "score")]
    baseline: Option<BaselineArg>,
    /// Also score the prediction after the exact projection onto zero divergence in the
    /// fluid with no-slip in fibres (`projected` in the JSON).
    #[arg(long)]
    project: bool,
    /// Evaluate only the first N samples of the split.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    json: PathBuf,
    #[arg(long)]
    csv: Option<PathBuf>,
    /// `cpu`, `libtorch` or `libtorch-cuda:N` (a build by scripts/setup-libtorch.sh), or
    /// `cuda:N` (`--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

#[derive(Serialize)]
struct Report<'a> {
    mode: &'static str,
    args: &'a EvaluateArgs,
    /// SHA-256 of the denoiser weights and the key of the VAE they work with.
    model_sha256: Option<String>,
    model_vae_key: Option<String>,
    dataset_manifest_sha256: String,
    summary: Summary,
    projected_summary: Option<Summary>,
    /// Wall time of what is scored, per sample (for `solve3d` the whole solve, its 2D
    /// solves included).
    seconds_per_sample: f64,
    /// `solve3d` only: the part of `seconds_per_sample` spent in the per-slice 2D solves,
    /// which is also what a predictor's input U_2d costs.
    seconds_2d_solves_per_sample: Option<f64>,
    per_sample: Vec<SampleMetrics>,
    projected: Vec<SampleMetrics>,
}

impl EvaluateArgs {
    /// What is scored, from `--score` or one of its older spellings.
    fn scored(&self) -> Result<ScoreArg> {
        let aliases: Vec<ScoreArg> = [
            self.sanity_mode.then_some(ScoreArg::Vae),
            self.baseline.map(|b| match b {
                BaselineArg::Copy2d => ScoreArg::Copy2d,
                BaselineArg::Solve3d => ScoreArg::Solve3d,
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        match aliases[..] {
            [] => Ok(self.score),
            [alias] if self.score == ScoreArg::Model || self.score == alias => Ok(alias),
            _ => {
                bail!("--score, --sanity-mode and --baseline each choose what is scored; give one")
            }
        }
    }
}

pub fn run(mut a: EvaluateArgs) -> Result<()> {
    let score = a.scored()?;
    if a.samples == 0 {
        bail!("--samples must be ≥ 1");
    }
    let with_model = matches!(score, ScoreArg::Model | ScoreArg::Vae);
    prepare(&mut a, with_model)?;
    let dataset = Dataset::open(&a.dataset)?;
    let device = a.sampler.device(a.device.open()?);
    let model = match with_model {
        false => None,
        true => Some(load_model(a.model.as_deref(), &device)?.with_precision(a.sampler.precision)),
    };
    let header = &dataset.manifest.header;
    if model.is_some() {
        let shape = header.shape;
        fiberflow_model::predict::check_memory(
            a.samples,
            [shape.slices, shape.height, shape.width],
        )?;
    }
    // The solver settings the data was made with: the 3D solve baseline solves as the
    // generator did, and the permeability uses the same physics.
    let flow = header.origin(&dataset.dir)?.flow_config();
    let stats = Statistics::load(&dataset)?;
    let max = [stats.u.vx.max_abs, stats.u.vy.max_abs, stats.u.vz.max_abs];
    let physics = &flow.physics;
    let cfg = EvalConfig::new(header.voxel_size, max)?
        .with_flow(physics.viscosity_pa_s, physics.pressure_gradient_pa_per_m)?;
    let loader = Loader::new(&dataset, a.split.subset(), LoaderConfig::sequential())?;
    let n = a.limit.unwrap_or(usize::MAX).min(loader.len());
    if n == 0 {
        bail!(
            "the {:?} split of {} is empty",
            a.split,
            a.dataset.display()
        );
    }
    if let (Some(m), ScoreArg::Model) = (&model, score) {
        let asked = a.sampler.estimate;
        super::sampler_args::note_estimate(asked, m.estimate_for(asked, &a.sampler.steering()));
    }
    let scorer = Scorer {
        score,
        model: model.as_ref(),
        args: &a,
        flow: &flow,
        voxel: header.voxel_size,
        device: &device,
    };
    let (mut per_sample, mut projected, mut seconds) = (Vec::new(), Vec::new(), 0.0);
    let mut seconds_2d = 0.0;
    let mut bar = Bar::default();
    bar.start("evaluating", n as u64);
    for batch in loader.epoch(0).take(n) {
        let batch = batch?;
        let started = Instant::now();
        let (pred, solve_2d_s) = scorer.predict(&batch)?;
        seconds += started.elapsed().as_secs_f64();
        seconds_2d += solve_2d_s;
        let (metrics, metrics_projected) = scorer.metrics(&pred, &batch, &cfg)?;
        per_sample.push(metrics);
        projected.extend(metrics_projected);
        bar.step();
    }
    bar.finish();
    let summary = Summary::from_samples(&per_sample)?;
    let report = Report {
        mode: match score {
            ScoreArg::Copy2d => "baseline_copy2d",
            ScoreArg::Solve3d => "baseline_solve3d",
            ScoreArg::Vae => "vae_only_sanity",
            ScoreArg::Model => "model",
        },
        model_sha256: model.as_ref().map(|m| m.weights_sha256.clone()),
        model_vae_key: model.as_ref().map(|m| m.log.vae_key.clone()),
        dataset_manifest_sha256: dataset.manifest.sha256(&dataset.dir)?,
        projected_summary: if a.project {
            Some(Summary::from_samples(&projected)?)
        } else {
            None
        },
        seconds_per_sample: seconds / n as f64,
        seconds_2d_solves_per_sample: (score == ScoreArg::Solve3d).then(|| seconds_2d / n as f64),
        summary,
        per_sample,
        projected,
        args: &a,
    };
    output::json(&a.json, &report)?;
    if let Some(csv) = &a.csv {
        write_csv(csv, &report.per_sample).with_context(|| csv.display().to_string())?;
    }
    print_summary(&report.summary, report.mode, &a.json);
    Ok(())
}

/// Fetches the inputs given by URL (only what is used: a baseline needs no model) and
/// checks that the reports can be written, before anything is computed.
fn prepare(a: &mut EvaluateArgs, with_model: bool) -> Result<()> {
    let mut paths = vec![&mut a.dataset];
    if with_model {
        paths.extend(a.model.as_mut());
    }
    crate::remote::localise(&mut paths, a.sha256.as_deref())?;
    for file in std::iter::once(&a.json).chain(&a.csv) {
        output::prepare_file(file)?;
    }
    Ok(())
}

/// What one run scores and everything that needs, fixed for the run.
struct Scorer<'a> {
    score: ScoreArg,
    model: Option<&'a TrainedModel>,
    args: &'a EvaluateArgs,
    /// The dataset's solver settings, for the 3D solve baseline.
    flow: &'a FlowConfig,
    voxel: VoxelSize,
    device: &'a Device,
}

impl Scorer<'_> {
    /// The scored field `(S, 3, H, W)` of a one-sample batch, and the wall time of the
    /// 2D solves it included (the 3D solve baseline's).
    fn predict(&self, batch: &Batch) -> Result<(Array4<f32>, f64)> {
        let (index, sample) = (batch.indices[0], &batch.samples[0]);
        let a = self.args;
        Ok(match (self.model, self.score) {
            (_, ScoreArg::Copy2d) => (&sample.u2d * &sample.domain, 0.0),
            (_, ScoreArg::Solve3d) => {
                let slices = sample
                    .domain
                    .index_axis(Axis(1), 0)
                    .mapv(|v| u8::from(v > 0.5));
                let solved = solve_stack(slices.view(), self.voxel, self.flow, None)
                    .with_context(|| format!("sample {index}: the 3D solve of its slices"))?;
                if !solved.report.converged() {
                    eprintln!(
                        "warning: sample {index}: the 3D solve of its slices did not converge"
                    );
                }
                let wall_2d_s = solved.report.wall_2d_s;
                (
                    solved.u.context("the solver skipped the 3D solve")?,
                    wall_2d_s,
                )
            }
            (Some(m), ScoreArg::Vae) => {
                let tb = to_tensors(batch, &m.vae.normalizer, self.device)?;
                m.check_input(&tb)?;
                (
                    sample_array(m.vae.decode(m.vae.encode_3d(&tb), &tb), 0)?,
                    0.0,
                )
            }
            (Some(m), ScoreArg::Model) => {
                let request = a
                    .sampler
                    .request(a.samples, a.seed.wrapping_add(index as u64));
                let options = a.sampler.options();
                let steering = a.sampler.steering();
                let u = m.sample_estimate(sample, &options, &request, &steering, self.device)?;
                (u, 0.0)
            }
            (None, _) => unreachable!("a model is loaded unless a baseline is scored"),
        })
    }

    /// The metrics of `pred` against the sample's truth, and with `--project` those of
    /// its divergence-free projection.
    fn metrics(
        &self,
        pred: &Array4<f32>,
        batch: &Batch,
        cfg: &EvalConfig,
    ) -> Result<(SampleMetrics, Option<SampleMetrics>)> {
        let sample = &batch.samples[0];
        let id = format!("{:06}", batch.indices[0]);
        let (truth, mask) = (sample.u.view(), sample.domain.view());
        let metrics = evaluate_sample(id.clone(), pred.view(), truth, mask, cfg)?;
        if !self.args.project {
            return Ok((metrics, None));
        }
        let config = ProjectionConfig::default();
        let p = project_divergence_free(pred.view(), mask, &self.voxel, &config)?;
        let projected = evaluate_sample(id, p.velocity.view(), truth, mask, cfg)?;
        Ok((metrics, Some(projected)))
    }
}

fn print_summary(s: &Summary, mode: &str, path: &Path) {
    let get = |k: &str| s.get(k).map_or(f64::NAN, |m| m.mean);
    println!(
        "{mode}: {} samples, relative L2 error vx {:.3} vy {:.3} vz {:.3} (total {:.3}), K error {:+.3}, ref_accuracy {:.4} -> {}",
        s.n_samples,
        get("rel_l2_u"),
        get("rel_l2_v"),
        get("rel_l2_w"),
        get("rel_l2_total"),
        get("k_rel_err"),
        get("ref_accuracy_score"),
        path.display()
    );
}
