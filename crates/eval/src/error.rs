//! The one error type of the evaluation crate: every failure says which input is wrong
//! and how, so a bad field or setting never turns into a panic or a meaningless number.

use std::path::PathBuf;

/// Everything that can go wrong computing, aggregating or writing metrics.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An array does not have the shape the shared `(S, C, H, W)` layout requires.
    #[error("`{name}` has shape {found:?}, expected {expected}")]
    Shape {
        name: &'static str,
        expected: String,
        found: Vec<usize>,
    },
    /// An array holds NaN or ±Inf.
    #[error("`{name}` holds a non-finite value ({value}) at index {index:?}")]
    NonFinite {
        name: &'static str,
        index: [usize; 4],
        value: f32,
    },
    /// The mask holds a value other than 0 (fibre) or 1 (fluid).
    #[error("mask holds {value} at index {index:?}; expected 0 (fibre) or 1 (fluid)")]
    NonBinaryMask { index: [usize; 4], value: f32 },
    /// The mask has no fluid voxel, so no fluid average exists.
    #[error("mask has no fluid voxel; every metric averages over the fluid")]
    NoFluid,
    /// A setting or parameter is out of its valid range.
    #[error("invalid {name} = {value}: {reason}")]
    Parameter {
        name: &'static str,
        value: f64,
        reason: &'static str,
    },
    /// The true field makes a normalised metric undefined (for example a component that
    /// is zero over the whole fluid, so an error relative to it has no meaning).
    #[error("undefined {metric}: {reason}")]
    DegenerateTruth {
        metric: &'static str,
        reason: &'static str,
    },
    /// Aggregation was asked for over no samples.
    #[error("no samples to aggregate")]
    NoSamples,
    /// The divergence-free projection did not reach its tolerance.
    #[error(
        "divergence-free projection did not converge: relative residual {relative_residual:.3e} \
         after {iterations} iterations (tolerance {tolerance:.1e}); raise max_iterations or the tolerance"
    )]
    NotConverged {
        iterations: usize,
        relative_residual: f64,
        tolerance: f64,
    },
    /// Writing the per-sample CSV failed.
    #[error("{}: could not write CSV: {source}", path.display())]
    Csv { path: PathBuf, source: csv::Error },
}

/// Result with [`EvalError`].
pub type Result<T> = std::result::Result<T, EvalError>;

/// Checks that `value` is finite and strictly positive.
pub(crate) fn positive(name: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(EvalError::Parameter {
            name,
            value,
            reason: "must be finite and > 0",
        })
    }
}
