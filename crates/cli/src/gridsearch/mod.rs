//! Grid search over the diffusion trainer's config fields (`fiberflow gridsearch`): the
//! grid file and its expansion into runs, the crash-safe results files, and the reports.
//! The command itself (`cmd::gridsearch`) trains the runs.

pub mod error;
pub mod grid;
pub mod report;
pub mod results;
