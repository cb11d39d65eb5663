//! Visual outputs of fiberflow, with no ML dependency: VTK ImageData volumes for
//! ParaView, comparison figures of one slice and training-curve plots, all as files
//! written atomically (temporary file, then rename).
//!
//! Input follows the shared layout of `fiberflow_geometry::layout`: per sample
//! `(S, C, H, W)` `f32` arrays (S slices along z, H rows along y, W columns along x),
//! velocities `(S, 3, H, W)` as (vx, vy, vz) in m/s, masks `(S, 1, H, W)` with
//! 1 = fluid, 0 = fibre, and a [`VoxelSize`](fiberflow_geometry::layout::VoxelSize) in
//! metres.
//!
//! * [`VtiVolume`]: `.vti` with a UInt8 `mask` and any named Float32 vector/scalar
//!   point arrays; spacing in metres, origin 0, x fastest in memory.
//! * [`ComparisonFigure`]: `comparison.png` of one slice, rows truth / prediction /
//!   error (and std), columns |V|, vx, vy, vz, colour bars with automatic SI prefixes.
//! * [`LinePlot`]: `loss.png`, named [`Series`] against epoch, linear or log y.
//!
//! Orientation: figures show x to the right and y **up** (array row 0 at the bottom),
//! which is how ParaView's default view shows the matching `.vti`.
//!
//! Errors ([`VizError`]) name the offending array or series: wrong shapes, non-binary
//! masks, non-positive voxel sizes, NaN/Inf where a value must be finite (`.vti`
//! arrays, plot series), empty series and unwritable paths. NaN/Inf in a comparison
//! figure's velocities is not an error: those pixels are drawn magenta and counted.
//! Text uses an embedded DejaVu Sans, so rendering needs no system fonts or display.

mod canvas;
pub mod colormap;
mod comparison;
pub mod error;
mod field;
mod font;
mod line_plot;
mod panel;
pub mod si_unit;
pub mod vti;

pub use canvas::write_png;
pub use comparison::ComparisonFigure;
pub use error::{Result, VizError};
pub use field::magnitude;
pub use image::RgbImage;
pub use line_plot::{LINE_PLOT_SIZE, LinePlot, Series};
pub use vti::VtiVolume;
