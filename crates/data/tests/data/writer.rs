//! Resumable writing, finalising, shards and merging, and manifests that disagree with files.

use std::fs;

use fiberflow_data::manifest::MANIFEST_FILE;
use fiberflow_data::writer::sample_file;
use fiberflow_data::{Dataset, DatasetWriter, Manifest, Silent, SplitMode, Splits, merge};

use crate::common::{dataset, header, record, sample, write_samples};

#[test]
fn resume_after_a_kill_redoes_only_what_is_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let writer = write_samples(dir.path(), 3, |_| true);
    let complete = fs::read(dir.path().join(sample_file(1))).unwrap();
    let complete_record = fs::read(dir.path().join("samples/000001.json")).unwrap();

    // Kill 1: during the sample file of 3 (only a temporary file exists).
    fs::write(
        dir.path().join("samples/.000003.safetensors.999.tmp"),
        b"half a sample",
    )
    .unwrap();
    // Kill 2: between the sample file of 1 and its record.
    fs::remove_file(dir.path().join("samples/000001.json")).unwrap();
    // Kill 3: a record whose sample file was lost.
    fs::remove_file(dir.path().join(sample_file(2))).unwrap();
    drop(writer);

    let writer = DatasetWriter::create_or_resume(dir.path(), header()).unwrap();
    let done: Vec<bool> = (0..4).map(|i| writer.is_done(i)).collect();
    assert_eq!(done, [true, false, false, false]);
    assert!(
        !dir.path()
            .join("samples/.000003.safetensors.999.tmp")
            .exists(),
        "leftover temporary files are cleaned on resume"
    );

    for i in 1..4 {
        writer.write(i, &sample(i), record(i)).unwrap();
    }
    assert!((0..4).all(|i| writer.is_done(i)));
    assert_eq!(
        fs::read(dir.path().join(sample_file(1))).unwrap(),
        complete,
        "rewrite is byte-identical"
    );
    assert_eq!(
        fs::read(dir.path().join("samples/000001.json")).unwrap(),
        complete_record
    );
}

#[test]
fn a_corrupt_sample_file_is_not_done() {
    let dir = tempfile::tempdir().unwrap();
    let writer = write_samples(dir.path(), 1, |_| true);
    let path = dir.path().join(sample_file(0));
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(!writer.is_done(0));
}

#[test]
fn resuming_with_a_different_header_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    write_samples(dir.path(), 1, |_| true);
    let mut other = header();
    other.generator["seed"] = 8.into();
    other.shape.width = 3;
    let err = DatasetWriter::create_or_resume(dir.path(), other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("header.json"), "{err}");
    assert!(err.contains("different shape, generator"), "{err}");
    assert!(err.contains("new output directory"), "{err}");
    // The same header resumes.
    DatasetWriter::create_or_resume(dir.path(), header()).unwrap();
}

#[test]
fn writing_checks_index_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let writer = DatasetWriter::create_or_resume(dir.path(), header()).unwrap();
    let err = writer
        .write(1, &sample(1), record(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record has index 0 but is written as sample 1"),
        "{err}"
    );
    let mut wide = sample(0);
    wide.domain = ndarray::Array4::ones((1, 1, 2, 3));
    let err = writer.write(0, &wide, record(0)).unwrap_err().to_string();
    assert!(
        err.contains("000000.safetensors") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn finalize_lists_missing_samples_then_writes_all_files() {
    let dir = tempfile::tempdir().unwrap();
    let writer = write_samples(dir.path(), 5, |i| i != 2 && i != 4);
    let err = writer
        .finalize(5, SplitMode::Fiberflow, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 of 5 samples are missing: 2, 4"), "{err}");
    assert!(err.contains("re-run the generator"), "{err}");
    let err = writer
        .finalize(2, SplitMode::Fiberflow, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sample 3 lies beyond the 2 samples expected"),
        "{err}"
    );

    for i in [2, 4] {
        writer.write(i, &sample(i), record(i)).unwrap();
    }
    let dataset = writer
        .finalize(5, SplitMode::Fiberflow, &mut Silent)
        .unwrap();
    for file in [
        "dataset.json",
        "splits.json",
        "statistics.json",
        "header.json",
    ] {
        assert!(dir.path().join(file).exists(), "{file}");
    }
    assert_eq!(
        dataset.manifest.samples[3].file,
        "samples/000003.safetensors"
    );
    assert_eq!(dataset.manifest.samples[3].seed, 1003);
    assert_eq!(dataset.splits, Splits::new(5, SplitMode::Fiberflow));

    // Finalizing again is idempotent and keeps the split and statistics.
    let stats = fs::read(dir.path().join("statistics.json")).unwrap();
    let again = writer
        .finalize(5, SplitMode::Fiberflow, &mut Silent)
        .unwrap();
    assert_eq!(again.manifest, dataset.manifest);
    assert_eq!(fs::read(dir.path().join("statistics.json")).unwrap(), stats);
}

#[test]
fn manifest_disagreeing_with_files_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 4, SplitMode::Fiberflow);
    Dataset::open(dir.path()).unwrap();

    let path = dir.path().join(sample_file(2));
    let saved = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("000002.safetensors")
            && err.contains("listed in dataset.json as sample 2 but missing"),
        "{err}"
    );

    // A sample of another shape in place of sample 2.
    let mut wide = sample(2);
    for field in fiberflow_data::Field::EVERY {
        let c = field.channels();
        *wide.field_mut(field).unwrap() = ndarray::Array4::zeros((1, c, 2, 3));
    }
    wide.write(&path).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("000002.safetensors")
            && err.contains("has shape 1×2×3 (S×H×W), but dataset.json says 1×2×2"),
        "{err}"
    );

    // A truncated sample file.
    fs::write(&path, &saved[..saved.len() - 1]).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("000002.safetensors") && err.contains("corrupt or truncated"),
        "{err}"
    );

    // A manifest listing more samples than the split covers.
    fs::write(&path, &saved).unwrap();
    let mut manifest = Manifest::load(dir.path()).unwrap();
    let mut extra = manifest.samples[0].clone();
    extra.index = 4;
    manifest.samples.push(extra);
    manifest.save(dir.path()).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("splits.json") && err.contains("splits 4 samples but the dataset has 5"),
        "{err}"
    );
    assert!(err.contains("fiberflow dataset split"), "{err}");

    fs::write(dir.path().join(MANIFEST_FILE), b"{").unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("dataset.json") && err.contains("invalid JSON"),
        "{err}"
    );
}

#[test]
fn shards_merge_into_the_dataset_a_single_run_makes() {
    let root = tempfile::tempdir().unwrap();
    let shards: Vec<_> = (0..3)
        .map(|i| root.path().join(format!("shard{i}")))
        .collect();
    for (i, dir) in shards.iter().enumerate() {
        let shard: fiberflow_data::Shard = format!("{i}/3").parse().unwrap();
        let writer = write_samples(dir, 7, |k| shard.contains(k));
        assert!(
            writer
                .finalize(7, SplitMode::Fiberflow, &mut Silent)
                .is_err(),
            "a shard alone is incomplete"
        );
    }
    let merged = merge(&shards, &root.path().join("merged"), Some(7), &mut Silent).unwrap();
    let single = dataset(&root.path().join("single"), 7, SplitMode::Fiberflow);
    assert_eq!(merged.manifest, single.manifest);
    assert_eq!(merged.splits, single.splits);
    for i in 0..7 {
        let file = sample_file(i);
        assert_eq!(
            fs::read(root.path().join("merged").join(&file)).unwrap(),
            fs::read(root.path().join("single").join(&file)).unwrap()
        );
    }
    assert_eq!(
        fs::read(root.path().join("merged/statistics.json")).unwrap(),
        fs::read(root.path().join("single/statistics.json")).unwrap()
    );
}

#[test]
fn merge_refuses_duplicates_gaps_and_mismatched_headers() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    let b = root.path().join("b");
    write_samples(&a, 4, |i| i % 2 == 0);
    write_samples(&b, 4, |i| i != 3);
    let out = root.path().join("out");
    let err = merge(&[a.clone(), b.clone()], &out, None, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sample 0 is also in") && err.contains("000000.safetensors"),
        "{err}"
    );

    let c = root.path().join("c");
    write_samples(&c, 4, |i| i == 1);
    let err = merge(&[a.clone(), c.clone()], &out, Some(4), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lack 1 of samples 0..4: 3"), "{err}");
    let err = merge(std::slice::from_ref(&a), &out, None, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lack 1 of samples 0..3: 1"), "{err}");

    let d = root.path().join("d");
    let mut other = header();
    other.solver["tolerance"] = 1e-3.into();
    let writer = DatasetWriter::create_or_resume(&d, other).unwrap();
    writer.write(1, &sample(1), record(1)).unwrap();
    let err = merge(&[a, d], &out, None, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("d/header.json") && err.contains("solver") && err.contains("same arguments"),
        "{err}"
    );
    assert!(!out.join("dataset.json").exists());
}
