//! Sample files: round trip, and a clear error naming the file for every kind of bad input.

use std::path::{Path, PathBuf};

use fiberflow_data::{DataError, Field, SampleFile};
use safetensors::{Dtype, tensor::TensorView};

use crate::common::sample;

fn written(dir: &Path) -> PathBuf {
    let path = dir.join("s.safetensors");
    sample(2).write(&path).unwrap();
    path
}

/// Writes a safetensors file from (name, dtype, shape, little-endian bytes).
fn craft(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (*name, TensorView::new(*dtype, shape.clone(), data).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// The tensors of `sample(0)` with `replace` applied, for crafting bad files.
fn tensors_with(
    replace: impl Fn(&mut Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)>),
) -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
    let s = sample(0);
    let mut tensors: Vec<_> = Field::EVERY
        .iter()
        .map(|&f| {
            let a = s.field(f).unwrap();
            (
                f.name(),
                Dtype::F32,
                a.shape().to_vec(),
                f32_bytes(a.iter().copied()),
            )
        })
        .collect();
    tensors.push((
        "dxyz",
        Dtype::F64,
        vec![3],
        s.dxyz.iter().flat_map(|v| v.to_le_bytes()).collect(),
    ));
    replace(&mut tensors);
    tensors
}

fn open_err(path: &Path) -> String {
    let err = SampleFile::open(path)
        .and_then(|f| f.load())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "error must name the file: {err}"
    );
    err
}

#[test]
fn roundtrip_is_exact_and_lazy_reads_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = written(dir.path());
    let file = SampleFile::open(&path).unwrap();
    assert_eq!(file.shape(), sample(2).shape());
    assert_eq!(file.dxyz(), sample(2).dxyz);
    assert_eq!(file.load().unwrap(), sample(2));
    assert_eq!(file.read(Field::P).unwrap(), sample(2).p);
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&std::fs::read(&path).unwrap())
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect();
    for name in ["domain", "U_2d", "U", "p", "p_2d", "dxyz"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
}

#[test]
fn missing_truncated_and_garbage_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(open_err(&dir.path().join("absent.safetensors")).contains("not found"));

    let path = written(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    assert!(open_err(&path).contains("corrupt or truncated"));

    std::fs::write(&path, &bytes[..4]).unwrap();
    assert!(open_err(&path).contains("corrupt or truncated"));

    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    assert!(open_err(&path).contains("corrupt or truncated"));
}

#[test]
fn missing_tensor_wrong_dtype_and_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");

    craft(&path, &tensors_with(|t| t.retain(|(n, ..)| *n != "p")));
    assert!(open_err(&path).contains("missing tensor `p`"));

    craft(
        &path,
        &tensors_with(|t| {
            let u = &mut t[2];
            u.1 = Dtype::F64;
            u.3 = u
                .3
                .chunks(4)
                .flat_map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
                .collect();
        }),
    );
    assert!(open_err(&path).contains("tensor `U` has dtype F64, expected F32"));

    craft(
        &path,
        &tensors_with(|t| {
            let u2d = &mut t[1];
            u2d.2 = vec![1, 2, 2, 2];
            u2d.3.truncate(8 * 4);
        }),
    );
    let err = open_err(&path);
    assert!(
        err.contains("`U_2d` has shape [1, 2, 2, 2]") && err.contains("[1, 3, 2, 2]"),
        "{err}"
    );

    craft(&path, &tensors_with(|t| t[0].2 = vec![1, 4, 1, 1]));
    let err = open_err(&path);
    assert!(
        err.contains("`domain` has shape [1, 4, 1, 1], expected (S, 1, H, W)"),
        "{err}"
    );

    craft(
        &path,
        &tensors_with(|t| t[5] = ("dxyz", Dtype::F64, vec![2], vec![0; 16])),
    );
    assert!(open_err(&path).contains("`dxyz` has shape [2]"));

    // p_2d is optional (reference imports lack it), but checked when present.
    craft(&path, &tensors_with(|t| t.retain(|(n, ..)| *n != "p_2d")));
    let file = SampleFile::open(&path).unwrap();
    assert!(!file.has(Field::P2d) && file.has(Field::P));
    assert_eq!(file.load().unwrap().p2d, None);
    let err = file.read(Field::P2d).unwrap_err().to_string();
    assert!(err.contains("missing tensor `p_2d`"), "{err}");
    craft(&path, &tensors_with(|t| t[4].2 = vec![1, 1, 4, 1]));
    let err = open_err(&path);
    assert!(err.contains("`p_2d` has shape [1, 1, 4, 1]"), "{err}");
}

#[test]
fn finite_but_absurd_values_are_refused_by_the_reader() {
    // The probe's case: 1e33 m/s in U made every metric ≈ 1e33 without a word.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absurd.safetensors");
    craft(
        &path,
        &tensors_with(|t| t[2].3[6 * 4..7 * 4].copy_from_slice(&1e33f32.to_le_bytes())),
    );
    let file = SampleFile::open(&path).unwrap();
    let err = file.read(Field::U).unwrap_err().to_string();
    assert!(
        err.contains("`U` holds 1e33 m/s at index [0, 1, 1, 0], beyond any Stokes flow"),
        "{err}"
    );
    assert!(file.load().is_err());
    assert!(file.read(Field::P).is_ok(), "other fields stay readable");
}

#[test]
fn non_finite_values_name_field_and_first_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.safetensors");
    craft(
        &path,
        &tensors_with(|t| {
            // U index [0, 1, 1, 0] is flat position 1*4 + 1*2 + 0 = 6.
            t[2].3[6 * 4..7 * 4].copy_from_slice(&f32::NAN.to_le_bytes());
            t[2].3[9 * 4..10 * 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        }),
    );
    let err = open_err(&path);
    assert!(
        err.contains("`U` holds a non-finite value (NaN) at index [0, 1, 1, 0]"),
        "{err}"
    );
    let file = SampleFile::open(&path).unwrap();
    assert!(file.read(Field::P).is_ok(), "other fields stay readable");
    assert!(matches!(
        file.read(Field::U),
        Err(DataError::NonFinite { .. })
    ));

    // Writing refuses the same defects, naming the target file.
    let mut s = sample(0);
    s.p[[0, 0, 1, 1]] = f32::NEG_INFINITY;
    let target = dir.path().join("out.safetensors");
    let err = s.write(&target).unwrap_err().to_string();
    assert!(
        err.contains("out.safetensors")
            && err.contains("`p` holds a non-finite value (-inf) at index [0, 0, 1, 1]"),
        "{err}"
    );
    assert!(!target.exists());
}

#[test]
fn validation_rejects_bad_masks_shapes_and_voxel_sizes() {
    let mut s = sample(0);
    s.domain[[0, 0, 0, 1]] = 0.5;
    let err = s.validate().unwrap_err().to_string();
    assert!(
        err.contains("`domain` must be 0 (fibre) or 1 (fluid), found 0.5 at index [0, 0, 0, 1]"),
        "{err}"
    );

    let mut s = sample(0);
    s.u = ndarray::Array4::zeros((1, 2, 2, 2));
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .contains("`U` has shape [1, 2, 2, 2]")
    );

    let mut s = sample(0);
    s.p = ndarray::Array4::zeros((1, 1, 2, 3));
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .contains("`p` has shape [1, 1, 2, 3]")
    );

    let mut s = sample(0);
    s.p2d = Some(ndarray::Array4::from_elem((1, 1, 2, 2), f32::NAN));
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("p_2d") && err.contains("NaN"), "{err}");

    let mut s = sample(0);
    s.dxyz[2] = 0.0;
    assert!(s.validate().unwrap_err().to_string().contains("dxyz"));
    s.dxyz[2] = f64::NAN;
    assert!(s.validate().is_err());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neg.safetensors");
    craft(
        &path,
        &tensors_with(|t| {
            t[5].3 = [1e-6f64, -1e-6, 5e-6]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        }),
    );
    assert!(open_err(&path).contains("finite positive lengths"));
}
