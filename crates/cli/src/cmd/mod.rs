//! One module per subcommand: argument parsing and orchestration only.

pub mod bench;
pub mod dataset;
pub mod evaluate;
pub mod generate;
pub mod geometry;
pub mod gridsearch;
pub mod model;
pub mod plot;
pub mod predict;
pub mod quickstart;
pub mod sampler_args;
pub mod solve;
pub mod train;
pub mod vae;
