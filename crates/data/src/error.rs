//! The one error type of the data crate, so every failure names the file it concerns,
//! what is wrong with it and, where there is one, the fix.

use std::path::PathBuf;

/// Everything that can go wrong reading, writing or checking a dataset.
///
/// `path` is always the file or directory concerned; for data not yet on disk it names
/// where the data came from (for example `SRC/x (sample 3)`).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused an operation.
    #[error("{}: could not {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    /// A file the dataset needs is not there.
    #[error("{}: not found; {fix}", path.display())]
    NotFound { path: PathBuf, fix: String },
    /// A file exists but cannot be parsed (truncated, corrupt, not the expected format).
    #[error("{}: corrupt or truncated: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// A tensor the format requires is absent.
    #[error("{}: missing tensor `{name}`", path.display())]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor has an element type other than the format's.
    #[error("{}: tensor `{name}` has dtype {found}, expected {expected}", path.display())]
    WrongDtype {
        path: PathBuf,
        name: String,
        expected: String,
        found: String,
    },
    /// A tensor or array has the wrong shape.
    #[error("{}: `{name}` has shape {found:?}, expected {expected}", path.display())]
    WrongShape {
        path: PathBuf,
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    /// A field holds NaN or ±Inf.
    #[error("{}: `{name}` holds a non-finite value ({value}) at index {index:?}", path.display())]
    NonFinite {
        path: PathBuf,
        name: String,
        index: Vec<usize>,
        value: f64,
    },
    /// Content that parses but breaks the format's rules (non-binary mask, bad dxyz, ...).
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// Two things that must agree do not (files vs manifest, header vs existing dataset,
    /// statistics vs split, ...).
    #[error("{}: {problem}; fix: {fix}", path.display())]
    Mismatch {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// A file would be overwritten although it is written once.
    #[error("{}: already exists; {fix}", path.display())]
    Exists { path: PathBuf, fix: String },
    /// An allocation sized by an input (a file's declared shape) exceeds the memory
    /// budget; refused before it is made.
    #[error(transparent)]
    Budget(#[from] fiberflow_geometry::budget::OverBudget),
    /// A JSON file cannot be read into the expected structure.
    #[error("{}: invalid JSON: {error}", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
}

/// Result of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    /// Wraps an I/O error with the path and the action that failed.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |error| Self::Io {
            path,
            action,
            error,
        }
    }

    /// A rule broken by the content of `path`.
    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A disagreement between `path` and something else, with its fix.
    pub(crate) fn mismatch(
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::Mismatch {
            path: path.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
