//! Run folders and crash-safe checkpoints.
//!
//! A checkpoint is a folder of burnpack files (model, optimizer, EMA) plus `state.json`.
//! It is written under a temporary name and renamed into place, so a kill leaves either
//! the previous checkpoint or the new one. Burnpack keeps the parameter ids that the
//! optimizer state is keyed on, so a resumed run continues with its Adam moments.

use crate::error::ModelError;
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use fiberflow_data::json::{read_json, write_json};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// The checkpoint folder inside a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The run log inside a checkpoint folder (the run folder's `log.json` as of that epoch).
const STATE_FILE: &str = "state.json";
/// The run log of a run folder.
pub const LOG_FILE: &str = "log.json";
/// The weights a finished run is used with (the best epoch's, EMA where the run keeps one).
pub const BEST_FILE: &str = "best_model.bpk";
/// A checkpoint's weights, their EMA and the optimiser's state.
pub const MODEL_WEIGHTS: &str = "model.bpk";
pub const EMA_WEIGHTS: &str = "ema.bpk";
pub const OPTIMIZER_STATE: &str = "optim.bpk";

/// The checkpoint of run folder `out` to resume from, with its saved run log: `None` for
/// a folder with no run in it (absent, empty, or holding only what a killed writer
/// leaves); an error when `out` holds a run and `resume` is off, or holds one without a
/// checkpoint, so finished work is never overwritten by accident. Leftovers are removed
/// only once the run goes ahead.
pub fn resume_from<L: DeserializeOwned>(
    out: &Path,
    resume: bool,
) -> Result<Option<(PathBuf, L)>, ModelError> {
    match (resume, existing_dir(&out.join(CHECKPOINT_DIR))) {
        (true, Some(dir)) => {
            let state: serde_json::Value = read_json(&dir.join(STATE_FILE), "")?;
            check_same_run(out, &dir, &state)?;
            let log = serde_json::from_value(state).map_err(|e| {
                ModelError::Config(format!("{}: {e}", dir.join(STATE_FILE).display()))
            })?;
            remove_leftovers(out)?;
            Ok(Some((dir, log)))
        }
        (false, Some(_)) => Err(ModelError::Config(format!(
            "{} already holds a run; continue it with --resume, or choose a new --out (`train --force` replaces it)",
            out.display()
        ))),
        (_, None) => match run_entry(out, resume) {
            // A run killed before its first checkpoint: what it holds is resumable.
            Some(name) if run_entry(out, true).is_none() => Err(ModelError::Config(format!(
                "{} holds a run stopped before its first epoch (`{name}`); continue it with --resume, or choose a new --out (`train --force` replaces it)",
                out.display()
            ))),
            // A run whose checkpoint was deleted (to save space, say) is finished work:
            // neither restarted from epoch 0 under --resume nor overwritten without it.
            Some(name) => Err(ModelError::Config(format!(
                "{} holds a run (`{name}`) but no checkpoint to resume from; choose a new --out (`train --force` replaces it)",
                out.display()
            ))),
            None => {
                remove_leftovers(out)?;
                Ok(None)
            }
        },
    }
}

/// Deletes what a killed run leaves and no reader wants: temporary files of atomic writes
/// and a half-written `checkpoint.tmp` folder.
fn remove_leftovers(out: &Path) -> Result<(), ModelError> {
    if !out.is_dir() {
        return Ok(());
    }
    fiberflow_data::atomic::remove_temp_files(out)?;
    for entry in std::fs::read_dir(out).map_err(|e| ModelError::checkpoint(out, e))? {
        let path = entry.map_err(|e| ModelError::checkpoint(out, e))?.path();
        if path.to_string_lossy().ends_with(TEMP_WEIGHTS) && path.is_file() {
            std::fs::remove_file(&path).map_err(|e| ModelError::checkpoint(&path, e))?;
        }
    }
    let tmp = with_suffix(&out.join(CHECKPOINT_DIR), ".tmp");
    if tmp.is_dir() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::checkpoint(&tmp, e))?;
    }
    Ok(())
}

/// Suffix of [`save_atomic`]'s temporary weights.
const TEMP_WEIGHTS: &str = ".tmp.bpk";

/// The name of an entry of `out` that shows a run's work, so a run folder is recognised by
/// any of its files, not by one. Writers' leftovers never count (the lock, temporary
/// files, a half-written checkpoint); under `resume`, neither do the best weights alone: a
/// run writes them just before its first checkpoint, so alone they are what a kill in
/// that window leaves, and resuming there starts the run again. Nor does the refiner's
/// estimate cache, filled before the first epoch: resuming there keeps what it holds.
pub fn run_entry(out: &Path, resume: bool) -> Option<String> {
    let before_first_epoch = |n: &str| n == BEST_FILE || n == super::refine::ESTIMATES_DIR;
    let leftover = |n: &str| {
        n.ends_with(".tmp") || n.ends_with(TEMP_WEIGHTS) || (resume && before_first_epoch(n))
    };
    std::fs::read_dir(out)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| !fiberflow_data::lock::is_lock_file(n))
        .map(|n| n.to_string_lossy().into_owned())
        .find(|n| !leftover(n))
}

/// Refuses a checkpoint that is not this run's: the run folder's `log.json` is written
/// after each checkpoint, so its epochs must be the checkpoint's, or all but its last
/// (a kill between the two writes). A checkpoint copied in from another run differs.
fn check_same_run(out: &Path, dir: &Path, state: &serde_json::Value) -> Result<(), ModelError> {
    let Ok(log) = read_json::<serde_json::Value>(&out.join(LOG_FILE), "") else {
        return Ok(());
    };
    let epochs = |v: &serde_json::Value| v["history"].as_array().cloned().unwrap_or_default();
    let (logged, saved) = (epochs(&log), epochs(state));
    let same = logged.len() <= saved.len()
        && logged.len() + 1 >= saved.len()
        && logged.iter().zip(&saved).all(|(a, b)| a == b);
    if same {
        return Ok(());
    }
    Err(ModelError::Config(format!(
        "{} does not belong to the run in {}: their epochs differ (a checkpoint copied from another run?); restore the run's own checkpoint, or start a new --out",
        dir.display(),
        out.display()
    )))
}

/// Ends an epoch of the run in `out`: the checkpoint folder (weights written by `save`,
/// plus `log` as its state) atomically, then `log.json`. A kill between the two leaves
/// `log.json` one epoch behind, which [`resume_from`]'s saved log then replaces.
pub fn commit_epoch<L: Serialize>(
    out: &Path,
    log: &L,
    save: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    write_dir(&out.join(CHECKPOINT_DIR), |dir| {
        save(dir)?;
        Ok(write_json(&dir.join(STATE_FILE), log)?)
    })?;
    Ok(write_json(&out.join(LOG_FILE), log)?)
}

/// Writes a trainer's state into checkpoint folder `dir`: the model, the EMA of its
/// weights and the optimiser (its Adam moments), as [`load_state`] reads them.
pub fn save_state<M: Module>(
    dir: &Path,
    model: &M,
    ema: &M,
    optim: &ModuleOptimizer,
) -> Result<(), ModelError> {
    save(model, &dir.join(MODEL_WEIGHTS))?;
    save(ema, &dir.join(EMA_WEIGHTS))?;
    let path = dir.join(OPTIMIZER_STATE);
    optim
        .save(&path)
        .map_err(|e| ModelError::checkpoint(&path, e))
}

/// A trainer's state as the end of an epoch commits it.
pub trait Checkpointed {
    /// Writes the weights the run keeps as its best (the EMA's where there is one) to
    /// `path`, atomically.
    fn save_best(&self, path: &Path) -> Result<(), ModelError>;
    /// Writes everything a resume needs into checkpoint folder `dir`.
    fn save(&self, dir: &Path) -> Result<(), ModelError>;
}

/// Ends an epoch: the state's best weights become the run's when the epoch `improved` on
/// the best one, then the checkpoint and `log` are committed ([`commit_epoch`]).
pub fn end_epoch<L: Serialize>(
    out: &Path,
    log: &L,
    improved: bool,
    state: &impl Checkpointed,
) -> Result<(), ModelError> {
    if improved {
        state.save_best(&out.join(BEST_FILE))?;
    }
    commit_epoch(out, log, |dir| state.save(dir))
}

/// A run log that keeps its best epoch by the lowest validation score: a loss for the VAE
/// stages, an error for the diffusion and refiner runs.
pub trait BestByScore: Serialize {
    type Epoch;
    /// The history, the lowest validation score so far and the epoch that had it.
    fn progress(&mut self) -> (&mut Vec<Self::Epoch>, &mut f64, &mut Option<usize>);
}

/// Ends epoch `epoch` of a trainer that picks its best epoch by `error`: records `record`
/// in `log`, updates the best when `error` is the lowest so far, commits as
/// [`end_epoch`], then hands the record to `observe`, whose answer (stop or go on) it
/// returns.
pub fn close_epoch<L: BestByScore>(
    out: &Path,
    log: &mut L,
    (epoch, record, error): (usize, L::Epoch, f64),
    state: &impl Checkpointed,
    observe: impl FnOnce(&L::Epoch) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, ModelError> {
    let (history, best, best_epoch) = log.progress();
    let improved = error < *best;
    if improved {
        *best = error;
        *best_epoch = Some(epoch);
    }
    history.push(record);
    end_epoch(out, &*log, improved, state)?;
    Ok(observe(log.progress().0.last().expect("just pushed")))
}

/// Reads what [`save_state`] wrote into modules of the same architecture.
pub fn load_state<M: Module>(
    dir: &Path,
    model: M,
    ema: M,
    optim: ModuleOptimizer,
) -> Result<(M, M, ModuleOptimizer), ModelError> {
    let model = load(model, &dir.join(MODEL_WEIGHTS))?;
    let ema = load(ema, &dir.join(EMA_WEIGHTS))?;
    let path = dir.join(OPTIMIZER_STATE);
    let optim = optim
        .load(&path)
        .map_err(|e| ModelError::checkpoint(&path, e))?;
    Ok((model, ema, optim))
}

/// Writes the files of a checkpoint folder atomically: `fill` writes into a temporary
/// folder that then replaces `dir`.
pub fn write_dir(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let tmp = with_suffix(dir, ".tmp");
    let old = with_suffix(dir, ".old");
    let io = |p: &Path, e: std::io::Error| ModelError::checkpoint(p, e);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    fill(&tmp)?;
    // A kill after the last write's second rename leaves a stale `.old` behind.
    if dir.exists() && old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
    // Make the renames durable (the files themselves are synced as they are written).
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(parent, e))?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    Ok(())
}

/// The checkpoint folder to resume from: `dir`, or its previous version if a kill struck
/// between the two renames of [`write_dir`].
pub fn existing_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), with_suffix(dir, ".old")]
        .into_iter()
        .find(|d| d.join(STATE_FILE).exists())
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Saves a module as burnpack (inside a checkpoint folder, which is itself renamed into
/// place).
pub fn save<M: Module>(module: &M, path: &Path) -> Result<(), ModelError> {
    module
        .clone()
        .save_file(path)
        .map_err(|e| ModelError::checkpoint(path, e))
}

/// [`save`] to a temporary name in the same folder, renamed over `path`: a kill leaves
/// the previous file or the new one, never a truncated one (for `best_model.bpk`, which
/// lives outside the checkpoint folder).
pub fn save_atomic<M: Module>(module: &M, path: &Path) -> Result<(), ModelError> {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path.extension().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!("{stem}.tmp.{ext}"));
    // Burn writes through whatever is at the path: a link planted there goes first (its
    // target is untouched), and a leftover of a killed run with it.
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_file(&tmp).map_err(|e| ModelError::checkpoint(&tmp, e))?;
    }
    save(module, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::checkpoint(path, e))
}

/// Loads burnpack weights into `module`, which must have the same architecture. The file
/// is read whole first: Burn's file reader fetches tensor bytes lazily, so a file removed
/// or replaced after loading (a bundle's temporary folder, a run still training) would
/// otherwise be read later, or fail mid-prediction.
pub fn load<M: Module>(module: M, path: &Path) -> Result<M, ModelError> {
    if !path.exists() {
        return Err(ModelError::checkpoint(path, "missing checkpoint file"));
    }
    let bytes = std::fs::read(path).map_err(|e| ModelError::checkpoint(path, e))?;
    let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes));
    record.and_then(|r| module.try_load_record(r)).map_err(|e| {
        ModelError::checkpoint(
            path,
            format!("cannot load (corrupt, or saved with another architecture): {e}"),
        )
    })
}

/// `path` made absolute with symlinks resolved, for run logs that other runs follow; as
/// given if that fails (the path was just read, so it exists).
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fill_keeps_the_previous_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("checkpoint");
        write_dir(&dir, |d| {
            std::fs::write(d.join("state.json"), "1").map_err(|e| ModelError::checkpoint(d, e))
        })
        .unwrap();
        let failed = write_dir(&dir, |d| {
            std::fs::write(d.join("state.json"), "2").unwrap();
            Err(ModelError::checkpoint(d, "killed"))
        });
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("state.json")).unwrap(),
            "1"
        );
        // A kill between the renames leaves only `.old`, which is found.
        std::fs::rename(&dir, with_suffix(&dir, ".old")).unwrap();
        assert_eq!(existing_dir(&dir), Some(with_suffix(&dir, ".old")));
        // A kill after both renames leaves `dir` and a stale `.old`: the next write works.
        write_dir(&dir, |d| {
            std::fs::write(d.join("state.json"), "3").map_err(|e| ModelError::checkpoint(d, e))
        })
        .unwrap();
        std::fs::create_dir_all(with_suffix(&dir, ".old")).unwrap();
        std::fs::write(with_suffix(&dir, ".old").join("state.json"), "2").unwrap();
        write_dir(&dir, |d| {
            std::fs::write(d.join("state.json"), "4").map_err(|e| ModelError::checkpoint(d, e))
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("state.json")).unwrap(),
            "4"
        );
        assert!(!with_suffix(&dir, ".old").exists());
    }
}

#[cfg(test)]
mod run_folder_tests {
    use super::*;
    use serde_json::{Value, json};

    /// A run folder after `epochs` committed epochs of a run whose losses start at `first`.
    fn run(out: &Path, epochs: usize, first: f64) {
        for e in 1..=epochs {
            let history: Vec<Value> = (0..e)
                .map(|k| json!({ "loss": first + k as f64 }))
                .collect();
            commit_epoch(out, &json!({ "history": history }), |_| Ok(())).unwrap();
        }
    }

    fn message(r: Result<Option<(PathBuf, Value)>, ModelError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn a_run_is_recognised_by_any_of_its_files() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        run(&out, 2, 1.0);
        assert!(message(resume_from(&out, false)).contains("already holds a run"));
        // The checkpoint deleted to save space: neither overwritten nor restarted.
        std::fs::remove_dir_all(out.join(CHECKPOINT_DIR)).unwrap();
        for resume in [false, true] {
            let e = message(resume_from(&out, resume));
            assert!(
                e.contains("holds a run (`log.json`) but no checkpoint"),
                "{e}"
            );
        }
        // Best weights alone are what a kill before the first checkpoint leaves: refused
        // without --resume, started again with it.
        let killed = tmp.path().join("killed");
        std::fs::create_dir_all(&killed).unwrap();
        std::fs::write(killed.join(BEST_FILE), "weights").unwrap();
        let e = message(resume_from(&killed, false));
        assert!(
            e.contains("holds a run stopped before its first epoch (`best_model.bpk`)")
                && e.contains("--resume"),
            "{e}"
        );
        assert!(resume_from::<Value>(&killed, true).unwrap().is_none());
        // The folder's lock file alone is not a run.
        let fresh = tmp.path().join("fresh");
        let _lock = fiberflow_data::lock::FolderLock::acquire(&fresh, "train").unwrap();
        assert!(resume_from::<Value>(&fresh, false).unwrap().is_none());
    }

    #[test]
    fn a_checkpoint_from_another_run_is_refused_and_leftovers_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        run(&a, 2, 1.0);
        run(&b, 2, 5.0);
        // A kill leaves a half-written checkpoint and a temporary file: both go.
        std::fs::create_dir_all(out_tmp(&a)).unwrap();
        std::fs::write(a.join(".log.json.77.tmp"), "{").unwrap();
        std::fs::write(a.join("best_model.tmp.bpk"), "half").unwrap();
        let (_, log) = resume_from::<Value>(&a, true).unwrap().unwrap();
        assert_eq!(log["history"].as_array().unwrap().len(), 2);
        for left in [
            out_tmp(&a),
            a.join(".log.json.77.tmp"),
            a.join("best_model.tmp.bpk"),
        ] {
            assert!(!left.exists(), "{}", left.display());
        }
        // log.json one epoch behind its checkpoint (a kill between the writes) resumes.
        let behind = json!({ "history": [{ "loss": 1.0 }] });
        write_json(&a.join(LOG_FILE), &behind).unwrap();
        assert!(resume_from::<Value>(&a, true).unwrap().is_some());
        // b's checkpoint copied into a is not a's.
        std::fs::remove_dir_all(a.join(CHECKPOINT_DIR)).unwrap();
        copy_dir(&b.join(CHECKPOINT_DIR), &a.join(CHECKPOINT_DIR));
        let e = message(resume_from(&a, true));
        assert!(e.contains("does not belong to the run"), "{e}");
    }

    fn out_tmp(out: &Path) -> PathBuf {
        with_suffix(&out.join(CHECKPOINT_DIR), ".tmp")
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
