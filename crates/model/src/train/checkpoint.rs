//! Run folders and crash-safe checkpoints.
//!
//! A checkpoint is a folder of burnpack files (model, optimizer, EMA) plus `state.json`.
//! It is written under a temporary name and renamed into place, so a kill leaves either
//! the previous checkpoint or the new one. Burnpack keeps the parameter ids that the
//! optimizer state is keyed on, so a resumed run continues with its Adam moments.

use crate::error::ModelError;
use burn::module::Module;
use fiberflow_data::json::{read_json, write_json};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// The checkpoint folder inside a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The run log inside a checkpoint folder (the run folder's `log.json` as of that epoch).
const STATE_FILE: &str = "state.json";
/// The run log of a run folder.
pub const LOG_FILE: &str = "log.json";

/// The checkpoint of run folder `out` to resume from, with its saved run log: `None` for
/// a fresh run; an error when `out` already holds a run and `resume` is off, so a
/// finished run is never overwritten by accident.
pub fn resume_from<L: DeserializeOwned>(
    out: &Path,
    resume: bool,
) -> Result<Option<(PathBuf, L)>, ModelError> {
    match (resume, existing_dir(&out.join(CHECKPOINT_DIR))) {
        (true, Some(dir)) => {
            let log = read_json(&dir.join(STATE_FILE), "")?;
            Ok(Some((dir, log)))
        }
        (false, Some(_)) => Err(ModelError::Config(format!(
            "{} already holds a run; pass --resume to continue it, or choose a new --out",
            out.display()
        ))),
        (_, None) => Ok(None),
    }
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
    save(module, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::checkpoint(path, e))
}

/// Loads burnpack weights into `module`, which must have the same architecture.
pub fn load<M: Module>(module: M, path: &Path) -> Result<M, ModelError> {
    if !path.exists() {
        return Err(ModelError::checkpoint(path, "missing checkpoint file"));
    }
    module.try_load_file(path).map_err(|e| {
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
