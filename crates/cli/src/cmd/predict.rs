//! `fiberflow predict`: the 3D flow of one microstructure from a trained model — a dataset
//! sample, or a user's image stack with its 2D flow (solved here when not given) — with
//! a point prediction and the per-voxel standard deviation of the draws, written as NumPy arrays, a VTK
//! volume for ParaView, a comparison figure and a summary.

use super::sampler_args::SamplerArgs;
use super::solve::{FlowArgs, SolidArg};
use crate::models::load_model;
use crate::output;
use anyhow::{Context, Result, bail};
use clap::Args;
use fiberflow_data::{Dataset, Sample};
use fiberflow_eval::physics::permeability;
use fiberflow_eval::{EvalConfig, Flow, evaluate_sample};
use fiberflow_geometry::layout::VoxelSize;
use fiberflow_geometry::mask_io::{SolidValue, load_mask};
use fiberflow_model::device::DeviceSpec;
use fiberflow_model::predict::{PredictOutput, PredictRequest};
use fiberflow_solver::sample::solve_sample;
use fiberflow_viz::{ComparisonFigure, VtiVolume, magnitude};
use ndarray::{Array4, Axis};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug, Serialize)]
pub struct PredictArgs {
    /// A diffusion (or direct predictor) run folder, a model bundle (`fiberflow model
    /// export`), or the URL of an archive of either; the built-in model when absent.
    #[arg(long)]
    model: Option<PathBuf>,
    /// SHA-256 of the one `--dataset` or `--model` given as an `https://` URL of a .tar, .zip
    /// or bundle (fetched into the user's cache, verified, unpacked); or write URL#sha256=HEX.
    #[arg(long)]
    sha256: Option<String>,

    /// Predict sample --index of this dataset (its truth is then compared).
    #[arg(long, requires = "index", conflicts_with = "microstructure")]
    dataset: Option<PathBuf>,
    #[arg(long)]
    index: Option<usize>,
    /// A fluid mask stack: `.npy` (S, H, W), a folder of PNG/TIFF slices, or a multi-page TIFF.
    #[arg(long, required_unless_present = "dataset")]
    microstructure: Option<PathBuf>,
    /// Which mask value is fibre.
    #[arg(long, value_enum, default_value_t = SolidArg::Low)]
    solid_value: SolidArg,
    /// The per-slice 2D flow `(S, 3, H, W)` in m/s as `.npy`; solved here when absent.
    #[arg(long, requires = "microstructure")]
    flow2d: Option<PathBuf>,
    /// The per-slice 2D pressure `(S, 1, H, W)` in Pa as `.npy` (`p_2d.npy` of `fiberflow
    /// solve`, not its 3D `p.npy`), which models trained with `pressure_condition` need next
    /// to --flow2d. Slices are taken as periodic along z, like the solver's boundary.
    #[arg(long, requires = "flow2d")]
    pressure2d: Option<PathBuf>,
    /// In-plane pixel size, µm (with --microstructure).
    #[arg(long)]
    voxel_size_um: Option<f64>,
    /// Distance between slices, µm (with --microstructure).
    #[arg(long)]
    slice_pitch_um: Option<f64>,
    #[arg(long)]
    out: PathBuf,
    /// Stochastic predictions: their std is the uncertainty; the prediction is the
    /// denoiser's posterior mean over their starting noises (or their mean, `--estimate
    /// draw-mean`).
    #[arg(long, default_value_t = 4)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Slice shown in comparison.png (default: the middle one).
    #[arg(long)]
    slice: Option<usize>,
    #[command(flatten)]
    #[serde(skip)]
    flow: FlowArgs,
    /// `cpu`, `libtorch` or `libtorch-cuda:N` (a build by scripts/setup-libtorch.sh), or
    /// `cuda:N` (`--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

#[derive(Serialize)]
struct Summary<'a> {
    args: &'a PredictArgs,
    /// SHA-256 of the denoiser's weights: names the model, the built-in one included.
    model_sha256: &'a str,
    samples: usize,
    seconds_solve_2d: f64,
    /// The draws and the point estimate together.
    seconds_predict: f64,
    seconds_per_draw: f64,
    /// The point estimate alone, when it is not the draws' mean.
    seconds_point_estimate: f64,
    k_pred_m2: f64,
    k_true_m2: Option<f64>,
    mean_std_over_fluid_m_per_s: [f64; 3],
    relative_l2_error: Option<[f64; 4]>,
    units: serde_json::Value,
}

pub fn run(mut a: PredictArgs) -> Result<()> {
    if a.samples == 0 {
        bail!("--samples must be ≥ 1");
    }
    if !a.sampler.known_slices.is_empty() && a.dataset.is_none() {
        bail!("--known-slices takes the true flow of a dataset sample: use --dataset and --index");
    }
    let mut paths: Vec<&mut PathBuf> = a.model.iter_mut().collect();
    paths.extend(a.dataset.as_mut());
    crate::remote::localise(&mut paths, a.sha256.as_deref())?;
    let device = a.sampler.device(a.device.open()?);
    let model = load_model(a.model.as_deref(), &device)?.with_precision(a.sampler.precision);
    // Before any work, so a folder another command writes is refused up front.
    let _lock = output::lock(&a.out, "predict")?;
    if a.pressure2d.is_some() && !model.log.config.pressure_condition {
        eprintln!(
            "warning: --pressure2d is not read: the model was trained without pressure_condition"
        );
        a.pressure2d = None;
    }
    let Input {
        sample,
        solve_s,
        truth,
        physics: (mu, g),
    } = input_sample(&a)?;
    warn_resolution(model.log.dxyz, &sample.dxyz);
    let slices = sample.domain.dim().0;
    let slice = a.slice.unwrap_or(slices / 2);
    if slice >= slices {
        bail!("--slice {slice} is beyond the {slices} slices");
    }
    let voxel = VoxelSize {
        dx_m: sample.dxyz[0],
        dy_m: sample.dxyz[1],
        dz_m: sample.dxyz[2],
    };
    let request = PredictRequest {
        options: a.sampler.options(),
        estimate: a.sampler.request(a.samples, a.seed),
        steering: a.sampler.steering(),
    };
    let PredictOutput {
        mean,
        std,
        estimate,
        draws_s,
        total_s: predict_s,
    } = model.predict_stack(&sample, &request, &device)?;
    super::sampler_args::note_estimate(a.sampler.estimate, estimate);
    let speed = magnitude(mean.view())?;
    let error = truth.as_ref().map(|u| &mean - u);
    check_finite([Some(&mean), Some(&std), Some(&speed), error.as_ref()])?;
    let fields = Fields {
        voxel,
        sample: &sample,
        mean: &mean,
        std: &std,
        speed: &speed,
        truth: truth.as_ref().zip(error.as_ref()),
    };
    fields.write(&a.out, slice, a.samples)?;

    let k_of = |u: &Array4<f32>| -> Result<f64> {
        Ok(permeability(
            &Flow::new(u.view(), sample.domain.view())?,
            mu,
            g,
        )?)
    };
    let k_pred = k_of(&mean)?;
    let errors = match &truth {
        Some(u) => Some(relative_errors(&mean, u, &sample, voxel, (mu, g))?),
        None => None,
    };
    let summary = Summary {
        model_sha256: &model.weights_sha256,
        samples: a.samples,
        seconds_solve_2d: solve_s,
        seconds_predict: predict_s,
        seconds_per_draw: draws_s / a.samples as f64,
        seconds_point_estimate: predict_s - draws_s,
        k_pred_m2: k_pred,
        k_true_m2: truth.as_ref().map(k_of).transpose()?,
        mean_std_over_fluid_m_per_s: fluid_mean(&std, &sample.domain),
        relative_l2_error: errors,
        units: serde_json::json!({"U_pred": "m/s", "U_std": "m/s", "k": "m^2", "layout": "(S, 3, H, W): slices along z, (vx, vy, vz), rows y, columns x"}),
        args: &a,
    };
    output::json(&a.out.join("summary.json"), &summary)?;
    summary.print(&a.out);
    Ok(())
}

impl Summary<'_> {
    /// One line: the permeability, the errors where the truth is known, the time.
    fn print(&self, out: &Path) {
        let k_pred = self.k_pred_m2;
        match self.relative_l2_error {
            Some(e) => println!(
                "K = {k_pred:.4e} m² (truth {:.4e}); relative L2 error vx {:.3} vy {:.3} vz {:.3}; {:.2} s to predict -> {}",
                self.k_true_m2.unwrap_or(f64::NAN),
                e[0],
                e[1],
                e[2],
                self.seconds_predict,
                out.display()
            ),
            None => println!(
                "K = {k_pred:.4e} m²; {:.2} s to predict -> {}",
                self.seconds_predict,
                out.display()
            ),
        }
    }
}

/// Refuses to write a prediction with a non-finite value, checked on |U| and the error
/// too: a field near f32's limit is finite while they are not.
fn check_finite(fields: [Option<&Array4<f32>>; 4]) -> Result<()> {
    if let Some(bad) = fields
        .iter()
        .flatten()
        .flat_map(|f| f.iter())
        .find(|v| !v.is_finite())
    {
        bail!(
            "the prediction holds a non-finite value ({bad}); nothing was written (check the inputs' scale against the model's training data)"
        );
    }
    Ok(())
}

/// A prediction's fields and what they are compared with, for the output files.
struct Fields<'a> {
    voxel: VoxelSize,
    sample: &'a Sample,
    mean: &'a Array4<f32>,
    std: &'a Array4<f32>,
    /// |U_pred|.
    speed: &'a Array4<f32>,
    /// The true flow and the error, for a dataset sample.
    truth: Option<(&'a Array4<f32>, &'a Array4<f32>)>,
}

impl Fields<'_> {
    /// `U_pred.npy`, `U_std.npy`, `prediction.vti` and `comparison.png` (slice `slice`)
    /// under `out`.
    fn write(&self, out: &Path, slice: usize, draws: usize) -> Result<()> {
        output::npy(&out.join("U_pred.npy"), self.mean)?;
        output::npy(&out.join("U_std.npy"), self.std)?;
        let domain = self.sample.domain.view();
        let mut volume = VtiVolume::new(self.voxel, domain)?
            .with_vector("U_pred", self.mean.view())?
            .with_scalar("|U_pred|", self.speed.view())?
            .with_vector("U_std", self.std.view())?;
        let mut figure = ComparisonFigure::new(self.voxel, domain, self.mean.view())?
            .with_std(self.std.view())?
            .with_title(format!("fiberflow prediction, {draws} draws"));
        if let Some((u, e)) = self.truth {
            volume = volume
                .with_vector("U_true", u.view())?
                .with_vector("error", e.view())?;
            figure = figure.with_truth(u.view())?;
        }
        volume.write(&out.join("prediction.vti"))?;
        figure.write_png(slice, &out.join("comparison.png"))?;
        Ok(())
    }
}

/// Relative L2 errors vx, vy, vz and total of `mean` against the truth `u`, as `evaluate`
/// reports them.
fn relative_errors(
    mean: &Array4<f32>,
    u: &Array4<f32>,
    sample: &Sample,
    voxel: VoxelSize,
    (mu, g): (f64, f64),
) -> Result<[f64; 4]> {
    let cfg = EvalConfig::new(voxel, [1.0; 3])?.with_flow(mu, g)?;
    let domain = sample.domain.view();
    let m = evaluate_sample("prediction", mean.view(), u.view(), domain, &cfg)?;
    Ok([m.rel_l2_u, m.rel_l2_v, m.rel_l2_w, m.rel_l2_total])
}

/// What `predict` works on.
struct Input {
    sample: Sample,
    /// Seconds spent solving its 2D flow.
    solve_s: f64,
    /// Its 3D flow, when known.
    truth: Option<Array4<f32>>,
    /// Viscosity and pressure gradient of its flow (a dataset's own, or the solver flags')
    /// for the permeability.
    physics: (f64, f64),
}

/// Warns when the voxel size or slice pitch is far (beyond ×1.25) from the training data's:
/// the networks learned flows at one resolution and are not scale-free.
fn warn_resolution(trained: Option<[f64; 3]>, dxyz: &[f64; 3]) {
    let Some(t) = trained else { return };
    for (what, used, at) in [
        ("voxel size", dxyz[0], t[0]),
        ("slice pitch", dxyz[2], t[2]),
    ] {
        let ratio = used / at;
        if !(0.8..=1.25).contains(&ratio) {
            eprintln!(
                "warning: the {what} {:.4} µm is {ratio:.2}× the {:.4} µm of the model's training data; expect larger errors",
                used * 1e6,
                at * 1e6
            );
        }
    }
}

fn input_sample(a: &PredictArgs) -> Result<Input> {
    if let (Some(dir), Some(index)) = (&a.dataset, a.index) {
        let dataset = Dataset::open(dir)?;
        if index >= dataset.len() {
            bail!(
                "--index {index}: {} holds {} samples",
                dir.display(),
                dataset.len()
            );
        }
        let sample = dataset.open_sample(index)?.load()?;
        let truth = sample.u.clone();
        let origin = dataset.manifest.header.origin(&dataset.dir)?;
        let p = origin.flow_config().physics;
        let physics = (p.viscosity_pa_s, p.pressure_gradient_pa_per_m);
        return Ok(Input {
            sample,
            solve_s: 0.0,
            truth: Some(truth),
            physics,
        });
    }
    let path = a.microstructure.as_ref().expect("clap requires one input");
    let solid = match a.solid_value {
        SolidArg::Low => SolidValue::Low,
        SolidArg::High => SolidValue::High,
    };
    let slices = load_mask(path, solid)?;
    let (s, h, w) = slices.dim();
    fiberflow_model::predict::check_memory(a.samples, [s, h, w])?;
    let positive = |v: Option<f64>, flag: &str| match v {
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => bail!("{flag} (a positive number) is required with --microstructure"),
    };
    let voxel = VoxelSize::from_um(
        positive(a.voxel_size_um, "--voxel-size-um")?,
        positive(a.slice_pitch_um, "--slice-pitch-um")?,
    );
    let domain = slices
        .mapv(f32::from)
        .into_shape_with_order((s, 1, h, w))
        .expect("same element count");
    let flow = a.flow.config()?;
    let started = Instant::now();
    let (u2d, p2d) = match &a.flow2d {
        Some(p) => (
            read_field(p, (s, 3, h, w))?,
            a.pressure2d
                .as_ref()
                .map(|q| read_field(q, (s, 1, h, w)))
                .transpose()?,
        ),
        None => {
            eprintln!("solving the 2D flow of {s} slices…");
            let solved = solve_sample(slices.view(), None, voxel, &flow, None)
                .with_context(|| path.display().to_string())?;
            if let Some(w) = solved.report.blocked_warning() {
                eprintln!(
                    "warning: {w}; the networks were trained on slices that all carry a 2D flow, so expect larger errors"
                );
            }
            (solved.u2d, Some(solved.p2d))
        }
    };
    let solve_s = started.elapsed().as_secs_f64();
    if u2d.iter().all(|&v| v == 0.0) {
        eprintln!(
            "warning: the 2D flow is zero everywhere, so the prediction has no flow to start from; check --flow2d"
        );
    }
    let sample = Sample {
        u: Array4::zeros((s, 3, h, w)),
        p: Array4::zeros((s, 1, h, w)),
        p2d,
        domain,
        u2d,
        dxyz: voxel.as_array(),
    };
    let physics = (
        flow.physics.viscosity_pa_s,
        flow.physics.pressure_gradient_pa_per_m,
    );
    Ok(Input {
        sample,
        solve_s,
        truth: None,
        physics,
    })
}

/// A float32 `.npy` of `shape`, finite. Read through the geometry crate's reader, which
/// checks the header's shape against the file's length and the memory budget before
/// allocating, so a corrupt or hostile header is an error naming the file, not an abort.
fn read_field(path: &Path, shape: (usize, usize, usize, usize)) -> Result<Array4<f32>> {
    let a: Array4<f32> =
        fiberflow_geometry::mask_io::read_npy(path, "a float32 (S, C, H, W) field")?;
    if a.dim() != shape {
        bail!(
            "{}: shape {:?}, expected {shape:?} (S, C, H, W) to match the microstructure",
            path.display(),
            a.dim()
        );
    }
    if a.iter().any(|v| !v.is_finite()) {
        bail!("{}: holds NaN or infinite values", path.display());
    }
    Ok(a)
}

/// Mean of each component over the fluid.
fn fluid_mean(field: &Array4<f32>, domain: &Array4<f32>) -> [f64; 3] {
    let fluid: f64 = domain.iter().map(|&m| f64::from(m)).sum::<f64>().max(1.0);
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        *o = field
            .index_axis(Axis(1), c)
            .iter()
            .zip(domain.index_axis(Axis(1), 0).iter())
            .map(|(&v, &m)| f64::from(v * m))
            .sum::<f64>()
            / fluid;
    }
    out
}
