//! Choice of the compute device by name, so one CLI flag selects CPU or GPU.

use crate::error::ModelError;
/// The run-time device type, for crates that do not depend on Burn themselves.
pub use burn::prelude::Device;

/// `cpu` (Burn's flex backend, all cores) or `cuda` / `cuda:N` (needs the `cuda` feature).
pub fn select(spec: &str) -> Result<Device, ModelError> {
    match spec {
        "cpu" => Ok(Device::flex()),
        s if s == "cuda" || s.starts_with("cuda:") => cuda(s.strip_prefix("cuda:").unwrap_or("0")),
        other => Err(ModelError::Config(format!(
            "unknown device `{other}`; use `cpu`, `cuda` or `cuda:N`"
        ))),
    }
}

/// A comma-separated list of [`select`] names, e.g. `cuda:0,cuda:1`, for data-parallel
/// training; the first device holds the model. A device named twice is refused, except
/// `cpu`, whose repeats share the cores (that only tests the parallel path).
pub fn select_all(spec: &str) -> Result<Vec<Device>, ModelError> {
    let names: Vec<&str> = spec.split(',').map(str::trim).collect();
    for (i, name) in names.iter().enumerate() {
        if *name != "cpu" && names[..i].contains(name) {
            return Err(ModelError::Config(format!(
                "device `{name}` is named twice in `{spec}`"
            )));
        }
    }
    names.into_iter().map(select).collect()
}

#[cfg(feature = "cuda")]
fn cuda(index: &str) -> Result<Device, ModelError> {
    let i: usize = index
        .parse()
        .map_err(|_| ModelError::Config(format!("bad CUDA device index `{index}`")))?;
    Ok(Device::cuda(i))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: &str) -> Result<Device, ModelError> {
    Err(ModelError::Config(
        "this build has no GPU support; rebuild with `--features cuda`".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message of the error `r` must hold.
    fn error<T: std::fmt::Debug>(r: Result<T, ModelError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn device_lists_are_parsed() {
        assert_eq!(select_all("cpu").unwrap().len(), 1);
        assert_eq!(select_all("cpu, cpu").unwrap().len(), 2);
        assert!(select_all("cpu,").is_err());
        assert!(error(select_all("cuda:1,cuda:1")).contains("twice"));
    }

    #[test]
    fn names_are_parsed_and_unknown_ones_refused() {
        assert!(select("cpu").is_ok());
        assert!(error(select("tpu")).contains("unknown device"));
        #[cfg(not(feature = "cuda"))]
        assert!(error(select("cuda:1")).contains("--features cuda"));
    }
}
