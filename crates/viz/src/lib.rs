//! Visual outputs (VTK, PNG).

mod atomic;
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
