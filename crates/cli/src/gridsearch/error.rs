//! Errors of the grid search: a bad grid file, or results files that do not belong to it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("{}: cannot {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: grid files must end in .toml or .json", path.display())]
    Extension { path: PathBuf },
    #[error("{0} must be a table")]
    NotATable(&'static str),
    #[error("unknown config field `{path}`{known}")]
    UnknownField { path: String, known: String },
    #[error("grid axis `{0}` must be a list of values (a fixed value belongs in the `base` table)")]
    NotAList(String),
    #[error("grid axis `{0}` is an empty list")]
    EmptyAxis(String),
    #[error("the grid has no axes: list at least one config field with its values")]
    NoAxes,
    #[error("`{0}` and `{1}` overlap: set each config field once, in `base` or as one axis")]
    Overlap(String, String),
    #[error("--epochs conflicts with the grid axis `epochs`; drop one of them")]
    EpochsConflict,
    #[error("the grid has more than {0} runs")]
    TooLarge(usize),
    #[error("grid run {index} ({values}) is not a valid diffusion training config: {message}")]
    Invalid {
        index: usize,
        values: String,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Results { path: PathBuf, message: String },
}

impl GridError {
    /// Adapter for `map_err` on I/O results.
    pub fn io(path: &std::path::Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io {
            path,
            action,
            source,
        }
    }
}
