//! `fiberflow model`: model bundles — a trained run as one file that can be handed on or
//! shipped (`export`), what a bundle says about itself (`info`, with `--check` to
//! reproduce its card's errors on the test samples it carries), and its runs as run
//! folders again (`unpack`).

use crate::output;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use fiberflow_data::json::read_json;
use fiberflow_model::bundle::{Bundle, Card, Evaluation, ExportInfo, export};
use fiberflow_model::device::DeviceSpec;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ModelArgs {
    #[command(subcommand)]
    what: ModelWhat,
}

#[derive(Subcommand, Debug)]
enum ModelWhat {
    /// Write a diffusion or direct run (or a refiner run, with the run it refines), its
    /// VAE, a few test samples and a card (training data, commands, wall times, scores)
    /// into one bundle file.
    Export(ExportArgs),
    /// Print a bundle's card (default: the built-in model's).
    Info(InfoArgs),
    /// Write a bundle's runs (default: the built-in model's) as run folders that load on
    /// their own, to train on (`train refiner --model OUT/predictor`) or export again.
    Unpack(UnpackArgs),
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// A finished diffusion, direct or refiner run folder.
    run: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// JSON reports of `fiberflow evaluate` to record, as LABEL=PATH or PATH (labelled
    /// `model`, `vae`, `copy2d` or `solve3d` from what was scored).
    #[arg(long = "evaluation")]
    evaluations: Vec<String>,
    /// A command that trained or scored the model, recorded verbatim (repeatable).
    #[arg(long = "command")]
    commands: Vec<String>,
    /// The fiberflow commit that generated the training data.
    #[arg(long)]
    data_commit: Option<String>,
    /// The training data, if it moved since the run was trained.
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Test samples shipped in the bundle for `model info --check`.
    #[arg(long, default_value_t = 2)]
    check_samples: usize,
    /// Draws averaged per check sample (diffusion models).
    #[arg(long, default_value_t = 2)]
    check_draws: usize,
    /// `cpu`, `libtorch` or `libtorch-cuda:N` (a build by scripts/setup-libtorch.sh), or
    /// `cuda:N` (`--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

#[derive(Args, Debug)]
struct InfoArgs {
    /// A bundle file; the built-in model's when absent.
    bundle: Option<PathBuf>,
    /// Print the card as JSON.
    #[arg(long)]
    json: bool,
    /// Predict the bundle's test samples again and compare with the card's errors.
    #[arg(long)]
    check: bool,
    /// Largest accepted difference from the card's error, relative (with --check).
    #[arg(long, default_value_t = 0.02)]
    tolerance: f64,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

#[derive(Args, Debug)]
struct UnpackArgs {
    /// A bundle file; the built-in model's when absent.
    bundle: Option<PathBuf>,
    /// A new or empty folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ModelArgs) -> Result<()> {
    match a.what {
        ModelWhat::Export(a) => run_export(a),
        ModelWhat::Info(a) => run_info(a),
        ModelWhat::Unpack(a) => run_unpack(a),
    }
}

/// The bundle at `path`, or the built-in one.
fn open_bundle(path: Option<&Path>) -> Result<Bundle> {
    Ok(match path {
        Some(path) => Bundle::open(path)?,
        None => Bundle::builtin()?.context("this build of fiberflow has no built-in model")?,
    })
}

fn run_unpack(a: UnpackArgs) -> Result<()> {
    let bundle = open_bundle(a.bundle.as_deref())?;
    let runs = bundle.unpack(&a.out)?;
    println!("unpacked {} into {}", bundle.origin, a.out.display());
    println!(
        "  latent predictor (unrefined): {}",
        runs.predictor.display()
    );
    if let Some(refiner) = &runs.refiner {
        println!("  refined model: {}", refiner.display());
    }
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<()> {
    output::prepare_file(&a.out)?;
    let info = ExportInfo {
        commands: a.commands,
        evaluations: a
            .evaluations
            .iter()
            .map(|spec| evaluation(spec))
            .collect::<Result<_>>()?,
        data_commit: a.data_commit,
        dataset: a.dataset,
        check_samples: a.check_samples,
        check_draws: a.check_draws,
    };
    let device = a.device.open()?;
    let card = export(&a.run, &a.out, &info, &device)?;
    let bytes = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.1} MB): {}",
        a.out.display(),
        bytes as f64 / 1e6,
        card.summary()
    );
    Ok(())
}

/// An `evaluate` report as a card entry.
fn evaluation(spec: &str) -> Result<Evaluation> {
    let (label, path) = match spec.split_once('=') {
        Some((label, path)) if !label.contains('/') => (Some(label.to_string()), path),
        _ => (None, spec),
    };
    let path = Path::new(path);
    let report: serde_json::Value = read_json(path, "pass a JSON report of fiberflow evaluate")?;
    let mode = report["mode"]
        .as_str()
        .with_context(|| format!("{}: not an evaluate report (no mode)", path.display()))?;
    let label = label.unwrap_or_else(|| match mode {
        "vae_only_sanity" => "vae".into(),
        m => m.strip_prefix("baseline_").unwrap_or(m).into(),
    });
    let metric = |name: &str| -> Result<f64> {
        report["summary"]["metrics"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == name))
            .and_then(|m| m["mean"].as_f64())
            .with_context(|| format!("{}: no {name} in its summary", path.display()))
    };
    Ok(Evaluation {
        label,
        split: report["args"]["split"]
            .as_str()
            .unwrap_or("?")
            .to_lowercase(),
        samples: report["per_sample"].as_array().map_or(0, Vec::len),
        relative_l2: [
            metric("rel_l2_u")?,
            metric("rel_l2_v")?,
            metric("rel_l2_w")?,
        ],
        seconds_per_sample: report["seconds_per_sample"].as_f64().unwrap_or(f64::NAN),
    })
}

fn run_info(a: InfoArgs) -> Result<()> {
    let bundle = open_bundle(a.bundle.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&bundle.card)?);
    } else {
        print_card(&bundle.origin, &bundle.card);
    }
    if a.check {
        let device = a.device.open()?;
        let model = bundle.load(&device)?;
        let measured = bundle.check(&model, &device)?;
        let mut worst: f64 = 0.0;
        for (c, now) in bundle.card.check.iter().zip(&measured) {
            for (now, then) in now.iter().zip(c.relative_l2) {
                let rel = (now - then).abs() / then.max(1e-12);
                // A non-finite error fails the check instead of vanishing in the max.
                worst = if rel.is_finite() {
                    worst.max(rel)
                } else {
                    f64::INFINITY
                };
            }
            println!(
                "check sample {}: vx {:.4} vy {:.4} vz {:.4} (card {:.4} {:.4} {:.4})",
                c.dataset_index,
                now[0],
                now[1],
                now[2],
                c.relative_l2[0],
                c.relative_l2[1],
                c.relative_l2[2]
            );
        }
        if worst > a.tolerance {
            bail!(
                "{} does not reproduce its card: errors differ by up to {:.1} % (tolerance {:.1} %)",
                bundle.origin,
                100.0 * worst,
                100.0 * a.tolerance
            );
        }
        println!("reproduces its card within {:.1} %", 100.0 * worst);
    }
    Ok(())
}

fn print_card(origin: &str, card: &Card) {
    println!("{origin}: {}", card.summary());
    let d = &card.data;
    let generated = d.generated();
    println!(
        "training data: {} samples ({} train, {} test), seed {}, generated by fiberflow commit {}, manifest {}",
        d.samples,
        d.train_samples,
        d.test_samples,
        generated
            .as_ref()
            .map_or("-".into(), |g| g.seed.to_string()),
        d.commit.as_deref().unwrap_or("unknown"),
        d.manifest_sha256.chars().take(16).collect::<String>()
    );
    match &generated {
        Some(g) => println!(
            "generator: {}",
            serde_json::to_string(&g.config).unwrap_or_default()
        ),
        None => println!("generator: {}", d.generator),
    }
    for r in &card.training {
        println!(
            "  {:<24} {:>4} epochs (best {}), {:>7.1} min, {} parameters",
            r.role,
            r.epochs,
            r.best_epoch.map_or("-".into(), |e| e.to_string()),
            r.seconds / 60.0,
            r.parameters
        );
    }
    if !card.evaluations.is_empty() {
        println!("relative L2 error (mean over samples):");
        for e in &card.evaluations {
            let [x, y, z] = e.relative_l2;
            println!(
                "  {:<10} {} split, {:>4} samples: vx {x:.3} vy {y:.3} vz {z:.3}, {:.3} s/sample",
                e.label, e.split, e.samples, e.seconds_per_sample
            );
        }
    }
    for c in &card.commands {
        println!("  $ {c}");
    }
}
