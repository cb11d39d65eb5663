//! `fiberflow generate`: make a dataset of (microstructure, 2D flow, 3D flow) samples.
//! Each sample is written as soon as it is solved; a rerun with the same arguments skips
//! finished samples, so a killed run loses at most the samples in flight.

use crate::config_file;
use crate::progress::Bar;
use anyhow::{Context, Result};
use clap::Args;
use fiberflow_data::generate::{GeneratorConfig, MANIFEST_BYTES_PER_SAMPLE, generate_sample};
use fiberflow_data::{DatasetInfo, DatasetWriter, Shard, SplitMode, Splits};
use fiberflow_geometry::budget;
use fiberflow_geometry::layout::SliceGrid;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Dataset folder (created, or resumed when it holds the same configuration).
    #[arg(long)]
    out: PathBuf,
    /// Number of samples in the whole dataset (all shards together).
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Pixels along x and y; 64 is the fast default, 256 the reference resolution.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Slices along z.
    #[arg(long, default_value_t = 11)]
    slices: usize,
    /// Slice pitch, µm.
    #[arg(long, default_value_t = 5.0)]
    pitch_um: f64,
    /// Base seed; sample i is a function of (seed, i) only.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Generator config (TOML or JSON, fields of GeneratorConfig).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Make only the samples with index % n == i (e.g. one Slurm array task each); join
    /// the shard folders with `fiberflow dataset merge`.
    #[arg(long)]
    shard: Option<Shard>,
    /// Split written when the dataset is complete: `fiberflow` or `reference`.
    #[arg(long, default_value = "fiberflow")]
    split_mode: SplitMode,
}

/// The generator config and grid of `a`, every argument and resource checked before any
/// sample is drawn.
fn checked_inputs(a: &GenerateArgs) -> Result<(GeneratorConfig, SliceGrid)> {
    let cfg: GeneratorConfig = config_file::load_or_default(a.config.as_deref())?;
    cfg.validate().with_context(|| match &a.config {
        Some(path) => format!("{}: invalid generator config", path.display()),
        None => "invalid generator config".into(),
    })?;
    anyhow::ensure!(
        a.samples >= 2,
        "--samples must be at least 2 so that the training split (70 %) is not empty"
    );
    let grid = super::geometry::checked_grid(a.size, a.slices, a.pitch_um)?;
    cfg.check_grid(&grid)?;
    let workers = rayon::current_num_threads().min(a.samples) as u128;
    budget::check(
        format!(
            "making {workers} samples of {}×{}×{} at a time (each with its 3D lattice)",
            a.slices, a.size, a.size
        ),
        cfg.sample_bytes(&grid).and_then(|b| b.checked_mul(workers)),
    )?;
    budget::check(
        format!("the manifest of {} samples", a.samples),
        (a.samples as u128).checked_mul(MANIFEST_BYTES_PER_SAMPLE),
    )?;
    if Splits::counts(a.samples)[1] == 0 {
        eprintln!(
            "warning: {} samples leave the validation split (15 %) empty, and training needs one; generate at least 7",
            a.samples
        );
    }
    Ok((cfg, grid))
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let (cfg, grid) = checked_inputs(&a)?;
    let shard = a.shard.unwrap_or(Shard::ALL);
    let _lock = crate::output::lock(&a.out, "generate")?;
    let writer = DatasetWriter::create_or_resume(&a.out, cfg.header(&grid, a.seed))
        .with_context(|| format!("{}: cannot open the dataset", a.out.display()))?;
    let mine: Vec<usize> = (0..a.samples).filter(|&i| shard.contains(i)).collect();
    let pending: Vec<usize> = mine
        .iter()
        .copied()
        .filter(|&i| !writer.is_done(i))
        .collect();
    let bar = ProgressBar::new(mine.len() as u64).with_style(ProgressStyle::with_template(
        "generate [{bar:30}] {pos}/{len} samples {elapsed_precise} eta {eta} {msg}",
    )?);
    bar.set_position((mine.len() - pending.len()) as u64);
    if pending.len() < mine.len() {
        // `suspend` + eprintln also reaches logs when stderr is not a terminal.
        let done = mine.len() - pending.len();
        bar.suspend(|| eprintln!("resuming: {done} of {} samples already done", mine.len()));
    }
    let lines = crate::progress::LogLines::new("generate", mine.len(), mine.len() - pending.len());
    let unconverged = AtomicUsize::new(0);
    pending.par_iter().try_for_each(|&i| -> Result<()> {
        let (sample, record) = generate_sample(&cfg, &grid, a.seed, i)?;
        if !record.converged {
            unconverged.fetch_add(1, Ordering::Relaxed);
            bar.suspend(|| {
                eprintln!("warning: sample {i} did not converge (kept, marked converged=false)")
            });
        }
        let blocked = &record.extra["solve"]["blocked_slices"];
        if blocked.is_array() {
            bar.suspend(|| {
                eprintln!(
                    "warning: sample {i}: slice(s) {blocked} do not connect along x on their own (its last packing attempt); their 2D flow is zero, the 3D flow crosses them through z"
                )
            });
        }
        bar.set_message(format!("last K₃D {:.3e} m²", record.k_3d_m2));
        writer.write(i, &sample, record)?;
        bar.inc(1);
        lines.done_one();
        Ok(())
    })?;
    bar.finish_and_clear();
    let n_bad = unconverged.into_inner();
    if n_bad > 0 {
        eprintln!("warning: {n_bad} samples did not converge; see `converged` in dataset.json");
    }
    if shard.count > 1 {
        println!(
            "shard {}/{} complete ({} samples) in {}; join all shards with `fiberflow dataset merge SHARD_DIR... --out DIR --samples {}`",
            shard.index,
            shard.count,
            mine.len(),
            a.out.display(),
            a.samples
        );
        return Ok(());
    }
    let dataset = writer.finalize(a.samples, a.split_mode, &mut Bar::default())?;
    println!("{}", DatasetInfo::gather(&dataset)?);
    Ok(())
}
