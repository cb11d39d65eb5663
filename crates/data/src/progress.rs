//! Progress reporting for long loops (import, statistics, export, merge), so a front end
//! can draw bars while this crate stays free of any terminal code.

/// Receives the progress of long operations. Every method defaults to doing nothing.
pub trait Progress {
    /// A task of `total` steps begins.
    fn start(&mut self, _task: &str, _total: u64) {}
    /// One more step of the current task is done.
    fn step(&mut self) {}
    /// The current task is over.
    fn finish(&mut self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}
