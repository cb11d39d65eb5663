//! Errors of microstructure generation and image import.

use std::path::PathBuf;

/// Everything that can go wrong in this crate, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum GeometryError {
    #[error("invalid packing configuration: {0}")]
    Config(String),
    /// A grid or microstructure that no raster can have (typically a file edited by hand).
    #[error("invalid {what}: {msg}")]
    Invalid { what: &'static str, msg: String },
    #[error(
        "could not separate the fibres at Vf = {vf:.3} (worst overlap {overlap_um:.3} µm after {iterations} iterations); lower the target Vf or the minimum gap"
    )]
    Jammed {
        vf: f64,
        overlap_um: f64,
        iterations: usize,
    },
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// An input whose declared size exceeds the memory budget, refused before allocating.
    #[error(transparent)]
    Budget(#[from] crate::budget::OverBudget),
}

impl GeometryError {
    pub(crate) fn input(path: &std::path::Path, msg: impl Into<String>) -> Self {
        Self::Input {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
