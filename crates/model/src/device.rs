//! Choice of the compute device by name, so one CLI flag selects CPU or GPU.

use crate::error::ModelError;
/// The run-time device type, for crates that do not depend on Burn themselves.
pub use burn::prelude::Device;

/// A compute device named on the command line, parsed once: a misspelt name fails while
/// the arguments are read, before any data is touched. [`DeviceSpec::open`] makes the
/// device, which may still fail where this build lacks the backend or torch sees no such
/// GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// `cpu`: Burn's flex backend on all cores.
    Cpu,
    /// `libtorch`: PyTorch's CPU kernels (the `libtorch` feature).
    Libtorch,
    /// `libtorch-cuda:N` (`libtorch-cuda` is GPU 0): PyTorch's CUDA build.
    LibtorchCuda(usize),
    /// `cuda:N` (`cuda` is GPU 0): CubeCL's CUDA backend (the `cuda` feature).
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = ModelError;

    fn from_str(spec: &str) -> Result<Self, ModelError> {
        let gpu = |prefix: &str| -> Option<Result<usize, ModelError>> {
            match spec.strip_prefix(prefix)? {
                "" => Some(Ok(0)),
                rest => rest.strip_prefix(':').map(index),
            }
        };
        match spec {
            "cpu" => Ok(Self::Cpu),
            "libtorch" => Ok(Self::Libtorch),
            _ => {
                if let Some(i) = gpu("libtorch-cuda") {
                    Ok(Self::LibtorchCuda(i?))
                } else if let Some(i) = gpu("cuda") {
                    Ok(Self::Cuda(i?))
                } else {
                    Err(ModelError::Config(format!(
                        "unknown device `{spec}`; use `cpu`, `libtorch`, `libtorch-cuda:N`, `cuda` or `cuda:N`"
                    )))
                }
            }
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Libtorch => write!(f, "libtorch"),
            Self::LibtorchCuda(i) => write!(f, "libtorch-cuda:{i}"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Recorded by its canonical name (`cuda` as `cuda:0`), which parses back to it.
impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl DeviceSpec {
    /// The device, or why this build or machine cannot provide it.
    pub fn open(self) -> Result<Device, ModelError> {
        match self {
            Self::Cpu => Ok(Device::flex()),
            Self::Libtorch => libtorch(None),
            Self::LibtorchCuda(i) => libtorch(Some(i)),
            Self::Cuda(i) => cuda(i),
        }
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

/// A comma-separated list of [`DeviceSpec`] names, e.g. `cuda:0,cuda:1`, for data-parallel
/// training; the first device holds the model. A device named twice is refused, except
/// `cpu`, whose repeats share the cores (that only tests the parallel path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(Vec<DeviceSpec>);

impl std::str::FromStr for DeviceList {
    type Err = ModelError;

    fn from_str(spec: &str) -> Result<Self, ModelError> {
        let devices: Vec<DeviceSpec> = spec
            .split(',')
            .map(|name| name.trim().parse())
            .collect::<Result<_, _>>()?;
        for (i, d) in devices.iter().enumerate() {
            if *d != DeviceSpec::Cpu && devices[..i].contains(d) {
                return Err(ModelError::Config(format!(
                    "device `{d}` is named twice in `{spec}`"
                )));
            }
        }
        Ok(Self(devices))
    }
}

impl std::fmt::Display for DeviceList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.iter().map(DeviceSpec::to_string).collect();
        write!(f, "{}", names.join(","))
    }
}

impl DeviceList {
    /// The devices in order.
    pub fn specs(&self) -> &[DeviceSpec] {
        &self.0
    }

    /// Opens every device, in order.
    pub fn open(&self) -> Result<Vec<Device>, ModelError> {
        self.0.iter().map(|d| d.open()).collect()
    }
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

    fn select(spec: &str) -> Result<Device, ModelError> {
        spec.parse::<DeviceSpec>()?.open()
    }

    fn select_all(spec: &str) -> Result<Vec<Device>, ModelError> {
        spec.parse::<DeviceList>()?.open()
    }

    #[test]
    fn device_lists_are_parsed() {
        assert_eq!(select_all("cpu").unwrap().len(), 1);
        assert_eq!(select_all("cpu, cpu").unwrap().len(), 2);
        assert!(select_all("cpu,").is_err());
        assert!(error(select_all("cuda:1,cuda:1")).contains("twice"));
        assert!(error(select_all("cuda,cuda:0")).contains("`cuda:0` is named twice"));
        let list: DeviceList = "cpu, libtorch-cuda:1".parse().unwrap();
        assert_eq!(list.specs(), [DeviceSpec::Cpu, DeviceSpec::LibtorchCuda(1)]);
        assert_eq!(list.to_string(), "cpu,libtorch-cuda:1");
    }

    #[test]
    fn names_are_parsed_and_unknown_ones_refused() {
        let parse = |s: &str| s.parse::<DeviceSpec>();
        assert_eq!(parse("libtorch-cuda").unwrap(), DeviceSpec::LibtorchCuda(0));
        assert_eq!(parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        for name in ["cpu", "libtorch", "libtorch-cuda:2", "cuda:1"] {
            assert_eq!(parse(name).unwrap().to_string(), name);
        }
        assert!(select("cpu").is_ok());
        assert!(error(select("tpu")).contains("unknown device"));
        assert!(error(select("cudax")).contains("unknown device"));
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
