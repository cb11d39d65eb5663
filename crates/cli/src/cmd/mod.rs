//! One module per subcommand: argument parsing and orchestration only.

pub mod bench;
pub mod dataset;
pub mod generate;
pub mod geometry;
pub mod solve;
pub mod train;
pub mod vae;
