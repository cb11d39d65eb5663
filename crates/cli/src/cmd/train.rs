//! `fiberflow train vae`: the two VAE stages, with resumable runs.

use crate::config_file;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use fiberflow_model::train::vae::{EpochRecord, Stage, TrainObserver, VaeTrainConfig, train_vae};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::ops::ControlFlow;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(subcommand)]
    what: TrainWhat,
}

#[derive(Subcommand, Debug)]
enum TrainWhat {
    /// Train the dual-branch VAE: stage 1 (E3D + D3D), then stage 2 (E2D + D2D).
    Vae(VaeArgs),
}

#[derive(Args, Debug)]
struct VaeArgs {
    /// 1: 3D branch on U; 2: 2D branch on U_2d against a frozen stage-1 run.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    stage: u8,
    #[arg(long)]
    dataset: PathBuf,
    /// Run folder (log.json, best_model.bpk, checkpoint/).
    #[arg(long)]
    out: PathBuf,
    /// Stage 2: the stage-1 run folder.
    #[arg(long)]
    stage1: Option<PathBuf>,
    /// Training config (TOML or JSON, fields of VaeTrainConfig).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the config's epoch count.
    #[arg(long)]
    epochs: Option<usize>,
    /// Overrides any config field: `--set lr=3e-4 --set vae.channels=[32,64,128]`.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    sets: Vec<String>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// `cpu`, or `cuda` / `cuda:N` in a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let TrainWhat::Vae(a) = a.what;
    let mut cfg: VaeTrainConfig = config_file::load_or_default(a.config.as_deref())?;
    if !a.sets.is_empty() {
        cfg = apply_sets(&cfg, &a.sets)?;
    }
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    let stage = if a.stage == 1 { Stage::One } else { Stage::Two };
    let mut bar = Bar(None);
    let device = fiberflow_model::device::select(&a.device)?;
    let log = train_vae(
        &device,
        stage,
        &a.dataset,
        a.stage1.as_deref(),
        &a.out,
        cfg,
        a.resume,
        &mut bar,
    )?;
    if let Some(b) = bar.0 {
        b.finish_and_clear();
    }
    match (log.best_epoch, log.history.last()) {
        (Some(best), Some(last)) => println!(
            "best epoch {best} (val loss {:.4e}); last epoch: {} -> {}",
            log.best_val_loss,
            summary(last),
            a.out.display()
        ),
        _ => bail!("no epoch was trained"),
    }
    Ok(())
}

/// Applies `field.path=value` overrides to a config through its JSON form, so every
/// field is reachable without a flag of its own. Values are JSON, or plain strings.
fn apply_sets(cfg: &VaeTrainConfig, sets: &[String]) -> Result<VaeTrainConfig> {
    let mut value = serde_json::to_value(cfg)?;
    for set in sets {
        let (path, raw) = set
            .split_once('=')
            .with_context(|| format!("--set {set}: expected FIELD=VALUE"))?;
        let new: Value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
        let mut slot = &mut value;
        for key in path.split('.') {
            slot = slot
                .get_mut(key)
                .with_context(|| format!("--set {set}: no config field `{path}`"))?;
        }
        *slot = new;
    }
    serde_json::from_value(value).context("--set gave a value of the wrong type")
}

fn summary(r: &EpochRecord) -> String {
    let e = &r.val_errors;
    format!(
        "val loss {:.4e}, relative L2 error vx {:.3} vy {:.3} vz {:.3}, vz ratio {:.3}",
        r.val["loss"], e.relative_l2[0], e.relative_l2[1], e.relative_l2[2], e.vz_ratio
    )
}

/// Progress bar over all batches of the run, with one line per finished epoch.
struct Bar(Option<ProgressBar>);

impl TrainObserver for Bar {
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

    fn epoch(&mut self, record: &EpochRecord) -> ControlFlow<()> {
        let line = format!("epoch {}: {}", record.epoch, summary(record));
        match &self.0 {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
        ControlFlow::Continue(())
    }
}
