//! What the training test files share: a tiny generated dataset and one lock, because
//! Burn's flex generator is global, so a weight initialisation or a posterior draw in one
//! test would shift the random stream of another running at the same time.

use fiberflow_data::generate::{GeneratorConfig, generate_sample};
use fiberflow_data::{DatasetWriter, Silent, SplitMode};
use fiberflow_geometry::layout::SliceGrid;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the lock for the rest of the test.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Eight 16×16×3 samples of generator seed `seed` in `dir`: 5 train, 1 val, 2 test.
pub fn tiny_dataset(dir: &Path, seed: u64) {
    let mut cfg = GeneratorConfig::default();
    cfg.packing.window_um = 12.0;
    cfg.packing.radius_mean_um = 2.0;
    cfg.packing.radius_std_um = 0.1;
    cfg.vf = [0.3, 0.4];
    cfg.packing_attempts = 20;
    let grid = SliceGrid {
        size: 16,
        slices: 3,
        pitch_um: 2.0,
    };
    let writer = DatasetWriter::create_or_resume(dir, cfg.header(&grid, seed)).unwrap();
    for i in 0..8 {
        let (sample, record) = generate_sample(&cfg, &grid, seed, i).unwrap();
        writer.write(i, &sample, record).unwrap();
    }
    writer
        .finalize(8, SplitMode::Fiberflow, &mut Silent)
        .unwrap();
}
