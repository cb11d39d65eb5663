//! `fiberflow train vae|diffusion|refiner`: the two VAE stages, the latent predictor and
//! the full-resolution refiner, with resumable runs.

use crate::config_file;
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use fiberflow_data::Progress;
use fiberflow_data::lock::FolderLock;
use fiberflow_model::device::{Device, DeviceList};
use fiberflow_model::metrics::FieldErrors;
use fiberflow_model::train::diffusion::{
    DiffusionEpoch, DiffusionObserver, DiffusionTrainConfig, train_diffusion,
};
use fiberflow_model::train::refine::{
    RefineEpoch, RefineObserver, RefineTrainConfig, train_refiner,
};
use fiberflow_model::train::vae::{EpochRecord, Stage, TrainObserver, VaeTrainConfig, train_vae};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// What a training run writes into its folder (`plot` adds the PNGs): the only entries
/// `--force` deletes.
const RUN_FILES: &[&str] = &[
    "log.json",
    "best_model.bpk",
    "best_model.tmp.bpk",
    "checkpoint",
    "checkpoint.old",
    "checkpoint.tmp",
    "loss.png",
    "errors.png",
    "physics.png",
    "estimates",
];

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(subcommand)]
    what: TrainWhat,
}

#[derive(Subcommand, Debug)]
enum TrainWhat {
    /// Train the dual-branch VAE: stage 1 (E3D + D3D), then stage 2 (E2D + D2D).
    Vae(VaeArgs),
    /// Train the latent diffusion denoiser (or, with `--set predictor=direct
    /// --set unet.time_conditioned=false`, the direct latent conditioner) on the latent
    /// cache of a stage-2 VAE run.
    Diffusion(DiffusionArgs),
    /// Train the full-resolution refiner of a trained model's point prediction, on that
    /// model's own training split (its estimates are computed once and cached in --out).
    /// The run then predicts as the refined model: pass it as --model, or export it.
    Refiner(RefinerArgs),
}

/// Options every training command shares.
#[derive(Args, Debug)]
struct RunArgs {
    /// Dataset folder, or the URL of an archive of one (with --sha256).
    #[arg(long)]
    dataset: PathBuf,
    /// SHA-256 of the one `--dataset` given as an `https://` URL of a .tar, .zip
    /// or bundle (fetched into the user's cache, verified, unpacked); or write URL#sha256=HEX.
    #[arg(long)]
    sha256: Option<String>,
    /// Run folder (log.json, best_model.bpk, checkpoint/).
    #[arg(long)]
    out: PathBuf,
    /// Training config (TOML or JSON; the fields of the run's config in log.json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the config's epoch count.
    #[arg(long)]
    epochs: Option<usize>,
    /// Overrides any config field: `--set lr=3e-4 --set vae.channels=[64]`.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    sets: Vec<String>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace whatever --out holds, a finished run included (without it, a folder that
    /// holds any file of a run is refused).
    #[arg(long)]
    force: bool,
    /// `cpu`, `libtorch` or `libtorch-cuda:N` (a build by scripts/setup-libtorch.sh), or
    /// `cuda:N` (`--features cuda`); a list such as `libtorch-cuda:0,libtorch-cuda:1`
    /// trains data-parallel (needs accumulation ≥ the device count).
    #[arg(long, default_value = "cpu")]
    device: DeviceList,
}

impl RunArgs {
    /// The single device of a trainer that does not train data-parallel.
    fn one_device(&self, what: &str) -> Result<Device> {
        match self.device.specs() {
            [one] => Ok(one.open()?),
            _ => bail!(
                "{what} trains on one device; --device {} names several",
                self.device
            ),
        }
    }

    /// Locks --out for this run and, with --force, empties it, but only when it holds
    /// nothing but a run's files and none of the run's inputs: a mistyped --out must
    /// not cost a dataset.
    fn claim_out(&self, command: &str, inputs: &[&Path]) -> Result<FolderLock> {
        let lock = crate::output::lock(&self.out, command)?;
        if !self.force {
            return Ok(lock);
        }
        let out = std::fs::canonicalize(&self.out)?;
        if let Some(input) = inputs
            .iter()
            .filter_map(|i| std::fs::canonicalize(i).ok())
            .find(|i| i.starts_with(&out))
        {
            bail!(
                "--out {} holds the input {}; --force would delete it",
                self.out.display(),
                input.display()
            );
        }
        if let Some(name) = crate::output::foreign_entry(&self.out, RUN_FILES) {
            bail!(
                "{} holds `{name}`, which no training run writes; --force only replaces a run folder",
                self.out.display()
            );
        }
        crate::output::clear(&lock)?;
        Ok(lock)
    }

    /// The config from the file (or the defaults) with every override applied.
    fn config<T: Serialize + DeserializeOwned + Default>(
        &self,
        epochs: impl FnOnce(&mut T, usize),
    ) -> Result<T> {
        let mut cfg: T = config_file::load_or_default(self.config.as_deref())?;
        if !self.sets.is_empty() {
            cfg = crate::overrides::apply(&cfg, &self.sets)?;
        }
        if let Some(e) = self.epochs {
            epochs(&mut cfg, e);
        }
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
struct DiffusionArgs {
    /// A finished stage-2 VAE run folder (it names its stage-1 run).
    #[arg(long)]
    vae: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
struct RefinerArgs {
    /// The model to refine: a diffusion or direct run folder, or a bundle (export needs
    /// the run folder).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
struct VaeArgs {
    /// 1: 3D branch on U; 2: 2D branch on U_2d against a frozen stage-1 run.
    #[arg(long)]
    stage: Stage,
    /// Stage 2: the stage-1 run folder.
    #[arg(long)]
    stage1: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(a: TrainArgs) -> Result<()> {
    match a.what {
        TrainWhat::Vae(a) => vae(a),
        TrainWhat::Diffusion(a) => diffusion(a),
        TrainWhat::Refiner(a) => refiner(a),
    }
}

fn vae(mut a: VaeArgs) -> Result<()> {
    crate::remote::localise(&mut [&mut a.run.dataset], a.run.sha256.as_deref())?;
    let cfg: VaeTrainConfig = a.run.config(|c: &mut VaeTrainConfig, e| c.epochs = e)?;
    let inputs: Vec<&Path> = std::iter::once(a.run.dataset.as_path())
        .chain(a.stage1.as_deref())
        .collect();
    let _lock = a.run.claim_out("train vae", &inputs)?;
    let mut bar = Bar(None, Default::default());
    let devices = a.run.device.open()?;
    let log = train_vae(
        &devices,
        a.stage,
        &a.run.dataset,
        a.stage1.as_deref(),
        &a.run.out,
        cfg,
        a.run.resume,
        &mut bar,
    )?;
    let line = log.best_epoch.zip(log.history.last()).map(|(best, last)| {
        format!(
            "best epoch {best} (val loss {:.4e}); last epoch: {}",
            log.best_val_loss,
            summary(last)
        )
    });
    finish(bar, line, &a.run.out)
}

fn diffusion(mut a: DiffusionArgs) -> Result<()> {
    crate::remote::localise(&mut [&mut a.run.dataset], a.run.sha256.as_deref())?;
    let cfg: DiffusionTrainConfig = a
        .run
        .config(|c: &mut DiffusionTrainConfig, e| c.epochs = e)?;
    let devices = a.run.device.open()?;
    let _lock = a
        .run
        .claim_out("train diffusion", &[&a.run.dataset, &a.vae])?;
    let mut bar = Bar(None, Default::default());
    let log = train_diffusion(
        &devices,
        &a.run.dataset,
        &a.vae,
        &a.run.out,
        cfg,
        a.run.resume,
        &mut bar,
    )?;
    let line = log.best_epoch.zip(log.history.last()).map(|(best, last)| {
        format!(
            "best epoch {best} (val relative L2 {:.4}); last epoch: {}",
            log.best_val_error,
            diffusion_summary(last)
        )
    });
    finish(bar, line, &a.run.out)
}

fn refiner(mut a: RefinerArgs) -> Result<()> {
    crate::remote::localise(&mut [&mut a.run.dataset], a.run.sha256.as_deref())?;
    let cfg: RefineTrainConfig = a.run.config(|c: &mut RefineTrainConfig, e| c.epochs = e)?;
    let device = a.run.one_device("train refiner")?;
    let _lock = a
        .run
        .claim_out("train refiner", &[&a.run.dataset, &a.model])?;
    let mut bar = Bar(None, Default::default());
    let log = train_refiner(
        &device,
        &a.model,
        &a.run.dataset,
        &a.run.out,
        cfg,
        a.run.resume,
        &mut bar,
    )?;
    let line = log.best_epoch.zip(log.history.last()).map(|(best, last)| {
        // The best epoch's error is what the run selects on: balanced, a fraction of the
        // unrefined error; otherwise a relative L2 error beside the unrefined one.
        let selected = match log.config.balance_components {
            true => format!("val error {:.4} of the unrefined", log.best_val_error),
            false => format!(
                "val relative L2 {:.4}, unrefined {:.4}",
                log.best_val_error, log.input_val_errors.relative_l2_total_normalised
            ),
        };
        format!(
            "best epoch {best} ({selected}); last epoch: {}",
            refiner_summary(last)
        )
    });
    finish(bar, line, &a.run.out)
}

/// Clears the run's bar and prints its last line (best and last epoch) with the run
/// folder; a run that trained no epoch is an error.
fn finish(bar: Bar, line: Option<String>, out: &Path) -> Result<()> {
    if let Some(b) = bar.0 {
        b.finish_and_clear();
    }
    match line {
        Some(line) => println!("{line} -> {}", out.display()),
        None => bail!("no epoch was trained"),
    }
    Ok(())
}

fn summary(r: &EpochRecord) -> String {
    format!("val loss {:.4e}, {}", r.val["loss"], errors(&r.val_errors))
}

fn diffusion_summary(r: &DiffusionEpoch) -> String {
    format!(
        "train loss {:.4e}, val loss {:.4e}, decoded {}",
        r.train_loss,
        r.val_loss,
        errors(&r.val_errors)
    )
}

fn refiner_summary(r: &RefineEpoch) -> String {
    format!(
        "train loss {:.4e}, val loss {:.4e}, refined {}",
        r.train_loss,
        r.val_loss,
        errors(&r.val_errors)
    )
}

fn errors(e: &FieldErrors) -> String {
    format!(
        "relative L2 error vx {:.3} vy {:.3} vz {:.3}, vz ratio {:.3}",
        e.relative_l2[0], e.relative_l2[1], e.relative_l2[2], e.vz_ratio
    )
}

/// Progress bar over all batches of the run, with one line per finished epoch, and the
/// bar of a cache being filled.
struct Bar(Option<ProgressBar>, crate::progress::Bar);

impl Bar {
    fn batch(&mut self, epoch: usize, batch: usize, batches: usize, loss: f64) {
        let bar = self.0.get_or_insert_with(|| {
            ProgressBar::new(batches as u64).with_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} batches, loss {msg} ({elapsed_precise}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        });
        bar.set_prefix(epoch.to_string());
        bar.set_position(batch as u64 + 1);
        bar.set_message(format!("{loss:.4e}"));
    }

    fn line(&self, line: String) -> ControlFlow<()> {
        match &self.0 {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
        ControlFlow::Continue(())
    }
}

impl TrainObserver for Bar {
    fn batch(&mut self, epoch: usize, batch: usize, batches: usize, loss: f64) {
        Bar::batch(self, epoch, batch, batches, loss);
    }

    fn epoch(&mut self, record: &EpochRecord) -> ControlFlow<()> {
        self.line(format!("epoch {}: {}", record.epoch, summary(record)))
    }
}

/// Caches filled before training (latents, the refiner's estimates) get a bar of their own.
impl Progress for Bar {
    fn start(&mut self, task: &str, total: u64) {
        self.1.start(task, total);
    }

    fn step(&mut self) {
        self.1.step();
    }

    fn finish(&mut self) {
        self.1.finish();
    }
}

impl RefineObserver for Bar {
    fn batch(&mut self, epoch: usize, batch: usize, batches: usize, loss: f64) {
        Bar::batch(self, epoch, batch, batches, loss);
    }

    fn epoch(&mut self, record: &RefineEpoch) -> ControlFlow<()> {
        self.line(format!(
            "epoch {}: {}",
            record.epoch,
            refiner_summary(record)
        ))
    }
}

impl DiffusionObserver for Bar {
    fn batch(&mut self, epoch: usize, batch: usize, batches: usize, loss: f64) {
        Bar::batch(self, epoch, batch, batches, loss);
    }

    fn epoch(&mut self, record: &DiffusionEpoch) -> ControlFlow<()> {
        self.line(format!(
            "epoch {}: {}",
            record.epoch,
            diffusion_summary(record)
        ))
    }
}
