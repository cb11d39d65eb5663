//! Fibre microstructures for fiberflow: random unidirectional packings whose fibres
//! lean and wave slightly along z, their rasterisation to per-slice fluid masks, and
//! import of user images. No ML dependencies, so it builds and tests in seconds.

pub mod budget;
pub mod distance;
pub mod error;
pub mod layout;
pub mod mask_io;
pub mod packing;
pub mod path;
pub mod percolation;
pub mod raster;

pub use error::GeometryError;
pub use packing::{Microstructure, PackingConfig, PackingReport};
pub use path::{FibrePath, PathMode};
