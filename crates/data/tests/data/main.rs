//! Integration tests of the data crate through its public API, on tiny datasets.

mod common;
mod export;
mod fetch;
mod info;
mod loader;
mod reference_import;
mod sample_files;
mod statistics;
mod writer;
