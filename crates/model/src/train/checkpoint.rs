//! Run folders and crash-safe checkpoints.
//!
//! A checkpoint is a folder of burnpack files (model, optimizer, EMA) plus `state.json`.
//! It is written under a temporary name and renamed into place, so a kill leaves either
//! the previous checkpoint or the new one. Burnpack keeps the parameter ids that the
//! optimizer state is keyed on, so a resumed run continues with its Adam moments.

use crate::error::ModelError;
use burn::module::Module;
use std::path::{Path, PathBuf};

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
        .find(|d| d.join("state.json").exists())
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Saves a module as burnpack.
pub fn save<M: Module>(module: &M, path: &Path) -> Result<(), ModelError> {
    module
        .clone()
        .save_file(path)
        .map_err(|e| ModelError::checkpoint(path, e))
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
    }
}
