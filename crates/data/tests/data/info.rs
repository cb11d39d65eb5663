//! `dataset info`: summary values, JSON round trip and the text people read.

use fiberflow_data::info::StatisticsState;
use fiberflow_data::statistics::STATISTICS_FILE;
use fiberflow_data::{DatasetInfo, SplitMode};

use crate::common::dataset;

#[test]
fn info_summarises_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 7, SplitMode::Reference);
    let info = DatasetInfo::gather(&ds).unwrap();
    assert_eq!(info.n_samples, 7);
    assert_eq!(
        (info.split.train, info.split.val, info.split.test),
        (4, 1, 2)
    );
    assert_eq!(info.converged, 6);
    let k = info.k_3d_m2.unwrap();
    assert_eq!((k.count, k.min, k.max), (7, 1e-12, 7e-12));
    assert!((k.mean - 4e-12).abs() < 1e-24);
    assert_eq!(info.fibre_volume_fraction.unwrap().mean, 0.25);
    assert!(matches!(info.statistics, StatisticsState::Current { .. }));

    let json = serde_json::to_string(&info).unwrap();
    assert_eq!(serde_json::from_str::<DatasetInfo>(&json).unwrap(), info);

    let text = info.to_string();
    for needle in [
        "samples     7 of 1×2×2 (S×H×W)",
        "reference (seed 2024): train 4, val 1, test 2",
        "converged   6 of 7",
        "K_3d [m²]",
        "max |vx| 7.000e2",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }

    std::fs::remove_file(dir.path().join(STATISTICS_FILE)).unwrap();
    let info = DatasetInfo::gather(&ds).unwrap();
    assert_eq!(info.statistics, StatisticsState::Missing);
    assert!(info.to_string().contains("statistics  missing"));
}
