//! Crash-safe writes of result files (temporary file + rename), so an interrupted run never
//! leaves a truncated `.npy` or `.json` behind.

use anyhow::{Context, Result};
use ndarray::{Array, Dimension};
use ndarray_npy::{WritableElement, WriteNpyExt};
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::Path;

fn atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let mut w = BufWriter::new(file);
    write(&mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("{}: write failed", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("{}: sync failed", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// Writes an array as `.npy`.
pub fn npy<T: WritableElement, D: Dimension>(path: &Path, a: &Array<T, D>) -> Result<()> {
    atomic(path, |w| {
        a.write_npy(w)
            .with_context(|| format!("{}: cannot write npy", path.display()))
    })
}

/// Writes pretty JSON.
pub fn json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")?;
        Ok(())
    })
}
