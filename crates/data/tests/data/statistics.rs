//! Train-only statistics: hand-computed values, independence from val/test, reproducibility,
//! write-once and stale detection.

use std::fs;

use fiberflow_data::statistics::{ComponentStats, STATISTICS_FILE};
use fiberflow_data::writer::sample_file;
use fiberflow_data::{DataError, Dataset, Silent, SplitMode, Splits, Statistics};

use crate::common::{dataset, sample};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1e-30)
}

fn assert_component(got: &ComponentStats, want: [f64; 9]) {
    let got_values = [
        got.max_abs,
        got.mean_abs,
        got.mean,
        got.std,
        got.p1,
        got.p5,
        got.p50,
        got.p95,
        got.p99,
    ];
    for (g, w) in got_values.iter().zip(want) {
        assert!(close(*g, w), "got {got:?}, want {want:?}");
    }
}

/// The reference split of 7 samples (python3 -c 'import random; idx=list(range(7));
/// random.Random(2024).shuffle(idx); print(idx)' gives [6, 5, 0, 2, 4, 1, 3]): train
/// {6, 5, 0, 2}, val {4}, test {1, 3}.
fn seven(dir: &std::path::Path) -> Dataset {
    let ds = dataset(dir, 7, SplitMode::Reference);
    assert_eq!(ds.splits.train, [6, 5, 0, 2]);
    assert_eq!(ds.splits.val, [4]);
    ds
}

#[test]
fn hand_computed_values_from_the_training_samples() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Statistics::load(&seven(dir.path())).unwrap();
    // Train scales a = i + 1 ∈ {1, 3, 6, 7}, Σa = 17. Fluid vx = a·{1, 2, 3}: 12 values,
    // mean 6·17/12 = 8.5; the fibre voxel holds 100·a, so max |vx| = 700.
    // std and percentiles: numpy.std / numpy.percentile of those 12 values.
    assert_component(
        &stats.u.vx,
        [
            700.0,
            8.5,
            8.5,
            6.211548384528075,
            1.11,
            1.55,
            6.5,
            19.349999999999998,
            20.67,
        ],
    );
    // Fluid vy = a·{-1, 1, 0}: mean 0, mean |vy| = 2·17/12.
    assert_component(
        &stats.u.vy,
        [
            7.0,
            34.0 / 12.0,
            0.0,
            3.9791121287711073,
            -6.89,
            -6.45,
            0.0,
            6.449999999999999,
            6.890000000000001,
        ],
    );
    assert_component(&stats.u.vz, [0.0; 9]);
    assert_eq!(stats.u.max_magnitude, 700.0);
    // U_2d = U / 2.
    assert!(close(stats.u2d.vx.max_abs, 350.0) && close(stats.u2d.vx.std, 6.211548384528075 / 2.0));
    assert!(close(stats.u2d.vy.p1, -3.445));
    // Fluid p = a·{10, 20, 30}: max 210, mean 85, numpy.std 62.11548384528075.
    assert!(
        close(stats.p.max_abs, 210.0)
            && close(stats.p.mean, 85.0)
            && close(stats.p.std, 62.11548384528075)
    );
    // dx = a·1e-6.
    assert!(close(stats.dxyz.max[0], 7e-6) && close(stats.dxyz.mean[0], 4.25e-6));
    assert_eq!(stats.dxyz.max[2], 5e-6);
    assert_eq!(stats.n_fluid_voxels, 12);
    assert_eq!(stats.fingerprint.n_train, 4);
}

#[test]
fn val_and_test_samples_do_not_change_the_statistics_but_train_samples_do() {
    let dir = tempfile::tempdir().unwrap();
    let ds = seven(dir.path());
    let before = Statistics::compute(&ds, &mut Silent).unwrap();
    assert_eq!(
        before,
        Statistics::compute(&ds, &mut Silent).unwrap(),
        "reproducible"
    );

    for held_out in [4, 1, 3] {
        let mut s = sample(held_out);
        s.u.mapv_inplace(|v| v * 1000.0);
        s.p.mapv_inplace(|v| -v * 1000.0);
        s.write(&dir.path().join(sample_file(held_out))).unwrap();
    }
    assert_eq!(Statistics::compute(&ds, &mut Silent).unwrap(), before);

    let mut s = sample(0);
    s.u.mapv_inplace(|v| v * 1000.0);
    s.write(&dir.path().join(sample_file(0))).unwrap();
    assert_ne!(Statistics::compute(&ds, &mut Silent).unwrap().u, before.u);
}

#[test]
fn statistics_are_written_once_and_stale_ones_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let ds = seven(dir.path());
    let stats = Statistics::load(&ds).unwrap();
    let err = stats.save(dir.path(), false).unwrap_err();
    assert!(matches!(err, DataError::Exists { .. }));
    assert!(err.to_string().contains("--force"), "{err}");
    stats.save(dir.path(), true).unwrap();

    // A different split makes them stale.
    Splits::new(7, SplitMode::Fiberflow)
        .save(dir.path(), true)
        .unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    let err = Statistics::load(&ds).unwrap_err().to_string();
    assert!(
        err.contains("statistics.json was computed for a different split"),
        "{err}"
    );
    let command = format!("fiberflow dataset stats {}", dir.path().display());
    assert!(
        err.contains(&format!("delete it and run `{command}`")),
        "{err}"
    );

    // So does a changed manifest.
    Splits::new(7, SplitMode::Reference)
        .save(dir.path(), true)
        .unwrap();
    let mut ds = Dataset::open(dir.path()).unwrap();
    assert!(Statistics::load(&ds).is_ok());
    ds.manifest.samples[0].porosity = 0.1;
    ds.manifest.save(dir.path()).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    let err = Statistics::load(&ds).unwrap_err().to_string();
    assert!(err.contains("different dataset.json"), "{err}");

    fs::remove_file(dir.path().join(STATISTICS_FILE)).unwrap();
    let err = Statistics::load(&ds).unwrap_err().to_string();
    assert!(
        err.contains("not found") && err.contains("fiberflow dataset stats"),
        "{err}"
    );
}

#[test]
fn an_empty_training_split_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let writer = crate::common::write_samples(dir.path(), 1, |_| true);
    let err = writer
        .finalize(1, SplitMode::Fiberflow, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("training split is empty"), "{err}");
}

#[test]
fn a_train_limit_takes_nested_prefixes_and_keeps_the_statistics() {
    use fiberflow_data::Subset;
    let dir = tempfile::tempdir().unwrap();
    let full = Statistics::load(&seven(dir.path())).unwrap();
    let mut ds = Dataset::open(dir.path()).unwrap();
    ds.limit(Subset::Train, 2).unwrap();
    assert_eq!(ds.indices(Some(Subset::Train)), [6, 5]);
    assert_eq!(ds.indices(Some(Subset::Val)), [4]);
    assert_eq!(ds.indices(Some(Subset::Test)), [1, 3]);
    // The statistics of the whole training split still apply (and still load).
    assert_eq!(Statistics::load(&ds).unwrap(), full);
    ds.limit(Subset::Train, 3).unwrap();
    assert_eq!(ds.indices(Some(Subset::Train)), [6, 5, 0]);
    for bad in [0, 5] {
        let e = ds.limit(Subset::Train, bad).unwrap_err().to_string();
        assert!(
            e.contains("must lie in 1..=4, the train split's size"),
            "{e}"
        );
    }
    ds.limit(Subset::Test, 1).unwrap();
    assert_eq!(ds.indices(Some(Subset::Test)), [1]);
}
