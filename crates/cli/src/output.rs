//! Result files of the commands, written through the data crate's crash-safe writer
//! (temporary file, fsync, rename), so an interrupted run never leaves a truncated file.

use anyhow::{Context, Result};
use fiberflow_data::atomic::write_atomic;
use ndarray::{Array, Dimension};
use ndarray_npy::{WritableElement, WriteNpyExt};
use serde::Serialize;
use std::path::Path;

/// Writes an array as `.npy`.
pub fn npy<T: WritableElement, D: Dimension>(path: &Path, a: &Array<T, D>) -> Result<()> {
    let mut bytes = Vec::new();
    a.write_npy(&mut bytes)
        .with_context(|| format!("{}: cannot encode npy", path.display()))?;
    Ok(write_atomic(path, &bytes)?)
}

/// Writes pretty JSON.
pub fn json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(fiberflow_data::json::write_json(path, value)?)
}

/// Writes a text file (reports).
pub fn text(path: &Path, text: &str) -> Result<()> {
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Locks output folder `dir` for `command` for as long as the returned guard lives, so a
/// second command writing the same folder is refused instead of mixing its files in.
pub fn lock(dir: &Path, command: &str) -> Result<fiberflow_data::lock::FolderLock> {
    Ok(fiberflow_data::lock::FolderLock::acquire(dir, command)?)
}

/// The name of an entry of `dir` that is neither in `known` nor a writer's leftover (the
/// lock, temporary files): something a command did not write there.
pub fn foreign_entry(dir: &Path, known: &[&str]) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| !fiberflow_data::lock::is_lock_file(n))
        .map(|n| n.to_string_lossy().into_owned())
        .find(|n| !known.contains(&n.as_str()) && !n.ends_with(".tmp"))
}

/// Removes everything in the locked folder but the lock itself: what `--force` asks for,
/// so a replaced run cannot leave a stale file beside the new one.
pub fn clear(lock: &fiberflow_data::lock::FolderLock) -> Result<()> {
    let dir = lock.dir();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let entry = entry?;
        if fiberflow_data::lock::is_lock_file(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        // `file_type` does not follow links: a planted link is removed, not its target.
        let removed = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("{}: cannot remove", path.display()))?;
    }
    Ok(())
}

/// Makes sure a result file can be written at `path` (its folder exists or is created,
/// and the path is not a folder), before the computation that fills it starts.
pub fn prepare_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        anyhow::bail!("{}: is a folder; give a file name", path.display());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    Ok(())
}
