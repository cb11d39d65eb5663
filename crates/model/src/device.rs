//! Choice of the compute device by name, so one CLI flag selects CPU or GPU.

use crate::error::ModelError;
/// The run-time device type, for crates that do not depend on Burn themselves.
pub use burn::prelude::Device;

/// `cpu` (Burn's flex backend, all cores), `libtorch` (PyTorch's CPU kernels) or
/// `libtorch-cuda` / `libtorch-cuda:N` (both need the `libtorch` feature), or `cuda` /
/// `cuda:N` (CubeCL, needs the `cuda` feature).
pub fn select(spec: &str) -> Result<Device, ModelError> {
    match spec {
        "cpu" => Ok(Device::flex()),
        "libtorch" => libtorch(None),
        s if s == "libtorch-cuda" || s.starts_with("libtorch-cuda:") => libtorch(Some(index(
            s.strip_prefix("libtorch-cuda:").unwrap_or("0"),
        )?)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            cuda(index(s.strip_prefix("cuda:").unwrap_or("0"))?)
        }
        other => Err(ModelError::Config(format!(
            "unknown device `{other}`; use `cpu`, `libtorch`, `libtorch-cuda:N`, `cuda` or `cuda:N`"
        ))),
    }
}

/// Caps the worker threads of every backend in this build: flex runs on rayon's global pool
/// (set by the caller), LibTorch on its own OpenMP pool, which would otherwise take all cores.
pub fn set_threads(n: usize) {
    #[cfg(feature = "libtorch")]
    tch::set_num_threads(i32::try_from(n).unwrap_or(i32::MAX));
    #[cfg(not(feature = "libtorch"))]
    let _ = n;
}

fn index(text: &str) -> Result<usize, ModelError> {
    text.parse()
        .map_err(|_| ModelError::Config(format!("bad GPU device index `{text}`")))
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
fn cuda(index: usize) -> Result<Device, ModelError> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Device, ModelError> {
    Err(ModelError::Config(
        "this build has no CubeCL GPU support; rebuild with `--features cuda`, or use \
         `libtorch-cuda:N` in a build made by scripts/setup-libtorch.sh"
            .into(),
    ))
}

/// LibTorch on the CPU (`None`) or on CUDA GPU `Some(i)`. A GPU that torch cannot see is
/// refused here: Burn's backend would panic on first use.
#[cfg(feature = "libtorch")]
#[allow(
    deprecated,
    reason = "Burn marks its LibTorch backend deprecated in favour of CubeCL, whose CUDA build \
              needs a download; it stays an opt-in feature beside the default flex backend"
)]
fn libtorch(gpu: Option<usize>) -> Result<Device, ModelError> {
    match gpu {
        None => Ok(Device::libtorch()),
        Some(i) => {
            let visible = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if i >= visible {
                return Err(ModelError::Config(format!(
                    "libtorch-cuda:{i}: torch sees {visible} CUDA device(s) (a CPU-only \
                     torch, no driver, or CUDA_VISIBLE_DEVICES)"
                )));
            }
            Ok(Device::libtorch_cuda(i))
        }
    }
}

#[cfg(not(feature = "libtorch"))]
fn libtorch(_gpu: Option<usize>) -> Result<Device, ModelError> {
    Err(ModelError::Config(
        "this build has no LibTorch backend; build one with scripts/setup-libtorch.sh \
         (cargo feature `libtorch`)"
            .into(),
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
        assert!(error(select("cuda:x")).contains("bad GPU device index"));
        assert!(error(select("libtorch-cuda:-1")).contains("bad GPU device index"));
        #[cfg(not(feature = "cuda"))]
        assert!(error(select("cuda:1")).contains("--features cuda"));
        #[cfg(not(feature = "libtorch"))]
        assert!(error(select("libtorch")).contains("setup-libtorch.sh"));
        #[cfg(feature = "libtorch")]
        {
            assert!(select("libtorch").is_ok());
            // No test machine has 10 000 GPUs.
            assert!(error(select("libtorch-cuda:9999")).contains("CUDA device"));
        }
    }
}
