//! Property test of the run-folder readers: burnpack weights and run logs damaged by
//! seeded truncations and byte flips load as a clear error or (for harmless flips) as
//! weights, never as a panic, and within a bounded heap.
//!
//! Cap: the heap may grow by at most 64 MiB over the test's start while reading any
//! damaged file (the files are a few kB; a reader trusting a damaged length field would
//! blow far past it). Measured by the counting allocator below, which serves this whole
//! test binary.

use burn::prelude::*;
use fiberflow_model::predict::TrainedModel;
use fiberflow_model::run::checkpoint;
use fiberflow_model::vae::VaeConfig;
use fiberflow_testkit::CountingAllocator;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{AssertUnwindSafe, catch_unwind};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::with_cap(CAP);

const CAP: usize = 64 << 20;

/// The tests run one at a time: the heap counters are shared.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `bytes` truncated, or with a few bytes flipped, as case `case` of a seeded stream.
fn damaged(bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if rng.random_bool(0.3) {
        out.truncate(rng.random_range(0..bytes.len()));
    } else {
        for _ in 0..rng.random_range(1..=4) {
            let i = rng.random_range(0..out.len());
            out[i] ^= 1 << rng.random_range(0..8);
        }
    }
    out
}

/// Runs `read` on `cases` damaged copies of `bytes` written to `path`, asserting no panic
/// and a bounded heap; returns how many loaded without error.
fn fuzz(bytes: &[u8], path: &std::path::Path, cases: u64, read: impl Fn() -> bool) -> usize {
    let mut loaded = 0;
    for case in 0..cases {
        let mut rng = ChaCha8Rng::seed_from_u64(case);
        std::fs::write(path, damaged(bytes, &mut rng)).unwrap();
        let base = fiberflow_testkit::reset_peak();
        let ok = catch_unwind(AssertUnwindSafe(&read))
            .unwrap_or_else(|_| panic!("case {case} of {} panicked", path.display()));
        let grown = fiberflow_testkit::peak().saturating_sub(base);
        assert!(grown < CAP, "case {case}: the heap grew by {grown} bytes");
        loaded += usize::from(ok);
    }
    loaded
}

#[test]
fn damaged_weights_are_an_error_never_a_panic() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex();
    dev.seed(1);
    let cfg = VaeConfig::new()
        .with_channels(vec![4, 8])
        .with_latent_channels(2);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("best_model.bpk");
    checkpoint::save(&cfg.init(&dev).unwrap(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let loaded = fuzz(&bytes, &path, 1500, || {
        checkpoint::load(cfg.init(&dev).unwrap(), &path).is_ok()
    });
    // Truncations never load; flips inside weight values may.
    assert!(loaded < 1500, "{loaded}");
}

#[test]
fn damaged_run_logs_are_an_error_never_a_panic() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let log = serde_json::json!({
        "config": fiberflow_model::train::diffusion::DiffusionTrainConfig::default(),
        "vae": tmp.path().join("vae"),
        "vae_key": "0".repeat(64),
        "dataset": tmp.path().join("data"),
        "dataset_manifest_sha256": "0".repeat(64),
        "scales": { "residual": true, "target": 1.0, "condition": 1.0 },
        "history": [],
        "best_epoch": null,
        "best_val_error": 0.5,
        "parameters": 10,
    });
    let bytes = serde_json::to_vec_pretty(&log).unwrap();
    let path = tmp.path().join("log.json");
    // The intact log parses: its error is the VAE run it names, which does not exist.
    std::fs::write(&path, &bytes).unwrap();
    let intact = TrainedModel::load(tmp.path(), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        intact.contains(&tmp.path().join("vae").display().to_string()),
        "{intact}"
    );
    fuzz(&bytes, &path, 1500, || {
        TrainedModel::load(tmp.path(), &dev).is_ok()
    });
}
