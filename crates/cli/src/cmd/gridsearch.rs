//! `fiberflow gridsearch`: trains every combination of a grid of diffusion-trainer config
//! values (`crate::gridsearch`), in one process or one shard per process, each run into
//! `OUT/runs/<run-id>/` through `train_diffusion` itself, and ranks them by the decoded
//! velocity's validation error. Killed searches restart where they stopped: runs with a
//! results row are skipped, a run with a checkpoint but no row is resumed.

use crate::gridsearch::grid::{Grid, Run, cell, pending};
use crate::gridsearch::report;
use crate::gridsearch::results::{self, Appender, RESULTS_FILE, Row, Status};
use crate::{output, progress};
use anyhow::{Context, Result, bail};
use clap::Args;
use fiberflow_data::atomic::write_atomic;
use fiberflow_data::{Dataset, Progress, Shard};
use fiberflow_model::ModelError;
use fiberflow_model::device::DeviceList;
use fiberflow_model::latent::{DualVae, LatentCache, encode_dataset};
use fiberflow_model::run::checkpoint;
use fiberflow_model::train::diffusion::{
    DiffusionEpoch, DiffusionObserver, DiffusionRunLog, train_diffusion,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a training call ended: returned (a log or an error) or panicked.
type Outcome = std::thread::Result<Result<DiffusionRunLog, ModelError>>;

/// Run folders inside `--out`.
const RUNS_DIR: &str = "runs";
/// What the search is over; a restart must match it.
const GRID_FILE: &str = "grid.json";

#[derive(Args, Debug)]
pub struct GridsearchArgs {
    /// The grid (TOML or JSON): each config field of `train diffusion` to vary, by dotted
    /// path, with its list of values (`lr = [1e-3, 3e-4]`), and an optional `[base]` table
    /// of fixed overrides.
    #[arg(long)]
    grid: PathBuf,
    /// The dataset the VAE was trained on (its latent cache is made first if missing), or
    /// the URL of an archive of it (with --sha256).
    #[arg(long)]
    dataset: PathBuf,
    /// SHA-256 of the one `--dataset` given as an `https://` URL of a .tar, .zip
    /// or bundle (fetched into the user's cache, verified, unpacked); or write URL#sha256=HEX.
    #[arg(long)]
    sha256: Option<String>,

    /// A finished stage-2 VAE run folder.
    #[arg(long)]
    vae: PathBuf,
    /// Search folder: grid.json, results.csv, top10.csv, summary.txt, runs/<run-id>/.
    #[arg(long)]
    out: PathBuf,
    /// Train only the runs with index % n == i (one process per shard, same --out).
    #[arg(long, default_value = "0/1")]
    shard: Shard,
    /// Epochs of every run (overrides the grid's base).
    #[arg(long)]
    epochs: Option<usize>,
    /// `cpu`, `libtorch` or `libtorch-cuda:N` (a build by scripts/setup-libtorch.sh), or
    /// `cuda:N` (`--features cuda`); a list such as `libtorch-cuda:0,libtorch-cuda:1`
    /// trains each run data-parallel (needs accumulation ≥ the device count).
    #[arg(long, default_value = "cpu")]
    device: DeviceList,
}

pub fn run(mut a: GridsearchArgs) -> Result<()> {
    crate::remote::localise(&mut [&mut a.dataset], a.sha256.as_deref())?;
    let grid = Grid::load(&a.grid, a.epochs)?;
    let runs = grid.runs()?;
    let devices = a.device.open()?;
    let device = &devices[0];
    let vae = DualVae::load(&a.vae, device)?;
    let dataset = Dataset::open(&a.dataset)?;
    check_fit(&runs, &grid, &vae, &dataset)?;
    claim(&a, &grid, &runs)?;

    let header = results::header(&grid.paths());
    let done: HashSet<String> = results::read_all(&a.out, &header)?
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    let todo = pending(&runs, a.shard, &done);
    let mine = runs.iter().filter(|r| a.shard.contains(r.index)).count();
    eprintln!(
        "{} runs in the grid, {mine} in shard {}, {} of them already have results, {} to train",
        runs.len(),
        a.shard,
        mine - todo.len(),
        todo.len()
    );
    if !todo.is_empty() && LatentCache::open(&dataset, &vae)?.is_none() {
        // Encode once up front, so no run's wall time includes it.
        encode_dataset(&vae, &dataset, device, &mut progress::Bar::default())?;
    }
    drop(vae);

    let mut appender = Appender::open(&a.out.join(results::file_name(a.shard)), &header)?;
    let mut bar = RunBar::new(todo.len());
    for run in todo {
        bar.run = run.id.clone();
        let dir = a.out.join(RUNS_DIR).join(&run.id);
        // Per run, not per search: shards of one search share --out, never a run.
        let _lock = output::lock(&dir, "gridsearch")?;
        let resumed = checkpoint::existing_dir(&dir.join(checkpoint::CHECKPOINT_DIR)).is_some();
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let cfg = run.config.clone();
            // Always resumable: a run killed before its first checkpoint starts again.
            train_diffusion(&devices, &a.dataset, &a.vae, &dir, cfg, true, &mut bar)
        }));
        let row = result_row(run, resumed, started.elapsed().as_secs_f64(), outcome);
        let outcome = match row.status {
            Status::Ok => format!(
                "ok, best validation relative L2 {:.4}",
                row.best_val_error.unwrap_or(f64::NAN)
            ),
            Status::Failed => format!("FAILED: {}", row.error),
        };
        bar.line(format!(
            "run {} ({}): {outcome} ({:.1} s)",
            run.id,
            grid.describe(&run.values),
            row.wall_s
        ));
        appender.append(&row)?;
        bar.bar.inc(1);
    }
    bar.bar.finish_and_clear();
    drop(appender);

    let rows = write_reports(&a.out, &grid, &runs, &header)?;
    let failed = rows.iter().filter(|r| r.status == Status::Failed).count();
    print!(
        "{} of {} runs have results ({} ok, {failed} failed)",
        rows.len(),
        runs.len(),
        rows.len() - failed
    );
    match report::ranked(&rows).first() {
        Some(best) => println!(
            "; best {} (validation relative L2 {:.4}) -> {}",
            best.run_id,
            best.best_val_error.unwrap_or(f64::NAN),
            a.out.join("summary.txt").display()
        ),
        None => println!(),
    }
    Ok(())
}

/// Checks every run against the VAE's latent and the dataset's shape, as
/// `train_diffusion` will, so a misfit fails the search before anything trains.
fn check_fit(runs: &[Run], grid: &Grid, vae: &DualVae, dataset: &Dataset) -> Result<()> {
    let cz = vae.config.latent_channels;
    let f = vae.config.downsample_factor();
    let shape = dataset.manifest.header.shape;
    for run in runs {
        let mut cfg = run.config.clone();
        cfg.fit_to_latent(cz, f);
        cfg.validate()
            .and_then(|()| {
                cfg.unet.check_input([
                    1,
                    cfg.unet.in_channels,
                    shape.slices,
                    shape.height / f,
                    shape.width / f,
                ])
            })
            .and_then(|()| cfg.check_dataset(dataset))
            .with_context(|| {
                format!(
                    "grid run {} ({}) does not fit the VAE and dataset",
                    run.index,
                    grid.describe(&run.values)
                )
            })?;
    }
    Ok(())
}

/// Writes `grid.json` (the grid, dataset, VAE and run ids) into a new search folder, or
/// checks that an existing one holds the same search, so restarts and shards cannot mix
/// results of different grids.
fn claim(a: &GridsearchArgs, grid: &Grid, runs: &[Run]) -> Result<()> {
    let canonical = |p: &Path| {
        std::fs::canonicalize(p).with_context(|| format!("{}: cannot resolve", p.display()))
    };
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let claim = json!({
        "grid": grid,
        "dataset": canonical(&a.dataset)?,
        "vae": canonical(&a.vae)?,
        "runs": ids,
    });
    let path = a.out.join(GRID_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let found: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        let differs: Vec<&str> = ["grid", "dataset", "vae", "runs"]
            .into_iter()
            .filter(|k| found.get(k) != claim.get(k))
            .collect();
        if !differs.is_empty() {
            bail!(
                "{} holds another search (its {} differ); use a new --out",
                a.out.display(),
                differs.join(", ")
            );
        }
    } else {
        std::fs::create_dir_all(a.out.join(RUNS_DIR))
            .with_context(|| format!("{}: cannot create", a.out.display()))?;
        output::json(&path, &claim)?;
    }
    Ok(())
}

/// The results row of a run from how its `train_diffusion` call ended: a log, an error
/// or a panic (caught so that one bad run does not end the search).
fn result_row(run: &Run, resumed: bool, wall_s: f64, outcome: Outcome) -> Row {
    let mut row = Row {
        run_id: run.id.clone(),
        index: run.index,
        values: run.values.iter().map(cell).collect(),
        best_val_error: None,
        last_val_loss: None,
        best_epoch: None,
        wall_s,
        parameters: None,
        resumed,
        status: Status::Failed,
        error: String::new(),
    };
    match outcome {
        Ok(Ok(log)) => match (log.best_epoch, log.history.last()) {
            (Some(best), Some(last)) => {
                row.best_val_error = Some(log.best_val_error);
                row.last_val_loss = Some(last.val_loss);
                row.best_epoch = Some(best);
                row.parameters = Some(log.parameters);
                row.status = Status::Ok;
            }
            _ => row.error = "no epoch gave a finite validation error".into(),
        },
        Ok(Err(e)) => row.error = chain(&e),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown cause");
            row.error = format!("training panicked: {message}");
        }
    }
    row
}

/// An error and its causes on one line; a cause already in the message (an error that
/// shows its source and also returns it, like `ModelError::Data`) is not repeated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        cause = c.source();
    }
    out
}

/// Writes `top10.csv` and `summary.txt` from the rows of all results files, and once the
/// whole grid has rows the merged `results.csv` (by run index). Another shard may append
/// while this runs, so it repeats until no new row has appeared: whichever process writes
/// last has then seen every row.
fn write_reports(out: &Path, grid: &Grid, runs: &[Run], header: &[String]) -> Result<Vec<Row>> {
    let ids: HashSet<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let load = || -> Result<Vec<Row>> {
        let mut rows = results::read_all(out, header)?;
        rows.retain(|r| ids.contains(r.run_id.as_str()));
        rows.sort_by_key(|r| r.index);
        Ok(rows)
    };
    let mut rows = load()?;
    loop {
        write_atomic(&out.join("top10.csv"), &report::top(header, &rows))?;
        write_atomic(
            &out.join("summary.txt"),
            report::summary(grid, runs, &rows).as_bytes(),
        )?;
        if rows.len() == runs.len() {
            let all: Vec<&Row> = rows.iter().collect();
            write_atomic(&out.join(RESULTS_FILE), &results::table(header, &all))?;
        }
        let again = load()?;
        if again.len() == rows.len() {
            return Ok(rows);
        }
        rows = again;
    }
}

/// One bar over the runs of this process; the message follows the current run's batches.
struct RunBar {
    bar: ProgressBar,
    run: String,
}

impl RunBar {
    fn new(runs: usize) -> Self {
        let bar = ProgressBar::new(runs as u64).with_style(
            ProgressStyle::with_template(
                "runs [{bar:30}] {pos}/{len} ({elapsed_precise}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            bar,
            run: String::new(),
        }
    }

    /// A log line that also reaches non-terminal stderr (where the bar is hidden).
    fn line(&self, line: String) {
        self.bar.suspend(|| eprintln!("{line}"));
    }
}

/// The latent cache is encoded before the first run; nothing to show here.
impl Progress for RunBar {}

impl DiffusionObserver for RunBar {
    fn batch(&mut self, epoch: usize, batch: usize, batches: usize, loss: f64) {
        self.bar.set_message(format!(
            "{}: epoch {epoch}, batch {}/{batches}, loss {loss:.3e}",
            self.run,
            batch + 1
        ));
    }

    fn epoch(&mut self, r: &DiffusionEpoch) -> ControlFlow<()> {
        self.line(format!(
            "{} epoch {}: train loss {:.4e}, val loss {:.4e}, decoded relative L2 {:.4}",
            self.run, r.epoch, r.train_loss, r.val_loss, r.val_errors.relative_l2_total_normalised
        ));
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run0() -> Run {
        let grid = Grid::from_value(
            json!({"lr": [1e-3], "unet": {"attention": ["", "3..2"]}}),
            None,
        )
        .unwrap();
        grid.runs().unwrap().remove(1)
    }

    #[test]
    fn errors_and_panics_become_failed_rows() {
        let run = run0();
        let e = ModelError::Config("need lr > 0".into());
        let row = result_row(&run, true, 2.5, Ok(Err(e)));
        assert_eq!(row.status, Status::Failed);
        assert_eq!(row.error, "invalid model configuration: need lr > 0");
        assert_eq!((row.index, row.wall_s, row.resumed), (1, 2.5, true));
        assert_eq!(row.values, ["0.001", "3..2"]);
        assert_eq!(row.best_val_error, None);
        let panic = catch_unwind(|| -> Result<DiffusionRunLog, ModelError> {
            std::panic::panic_any(format!("shape mismatch {}", 3))
        });
        let row = result_row(&run, false, 0.0, panic);
        assert_eq!(row.error, "training panicked: shape mismatch 3");
        let row = result_row(&run, false, 0.0, Err(Box::new("static")));
        assert_eq!(row.error, "training panicked: static");
    }

    #[test]
    fn chains_join_the_causes_once() {
        let io = || std::io::Error::other("disk full");
        assert_eq!(chain(&Wrapper(io(), false)), "cannot write: disk full");
        assert_eq!(chain(&Wrapper(io(), true)), "cannot write (disk full)");
    }

    /// An error with a source, shown in its own message or not.
    #[derive(Debug)]
    struct Wrapper(std::io::Error, bool);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.1 {
                true => write!(f, "cannot write ({})", self.0),
                false => f.write_str("cannot write"),
            }
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
