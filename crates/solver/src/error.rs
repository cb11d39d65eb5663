//! Errors of the flow solver.

/// Why a solve could not be run or produced no usable field.
#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    #[error("invalid solver configuration: {0}")]
    Config(String),
    #[error("invalid geometry: {0}")]
    Geometry(String),
    #[error(
        "{what}: the fluid does not connect across the domain along x, so no flow can pass (permeability 0); check the mask convention (--solid-value) or the flow direction"
    )]
    NotPercolating { what: String },
    #[error("the solve diverged at step {iteration} (non-finite velocity); lower tau or force")]
    Diverged { iteration: usize },
}
