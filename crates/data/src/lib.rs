//! Datasets for fiberflow: one safetensors file per sample, a manifest (`dataset.json`),
//! one split (`splits.json`) and train-only statistics (`statistics.json`) that every
//! stage re-reads, a crash-safe resumable writer for generators, import of the reference
//! project's `.pt` files, NumPy export and a framework-free training loader.
//!
//! Array layout and units are those of `fiberflow_geometry::layout`: `(S, C, H, W)`,
//! channels `(vx, vy, vz)`, mask 1 = fluid, SI units.

pub mod atomic;
pub mod dataset;
pub mod error;
pub mod export;
pub mod features;
pub mod fetch;
pub mod generate;
pub mod info;
pub mod json;
pub mod loader;
pub mod lock;
pub mod manifest;
pub mod origin;
pub mod progress;
pub mod python_random;
pub mod reference;
pub mod reference_export;
pub mod sample;
pub mod split;
pub mod statistics;
pub mod torch_save;
pub mod writer;

pub use dataset::Dataset;
pub use error::{DataError, Result};
pub use export::export_npy;
/// The process-wide memory budget, for crates above this one.
pub use fiberflow_geometry::budget;
pub use info::DatasetInfo;
pub use loader::{Batch, Loader, LoaderConfig, Mirror};
pub use manifest::{DatasetHeader, Manifest, SampleRecord};
pub use progress::{Progress, Silent};
pub use reference::import_reference;
pub use reference_export::{ReferenceExport, export_reference};
pub use sample::{Field, Sample, SampleFile, Shape};
pub use split::{SplitMode, Splits, Subset};
pub use statistics::Statistics;
pub use writer::{DatasetWriter, Shard, merge};
