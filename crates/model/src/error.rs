//! Errors of model construction and use, raised before any training starts.

/// A configuration or an input that the networks cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("input does not fit the model: {0}")]
    Input(String),
}
