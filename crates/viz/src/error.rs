//! The one error type of the viz crate: every failure names the array, series or file it
//! concerns and what is wrong with it.

use fiberflow_data::DataError;
use std::path::PathBuf;

/// Everything that can go wrong building or writing a visual output.
#[derive(Debug, thiserror::Error)]
pub enum VizError {
    /// An array has the wrong shape for its role.
    #[error("`{name}` has shape {found:?}, expected {expected}")]
    Shape {
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    /// An array that must be finite holds NaN or ±Inf.
    #[error("`{name}` holds a non-finite value ({value}) at index {index:?}")]
    NonFinite {
        name: String,
        index: Vec<usize>,
        value: f64,
    },
    /// A value or setting breaks a documented rule (non-binary mask, duplicate array
    /// name, slice out of range, non-positive voxel size, ...).
    #[error("`{name}`: {reason}")]
    Invalid { name: String, reason: String },
    /// A line plot series has no points, or none that the chosen axis can show.
    #[error("series `{name}`: {reason}")]
    EmptySeries { name: String, reason: String },
    /// The operating system refused an operation on `path`.
    #[error("{}: could not {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    /// Rasterising or encoding a picture failed.
    #[error("could not draw {what}: {reason}")]
    Draw { what: &'static str, reason: String },
}

/// The atomic file writes are the data crate's (temporary file, fsync, rename).
impl From<DataError> for VizError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Io {
                path,
                action,
                error,
            } => Self::Io {
                path,
                action,
                error,
            },
            other => Self::Invalid {
                name: "output file".into(),
                reason: other.to_string(),
            },
        }
    }
}

/// Result of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, VizError>;

impl VizError {
    /// A broken rule about `name`.
    pub(crate) fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// A drawing backend failure while drawing `what`.
    pub(crate) fn draw<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |e| Self::Draw {
            what,
            reason: e.to_string(),
        }
    }
}
