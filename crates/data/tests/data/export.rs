//! NumPy export: whole dataset and one subset, read back with ndarray-npy.

use fiberflow_data::{DatasetWriter, Field, Silent, SplitMode, Subset, export_npy};
use ndarray::{Array1, Array2, Array5, Axis};
use ndarray_npy::read_npy;

use crate::common::{SHAPE, dataset, header, record, sample};

#[test]
fn export_writes_every_field_with_a_leading_sample_axis() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(&dir.path().join("ds"), 5, SplitMode::Fiberflow);
    let out = dir.path().join("npy");
    let files = export_npy(&ds, &out, None, &mut Silent).unwrap();
    assert_eq!(files.len(), 7);

    for field in Field::EVERY {
        let array: Array5<f32> = read_npy(out.join(format!("{}.npy", field.name()))).unwrap();
        let [s, c, h, w] = SHAPE.dims(field);
        assert_eq!(array.shape(), [5, s, c, h, w]);
        for i in 0..5 {
            assert_eq!(
                array.index_axis(Axis(0), i),
                sample(i).field(field).unwrap(),
                "{} of {i}",
                field.name()
            );
        }
    }
    let dxyz: Array2<f64> = read_npy(out.join("dxyz.npy")).unwrap();
    assert_eq!(dxyz.row(3).to_vec(), sample(3).dxyz);
    let indices: Array1<u64> = read_npy(out.join("indices.npy")).unwrap();
    assert_eq!(indices.to_vec(), [0, 1, 2, 3, 4]);
    assert!(
        std::fs::read_dir(&out).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
}

#[test]
fn export_of_a_subset_keeps_split_order() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(&dir.path().join("ds"), 10, SplitMode::Reference);
    let out = dir.path().join("test");
    export_npy(&ds, &out, Some(Subset::Test), &mut Silent).unwrap();
    let indices: Array1<u64> = read_npy(out.join("indices.npy")).unwrap();
    // Reference split of 10 (see split.rs): test = [2, 7].
    assert_eq!(indices.to_vec(), [2, 7]);
    let u: Array5<f32> = read_npy(out.join("U.npy")).unwrap();
    assert_eq!(u.index_axis(Axis(0), 1), sample(7).u);
}

#[test]
fn export_without_p2d_removes_the_p2d_of_an_earlier_export() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("npy");
    let with = dataset(&dir.path().join("with"), 3, SplitMode::Fiberflow);
    export_npy(&with, &out, None, &mut Silent).unwrap();
    assert!(out.join("p_2d.npy").exists());

    // An imported reference dataset has no 2D pressure.
    let writer = DatasetWriter::create_or_resume(dir.path().join("without"), header()).unwrap();
    for i in 0..3 {
        let mut s = sample(i);
        s.p2d = None;
        writer.write(i, &s, record(i)).unwrap();
    }
    let without = writer
        .finalize(3, SplitMode::Fiberflow, &mut Silent)
        .unwrap();
    let files = export_npy(&without, &out, None, &mut Silent).unwrap();
    assert_eq!(files.len(), 6);
    assert!(!out.join("p_2d.npy").exists());
}
