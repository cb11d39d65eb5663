//! Errors of model construction and use, raised before any training starts.

/// A configuration or an input that the networks cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("input does not fit the model: {0}")]
    Input(String),
    #[error(transparent)]
    Data(#[from] fiberflow_data::DataError),
    #[error("{path}: {msg}")]
    Checkpoint {
        path: std::path::PathBuf,
        msg: String,
    },
}

impl ModelError {
    pub(crate) fn checkpoint(path: &std::path::Path, msg: impl std::fmt::Display) -> Self {
        Self::Checkpoint {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        }
    }
}
