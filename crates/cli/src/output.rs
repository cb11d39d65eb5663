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
