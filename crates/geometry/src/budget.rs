//! One memory budget for every allocation that grows with a command's arguments or
//! inputs (a `--size`, a sample count, a header's declared shape). Each such allocation
//! is estimated first, in checked integer arithmetic, and refused with the estimate in
//! the message when it exceeds the budget, so an absurd argument or a lying file header
//! ends in a clear error instead of an allocation abort or the OOM killer.
//!
//! The budget is process-wide: the CLI sets it once from `--max-memory-gib` or the
//! `FIBERFLOW_MAX_MEMORY_GIB` environment variable; libraries only read it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Environment variable that sets the budget in GiB when no flag does.
pub const ENV: &str = "FIBERFLOW_MAX_MEMORY_GIB";

/// Default budget, GiB: what a laptop can give one process (the solver's own
/// `max_memory_gib` default is the same).
pub const DEFAULT_GIB: f64 = 16.0;

const GIB: f64 = (1u64 << 30) as f64;

static BUDGET_BYTES: AtomicU64 = AtomicU64::new((DEFAULT_GIB * GIB) as u64);

/// Sets the process's budget. Refuses a value that is not a positive finite number.
pub fn set_gib(gib: f64) -> Result<(), String> {
    if !(gib.is_finite() && gib > 0.0) {
        return Err(format!(
            "the memory budget must be a positive number of GiB, not {gib}"
        ));
    }
    BUDGET_BYTES.store((gib * GIB).min(u64::MAX as f64) as u64, Ordering::Relaxed);
    Ok(())
}

/// Sets the budget from [`ENV`] when it is set; an unreadable value is an error.
pub fn set_from_env() -> Result<(), String> {
    match std::env::var(ENV) {
        Ok(v) => set_gib(
            v.trim()
                .parse()
                .map_err(|_| format!("{ENV}={v} is not a number of GiB"))?,
        ),
        Err(_) => Ok(()),
    }
}

/// The current budget in bytes.
pub fn bytes() -> u64 {
    BUDGET_BYTES.load(Ordering::Relaxed)
}

/// An allocation refused before it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct OverBudget {
    /// What would have been allocated, e.g. "a 11×30000×30000 mask".
    pub what: String,
    /// Estimated bytes; `None` when the estimate itself overflows 128 bits.
    pub need: Option<u128>,
    pub budget: u64,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let need = match self.need {
            Some(n) => format!("{:.2} GiB", n as f64 / GIB),
            None => "more memory than any machine has".into(),
        };
        write!(
            f,
            "{} needs {need}, more than the memory budget of {:.2} GiB (raise it with --max-memory-gib or {ENV}, or make the input smaller)",
            self.what,
            self.budget as f64 / GIB
        )
    }
}

impl std::error::Error for OverBudget {}

/// Bytes of `count` elements of `element_bytes` each, or `None` on overflow.
pub fn array_bytes(dims: &[usize], element_bytes: usize) -> Option<u128> {
    dims.iter()
        .try_fold(element_bytes as u128, |acc, &d| acc.checked_mul(d as u128))
}

/// Checks that `need` bytes (`None`: overflowed) fit the budget.
pub fn check(what: impl Into<String>, need: Option<u128>) -> Result<(), OverBudget> {
    let budget = bytes();
    match need {
        Some(n) if n <= budget as u128 => Ok(()),
        _ => Err(OverBudget {
            what: what.into(),
            need,
            budget,
        }),
    }
}

/// Checks an array of `dims` with elements of `element_bytes`, naming it `what`.
pub fn check_array(what: &str, dims: &[usize], element_bytes: usize) -> Result<(), OverBudget> {
    let shape = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×");
    check(
        format!("{what} of {shape}"),
        array_bytes(dims, element_bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_overflow_into_a_refusal_not_a_panic() {
        assert_eq!(array_bytes(&[11, 64, 64], 4), Some(11 * 64 * 64 * 4));
        assert_eq!(array_bytes(&[usize::MAX, usize::MAX, usize::MAX], 8), None);
        let e = check_array("a mask", &[usize::MAX, usize::MAX, 4], 1).unwrap_err();
        assert!(
            e.to_string().contains("more memory than any machine"),
            "{e}"
        );
        assert!(check_array("a mask", &[11, 64, 64], 1).is_ok());
        // 100000³ f32 = 3.6 PiB, refused with its size.
        let e = check_array("U", &[100_000, 100_000, 100_000], 4).unwrap_err();
        assert!(e.to_string().contains("3725290.30 GiB"), "{e}");
        assert!(e.to_string().contains("100000×100000×100000"), "{e}");
    }

    #[test]
    fn bad_budgets_are_refused() {
        assert!(set_gib(0.0).is_err());
        assert!(set_gib(f64::NAN).is_err());
        assert!(set_gib(-1.0).is_err());
    }
}
