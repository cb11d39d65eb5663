//! Steady Stokes flow through fibre microstructures by the lattice Boltzmann method.
//!
//! Two-relaxation-time collision (Ginzburg, d'Humières & Kuzmin 2008) with the magic
//! parameter Λ = 3/16 and half-way bounce-back puts the no-slip wall exactly half-way
//! between nodes and makes the permeability independent of the viscosity, so a large
//! relaxation time can be used to converge fast. A linear (Stokes) equilibrium removes
//! inertia exactly; populations are stored as deviations from the rest weights so single
//! precision keeps creeping-flow velocities accurate. Flow is driven along +x by a body
//! force standing in for the mean pressure gradient; all boundaries are periodic.

pub mod bench;
mod bounce;
pub mod coarse;
pub mod config;
mod correction;
pub mod error;
pub mod kernel;
pub mod lattice;
mod layout;
pub mod sample;
pub mod solve;
pub mod units;

pub use config::{FlowConfig, LbmConfig, Physics};
pub use error::SolverError;
pub use sample::{FlowSample, solve_sample};
pub use solve::{LatticeFlow, solve_lattice};
