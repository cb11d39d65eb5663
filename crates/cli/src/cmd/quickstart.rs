//! `fiberflow quickstart`: the whole pipeline on its built-in defaults — generate a small
//! dataset, train both VAE stages and the diffusion model, evaluate it against the VAE
//! alone, the copy-2D baseline and the 3D solve of the slices alone, predict one test
//! sample — then `report.md` and
//! `report.html` with the metrics, loss curves, the comparison figure and timings.
//!
//! Each step runs this same binary as a child process with the documented command line,
//! so the report's commands are exactly what a user would type, and every step resumes:
//! generation skips written samples, training continues from its checkpoint, and the
//! cheap evaluation steps are simply redone.

use crate::cmd::plot::plot_run;
use crate::output;
use anyhow::{Context, Result, bail};
use clap::Args;
use fiberflow_data::json::read_json;
use fiberflow_model::device::DeviceSpec;
use fiberflow_viz::{LinePlot, Series};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Output folder (data/, vae-stage1/, vae-stage2/, diffusion/, eval/, predict/, report).
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Samples to generate (70 % train, 15 % validation, 15 % test). 48 samples for half
    /// the epochs cost the same training time as 24 and generalise better.
    #[arg(long, default_value_t = 48)]
    samples: usize,
    /// Pixels per side of each slice (a multiple of 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Slices along z.
    #[arg(long, default_value_t = 11)]
    slices: usize,
    /// Slice pitch, µm.
    #[arg(long, default_value_t = 5.0)]
    pitch_um: f64,
    /// Base seed of the dataset.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Generator config (TOML or JSON, fields of GeneratorConfig), as for `generate`.
    #[arg(long)]
    generator_config: Option<PathBuf>,
    /// Epochs of VAE stage 1, stage 2 and the diffusion model.
    #[arg(long, num_args = 3, value_names = ["STAGE1", "STAGE2", "DIFFUSION"], default_values_t = [15, 5, 20])]
    epochs: Vec<usize>,
    /// `cpu`, `libtorch` or `libtorch-cuda:N` (a build by scripts/setup-libtorch.sh), or
    /// `cuda:N` (`--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// One step of the pipeline: its command line and wall time, summed over the runs that
/// worked on it (a resumed quickstart skips finished work in seconds).
#[derive(Serialize, Deserialize)]
struct Step {
    name: String,
    command: String,
    seconds: f64,
}

/// Draws per sample of the model evaluation and the prediction (the point prediction is
/// the posterior mean over the eight mirror images; the draws give the spread).
const DRAWS: &str = "4";

/// The folders of one quickstart under its output folder.
struct Paths {
    data: String,
    vae1: String,
    vae2: String,
    diffusion: String,
    eval: String,
    predict: String,
}

impl Paths {
    fn new(out: &Path) -> Self {
        let p = |name: &str| out.join(name).display().to_string();
        Self {
            data: p("data"),
            vae1: p("vae-stage1"),
            vae2: p("vae-stage2"),
            diffusion: p("diffusion"),
            eval: p("eval"),
            predict: p("predict"),
        }
    }
}

pub fn run(a: QuickstartArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot locate the fiberflow binary")?;
    let out = &a.out;
    let _lock = output::lock(out, "quickstart")?;
    let paths = Paths::new(out);
    std::fs::create_dir_all(&paths.eval)
        .with_context(|| format!("{}: cannot create", paths.eval))?;
    let device = a.device.to_string();
    let dev = ["--device", device.as_str()];
    // Children use this process's worker count (`fiberflow --threads N quickstart`).
    let threads = rayon::current_num_threads().to_string();
    let mut plan = vec![("generate", generate_args(&a, &paths.data))];
    plan.extend(training_steps(&a, &paths, &dev));
    plan.extend(evaluation_steps(&paths, &dev));
    plan.push(("predict", vec![]));
    // Earlier runs' times, so a resumed run reports the whole work, not its own seconds.
    let earlier: Vec<Step> = read_json(&out.join("timings.json"), "").unwrap_or_default();
    let mut steps = Vec::new();
    let started = Instant::now();
    for (name, argv) in plan {
        // The test index is known only once the dataset exists.
        let argv = match name {
            "predict" => predict_args(&paths, &dev)?,
            _ => argv,
        };
        eprintln!("\n== quickstart: {name}");
        let t = Instant::now();
        let status = Command::new(&exe)
            .args(["--threads", &threads])
            .args(&argv)
            .status()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        if !status.success() {
            bail!(
                "quickstart step `{name}` failed ({status}); fix the cause and rerun: finished steps are kept"
            );
        }
        let before: f64 = earlier
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.seconds)
            .sum();
        steps.push(Step {
            name: name.to_string(),
            command: format!("fiberflow --threads {threads} {}", argv.join(" ")),
            seconds: before + t.elapsed().as_secs_f64(),
        });
        // After every step, so a run killed midway still counts what it did; steps this
        // run has not reached keep their earlier times.
        let pending = earlier
            .iter()
            .filter(|e| steps.iter().all(|s| s.name != e.name));
        let so_far: Vec<&Step> = steps.iter().chain(pending).collect();
        output::json(&out.join("timings.json"), &so_far)?;
    }
    let total = started.elapsed().as_secs_f64();
    write_report(out, &steps, (!earlier.is_empty()).then_some(total))?;
    println!(
        "quickstart done in {:.1} min: {}",
        total / 60.0,
        out.join("report.html").display()
    );
    Ok(())
}

/// `fiberflow generate` of the quickstart's dataset.
fn generate_args(a: &QuickstartArgs, data: &str) -> Vec<String> {
    let (samples, size, slices) = (
        a.samples.to_string(),
        a.size.to_string(),
        a.slices.to_string(),
    );
    let (pitch, seed) = (a.pitch_um.to_string(), a.seed.to_string());
    let mut argv = args(
        &[
            "generate",
            "--out",
            data,
            "--samples",
            &samples,
            "--size",
            &size,
            "--slices",
            &slices,
            "--pitch-um",
            &pitch,
            "--seed",
            &seed,
        ],
        &[],
    );
    if let Some(c) = &a.generator_config {
        argv.extend(["--config".to_string(), c.display().to_string()]);
    }
    argv
}

/// Both VAE stages and the diffusion model, each resuming its run.
fn training_steps(a: &QuickstartArgs, p: &Paths, dev: &[&str]) -> Vec<(&'static str, Vec<String>)> {
    let e = |i: usize| a.epochs[i].to_string();
    let (e1, e2, e3) = (e(0), e(1), e(2));
    let vae = |stage: &str, extra: &[&str], out: &str, epochs: &str| {
        let mut argv = vec!["train", "vae", "--stage", stage, "--dataset", &p.data];
        argv.extend(extra);
        argv.extend(["--out", out, "--epochs", epochs, "--resume"]);
        args(&argv, dev)
    };
    let diffusion = [
        "train",
        "diffusion",
        "--dataset",
        &p.data,
        "--vae",
        &p.vae2,
        "--out",
        &p.diffusion,
        "--epochs",
        &e3,
        "--resume",
    ];
    vec![
        ("train VAE stage 1", vae("1", &[], &p.vae1, &e1)),
        (
            "train VAE stage 2",
            vae("2", &["--stage1", &p.vae1], &p.vae2, &e2),
        ),
        ("train diffusion", args(&diffusion, dev)),
    ]
}

/// The model on the test split with its draws, and beside it the VAE alone, copy-2D and
/// the 3D solve of the slices, each into its JSON report under `eval/`.
fn evaluation_steps(p: &Paths, dev: &[&str]) -> Vec<(&'static str, Vec<String>)> {
    let json = |name: &str| format!("{}/{name}.json", p.eval);
    let score = |score: &str, name: &str, extra: &[&str]| {
        let report = json(name);
        let mut argv = vec!["evaluate"];
        if score != "solve3d" {
            argv.extend(["--model", &p.diffusion]);
        }
        argv.extend(["--dataset", &p.data]);
        if score != "model" {
            argv.extend(["--score", score]);
        }
        argv.extend(["--json", &report]);
        argv.extend(extra);
        // The 3D solve runs no network, so it takes no device.
        args(&argv, if score == "solve3d" { &[] } else { dev })
    };
    let csv = format!("{}/model.csv", p.eval);
    vec![
        (
            "evaluate model",
            score("model", "model", &["--csv", &csv, "--samples", DRAWS]),
        ),
        ("evaluate VAE only", score("vae", "vae_only", &[])),
        ("evaluate copy-2D baseline", score("copy2d", "copy2d", &[])),
        (
            "evaluate solve-from-slices baseline",
            score("solve3d", "solve3d", &[]),
        ),
    ]
}

/// `fiberflow predict` of the first test sample with the trained model.
fn predict_args(p: &Paths, dev: &[&str]) -> Result<Vec<String>> {
    let index = first_test_index(&p.data).context("the dataset has no test sample")?;
    Ok(args(
        &[
            "predict",
            "--model",
            &p.diffusion,
            "--dataset",
            &p.data,
            "--index",
            &index,
            "--samples",
            DRAWS,
            "--out",
            &p.predict,
        ],
        dev,
    ))
}

fn args(a: &[&str], extra: &[&str]) -> Vec<String> {
    a.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// The first sample of the test split, once the dataset exists.
fn first_test_index(data: &str) -> Option<String> {
    let splits: Value = read_json(&Path::new(data).join("splits.json"), "").ok()?;
    Some(splits["test"].get(0)?.as_u64()?.to_string())
}

/// The quickstart report in Markdown and HTML, with loss curves.
/// `resumed`: this run's own wall time when earlier runs did part of the work.
fn write_report(out: &Path, steps: &[Step], resumed: Option<f64>) -> Result<()> {
    let load = |p: &str| -> Result<Value> { Ok(read_json(&out.join(p), "")?) };
    for dir in ["vae-stage1", "vae-stage2", "diffusion"] {
        plot_run(&out.join(dir), &out.join(dir))?;
    }
    let mut md = String::new();
    writeln!(md, "# fiberflow quickstart report\n")?;
    let work: f64 = steps.iter().map(|s| s.seconds).sum();
    let runs = match resumed {
        Some(own) => format!(
            " over more than one run (the last, resumed, took {:.1} minutes)",
            own / 60.0
        ),
        None => ", from nothing".into(),
    };
    writeln!(
        md,
        "Everything below was produced by `fiberflow quickstart --out {}` in {:.1} minutes of steps on this machine ({} threads){runs}: a generated dataset, three trained networks, an evaluation on the test split and one prediction.\n",
        out.display(),
        work / 60.0,
        rayon::current_num_threads()
    )?;
    accuracy_section(&mut md, out)?;
    let summary = load("predict/summary.json")?;
    writeln!(md, "## One test sample\n")?;
    writeln!(
        md,
        "Permeability predicted {:.4e} m², true {:.4e} m². Posterior mean over the 8 mirror images (rows: truth, prediction, error, standard deviation of {DRAWS} draws); `predict/prediction.vti` opens in ParaView.\n",
        number(&summary, "k_pred_m2")?,
        number(&summary, "k_true_m2")?
    )?;
    writeln!(md, "![comparison](predict/comparison.png)\n")?;
    writeln!(md, "## Training\n")?;
    for (title, file) in [
        ("VAE stage 1", "vae-stage1"),
        ("VAE stage 2", "vae-stage2"),
        ("diffusion", "diffusion"),
    ] {
        writeln!(md, "![{title}: losses]({file}/loss.png)\n")?;
        writeln!(md, "![{title}: validation errors]({file}/errors.png)\n")?;
    }
    writeln!(md, "## Steps and timings\n")?;
    writeln!(md, "| step | wall time | command |\n|---|---|---|")?;
    for s in steps {
        writeln!(md, "| {} | {:.1} s | `{}` |", s.name, s.seconds, s.command)?;
    }
    output::text(&out.join("report.md"), &md)?;
    let mut html = String::from(
        "<!doctype html><meta charset=\"utf-8\"><title>fiberflow quickstart</title><style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}img{max-width:100%}</style>\n",
    );
    let parser = pulldown_cmark::Parser::new_ext(&md, pulldown_cmark::Options::ENABLE_TABLES);
    pulldown_cmark::html::push_html(&mut html, parser);
    output::text(&out.join("report.html"), &html)?;
    Ok(())
}

/// The report's table of every predictor's test errors and time per sample, with the
/// error-against-time plot.
fn accuracy_section(md: &mut String, out: &Path) -> Result<()> {
    let load = |p: &str| -> Result<Value> { Ok(read_json(&out.join(p), "")?) };
    writeln!(md, "## Test-split accuracy\n")?;
    writeln!(
        md,
        "Relative L2 errors ‖pred − true‖/‖true‖ over the fluid (lower is better), the true top-10 % magnitude IoU, the permeability error and the divergence relative to |u|/dx, with the wall time per sample on this machine. *Model*: E2D → latent diffusion → D3D, posterior mean over the 8 mirror images, its time including the 2D solves that give its input; *VAE only*: D3D(E3D(U)), the best the latent space allows (it needs the true 3D flow, so it has no cost to compare); *copy 2D*: U_2d as the 3D flow (vz = 0); *3D solve of the slices*: `fiberflow solve` of the sample's slices alone, the geometry between them interpolated — the physics the networks replace.\n"
    )?;
    writeln!(
        md,
        "| predictor | vx | vy | vz | total | IoU top-10 % | K error | div / (‖u‖/dx) | ref_accuracy | s / sample |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
    let solve = load("eval/solve3d.json")?;
    let t2d = number(&solve, "seconds_2d_solves_per_sample")?;
    let mut points = Vec::new();
    // What each row costs per sample: the model's own time plus the 2D solves of its input;
    // none for the VAE alone (it needs the truth); the 2D solves for copy-2D (its own time
    // is a copy); the whole solve for the baseline.
    for (name, file, cost) in [
        ("model", "eval/model.json", Cost::OwnPlus2d),
        ("VAE only", "eval/vae_only.json", Cost::None),
        ("copy 2D", "eval/copy2d.json", Cost::Solves2d),
        ("3D solve of the slices", "eval/solve3d.json", Cost::Own),
    ] {
        let r = load(file)?;
        let m = |k: &str| metric(&r, k).context(file);
        let seconds = match cost {
            Cost::OwnPlus2d => Some(number(&r, "seconds_per_sample")? + t2d),
            Cost::Own => Some(number(&r, "seconds_per_sample")?),
            Cost::Solves2d => Some(t2d),
            Cost::None => None,
        };
        if let Some(t) = seconds {
            points.push((name, t, m("rel_l2_w")?));
        }
        writeln!(
            md,
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:.3} | {:.4} | {} |",
            m("rel_l2_u")?,
            m("rel_l2_v")?,
            m("rel_l2_w")?,
            m("rel_l2_total")?,
            m("iou_top10")?,
            m("k_rel_err")?,
            m("div_rel_pred")?,
            m("ref_accuracy_score")?,
            seconds.map_or("–".into(), |t| format!("{t:.2}"))
        )?;
    }
    error_vs_time(&points, &out.join("eval/error_vs_time.png"))?;
    writeln!(
        md,
        "\nPer-sample values: `eval/model.csv`; everything, including the reference-exact `ref_` metrics: `eval/*.json`.\n\n![vz error against time per sample](eval/error_vs_time.png)\n"
    )?;
    Ok(())
}

/// How a report row's time per sample is counted.
enum Cost {
    OwnPlus2d,
    Own,
    Solves2d,
    None,
}

/// The vz error of each predictor against its time per sample, one marker each (no plot
/// when no row has both numbers).
fn error_vs_time(points: &[(&str, f64, f64)], path: &Path) -> Result<()> {
    let mut plot = LinePlot::new(
        "vz error against cost",
        "wall time per sample [s]",
        "relative L2 error of vz [-]",
    );
    let mut any = false;
    for &(name, t, e) in points {
        // A metric that is not finite (JSON null) cannot be placed; the table shows it.
        if t.is_finite() && e.is_finite() {
            plot = plot.with_series(Series::new(name, vec![(t, e)])?);
            any = true;
        }
    }
    if !any {
        return Ok(());
    }
    plot.write_png(path)
        .with_context(|| path.display().to_string())
}

/// The summary mean of one metric in an evaluation report; a metric that is missing is an
/// error (a renamed metric must not turn the report into NaNs), one without a finite
/// value (JSON null) shows as NaN.
fn metric(report: &Value, name: &str) -> Result<f64> {
    let entry = report["summary"]["metrics"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .with_context(|| format!("the evaluation has no metric {name}"))?;
    number(entry, "mean")
}

/// A numeric field of a JSON object; NaN for null, an error when absent.
fn number(v: &Value, key: &str) -> Result<f64> {
    match v.get(key) {
        Some(Value::Null) => Ok(f64::NAN),
        Some(x) => x
            .as_f64()
            .with_context(|| format!("field {key} is not a number")),
        None => bail!("no field {key}"),
    }
}
