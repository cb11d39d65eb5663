//! `fiberflow dataset`: import the reference data, export to NumPy or the reference's
//! `.pt` layout, inspect, merge
//! shards, and (re)write the split and the train-only statistics of a dataset.

use std::path::{Path, PathBuf};

use crate::progress::Bar;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use fiberflow_data::statistics::STATISTICS_FILE;
use fiberflow_data::{
    Dataset, DatasetInfo, Manifest, SplitMode, Splits, Statistics, Subset, export_npy,
    export_reference, import_reference, merge,
};

#[derive(Args, Debug)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(Subcommand, Debug)]
enum DatasetCommand {
    /// Import the reference dataset (SRC/x/{domain,U_2d,U,p,dxyz}.pt) with its exact split.
    ImportReference {
        /// Directory holding `x/` (or `x/` itself).
        src: PathBuf,
        /// New dataset directory (re-running resumes an interrupted import).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write samples as .npy files with a leading sample axis (plus indices.npy), or as the
    /// reference PyTorch project's `x/*.pt` files (`--format reference`).
    Export {
        dir: PathBuf,
        /// `npy`, or `reference`: x/{domain,U_2d,U,p,dxyz}.pt and statistics.json, ordered
        /// so the reference's own split selects this dataset's train/val/test samples.
        #[arg(long, default_value = "npy", value_parser = ["npy", "reference"])]
        format: String,
        #[arg(long)]
        out: PathBuf,
        /// Only this subset (train, val or test), in split order (`npy` only: the
        /// reference's files hold every sample and its split picks the subsets).
        #[arg(long)]
        split: Option<Subset>,
    },
    /// Summarise a dataset: shapes, split sizes, porosity and K ranges, statistics.
    Info {
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Join shard directories written with `--shard i/n` into one dataset.
    Merge {
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Number of samples expected (otherwise the highest index found + 1).
        #[arg(long)]
        samples: Option<usize>,
    },
    /// Compute statistics.json from the training split (written once; --force recomputes).
    Stats {
        dir: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Write splits.json (written once; --force replaces it and makes statistics stale).
    Split {
        dir: PathBuf,
        /// `fiberflow` (ChaCha8, sorted lists) or `reference` (the reference's Python shuffle).
        #[arg(long, default_value = "fiberflow")]
        mode: SplitMode,
        #[arg(long)]
        force: bool,
    },
}

pub fn run(args: DatasetArgs) -> Result<()> {
    let mut bar = Bar::default();
    match args.command {
        DatasetCommand::ImportReference { src, out } => {
            let _lock = crate::output::lock(&out, "dataset import-reference")?;
            let dataset = import_reference(&src, &out, &mut bar)?;
            println!("imported {} samples into {}", dataset.len(), out.display());
        }
        DatasetCommand::Export {
            dir,
            format,
            out,
            split,
        } => export(&dir, &format, &out, split, &mut bar)?,
        DatasetCommand::Info { dir, json } => {
            let info = DatasetInfo::gather(&Dataset::open(&dir)?)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).context("cannot serialise the summary")?
                );
            } else {
                println!("{info}");
            }
        }
        DatasetCommand::Merge {
            shards,
            out,
            samples,
        } => {
            let _lock = crate::output::lock(&out, "dataset merge")?;
            let dataset = merge(&shards, &out, samples, &mut bar)?;
            println!(
                "merged {} shards into {} ({} samples)",
                shards.len(),
                out.display(),
                dataset.len()
            );
        }
        DatasetCommand::Stats { dir, force } => {
            let dataset = Dataset::open(&dir)?;
            if !force && dir.join(STATISTICS_FILE).exists() {
                Statistics::load(&dataset)?;
                println!(
                    "{} is up to date (use --force to recompute)",
                    dir.join(STATISTICS_FILE).display()
                );
            } else {
                let _lock = crate::output::lock(&dir, "dataset stats")?;
                let stats = Statistics::compute(&dataset, &mut bar)?;
                stats.save(&dir, force)?;
                println!(
                    "wrote {} from {} training samples",
                    dir.join(STATISTICS_FILE).display(),
                    stats.fingerprint.n_train
                );
            }
        }
        DatasetCommand::Split { dir, mode, force } => split(&dir, mode, force)?,
    }
    Ok(())
}

/// `dataset export`: the reference's `.pt` layout or NumPy files.
fn export(
    dir: &Path,
    format: &str,
    out: &Path,
    split: Option<Subset>,
    bar: &mut Bar,
) -> Result<()> {
    let dataset = Dataset::open(dir)?;
    let _lock = crate::output::lock(out, "dataset export")?;
    if format == "reference" {
        if split.is_some() {
            bail!(
                "--split is for --format npy: the reference's files hold every sample \
                 and its own split selects the subsets"
            );
        }
        let export = export_reference(&dataset, out, bar)?;
        for file in &export.files {
            println!("wrote {}", file.display());
        }
        println!(
            "the reference's random.Random(2024) 70/15/15 split of these files selects \
             exactly this dataset's train, validation and test samples ({})",
            if export.identity {
                "in dataset order"
            } else {
                "reordered: fiberflow_export.json maps each position to its sample"
            }
        );
    } else {
        for file in export_npy(&dataset, out, split, bar)? {
            println!("wrote {}", file.display());
        }
    }
    Ok(())
}

/// `dataset split`: writes the split and says when it makes the statistics stale.
fn split(dir: &Path, mode: SplitMode, force: bool) -> Result<()> {
    let manifest = Manifest::load(dir)?;
    let _lock = crate::output::lock(dir, "dataset split")?;
    let splits = Splits::new(manifest.len(), mode);
    let unchanged = Splits::load(dir, manifest.len()).is_ok_and(|old| old == splits);
    splits.save(dir, force)?;
    println!(
        "wrote {}: {mode}, train {}, val {}, test {}",
        dir.join(fiberflow_data::split::SPLITS_FILE).display(),
        splits.train.len(),
        splits.val.len(),
        splits.test.len()
    );
    if !unchanged && dir.join(STATISTICS_FILE).exists() {
        println!(
            "note: statistics.json is now stale; run `fiberflow dataset stats {} --force`",
            dir.display()
        );
    }
    Ok(())
}
