//! Import of `.pt` fixtures written by PyTorch itself (scripts/make_reference_fixtures.py).

use std::fs;
use std::path::{Path, PathBuf};

use fiberflow_data::reference::SOURCE_FILE;
use fiberflow_data::torch_save::{TorchDType, TorchWriter};
use fiberflow_data::{Dataset, Field, Silent, SplitMode, Statistics, import_reference};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

/// The formulas of scripts/make_reference_fixtures.py.
fn u(n: usize, s: usize, c: usize, h: usize, w: usize) -> f32 {
    let code = (n * 4096 + s * 512 + c * 128 + h * 16 + w) as f64;
    let sign = if c == 1 { -1.0 } else { 1.0 };
    (sign * code / 1024.0 * 1e-3) as f32
}

fn u2d(n: usize, s: usize, c: usize, h: usize, w: usize) -> f32 {
    if c == 2 {
        0.0
    } else {
        (0.5 * f64::from(u(n, s, c, h, w))) as f32
    }
}

#[test]
fn imported_values_equal_the_values_pytorch_saved() {
    let out = tempfile::tempdir().unwrap();
    let ds = import_reference(&fixtures(), out.path(), &mut Silent).unwrap();
    assert_eq!(ds.len(), 4);
    let shape = ds.manifest.header.shape;
    assert_eq!((shape.slices, shape.height, shape.width), (3, 8, 8));
    assert_eq!(ds.manifest.header.voxel_size.dz_m, 5e-6);
    assert_eq!(ds.manifest.header.voxel_size.dx_m, 1e-7);

    for n in 0..4 {
        let sample = ds.open_sample(n).unwrap().load().unwrap();
        for ((s, c, h, w), v) in sample.u.indexed_iter() {
            assert_eq!(*v, u(n, s, c, h, w), "U[{n}, {s}, {c}, {h}, {w}]");
        }
        for ((s, c, h, w), v) in sample.u2d.indexed_iter() {
            assert_eq!(*v, u2d(n, s, c, h, w), "U_2d[{n}, {s}, {c}, {h}, {w}]");
        }
        for ((s, _, h, w), v) in sample.p.indexed_iter() {
            assert_eq!(*v, (n * 64 + s * 16 + h + w) as f32 * 0.5);
        }
        for ((s, _, h, w), v) in sample.domain.indexed_iter() {
            assert_eq!(*v, if (n + s + h + w) % 3 != 0 { 1.0 } else { 0.0 });
        }
        let a = (1 + n) as f64;
        assert_eq!(sample.dxyz, [a * 1e-7, a * 1e-7, 5e-6]);
        let record = &ds.manifest.samples[n];
        assert_eq!(record.porosity, sample.porosity());
        assert!(record.k_3d_m2.is_nan());
        assert_eq!(record.extra["reference_index"], n);
    }

    // python3 -c 'import random; idx=list(range(4)); random.Random(2024).shuffle(idx); print(idx)'
    // gives [2, 1, 0, 3]; int(0.7*4) = 2, int(0.15*4) = 0.
    assert_eq!(ds.splits.mode, SplitMode::Reference);
    assert_eq!(
        (
            &ds.splits.train[..],
            &ds.splits.val[..],
            &ds.splits.test[..]
        ),
        (&[2, 1][..], &[][..], &[0, 3][..])
    );
    let stats = Statistics::load(&ds).unwrap();
    // max |vx| over the training samples 1 and 2 is U[2, 2, 0, 7, 7].
    assert_eq!(stats.u.vx.max_abs, f64::from(u(2, 2, 0, 7, 7)));

    // Re-running resumes: nothing changes.
    let manifest = fs::read(out.path().join("dataset.json")).unwrap();
    let again = import_reference(&fixtures().join("x"), out.path(), &mut Silent).unwrap();
    assert_eq!(fs::read(out.path().join("dataset.json")).unwrap(), manifest);
    let reopened = Dataset::open(out.path()).unwrap();
    // (Manifests with unknown = NaN permeabilities compare by hash, NaN != NaN.)
    assert_eq!(
        reopened.manifest.sha256(out.path()).unwrap(),
        again.manifest.sha256(out.path()).unwrap()
    );
    assert!(
        fs::read_dir(out.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
    assert_eq!(
        again.open_sample(3).unwrap().read(Field::P).unwrap()[[0, 0, 0, 0]],
        96.0
    );
}

#[test]
fn a_truncated_or_missing_pt_file_is_a_clear_error() {
    let src = tempfile::tempdir().unwrap();
    let x = src.path().join("x");
    fs::create_dir(&x).unwrap();
    for entry in fs::read_dir(fixtures().join("x")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), x.join(entry.file_name())).unwrap();
    }
    let bytes = fs::read(x.join("U_2d.pt")).unwrap();
    fs::write(x.join("U_2d.pt"), &bytes[..bytes.len() - 100]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = import_reference(src.path(), out.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("U_2d.pt") && err.contains("corrupt or truncated"),
        "{err}"
    );

    fs::remove_file(x.join("p.pt")).unwrap();
    fs::write(x.join("U_2d.pt"), &bytes).unwrap();
    let err = import_reference(src.path(), out.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("p.pt") && err.contains("not found") && err.contains("SRC/x/"),
        "{err}"
    );
}

#[test]
fn mismatched_sample_counts_are_an_error_naming_the_file() {
    let src = tempfile::tempdir().unwrap();
    for name in ["U.pt", "U_2d.pt", "domain.pt", "dxyz.pt"] {
        fs::copy(fixtures().join("x").join(name), src.path().join(name)).unwrap();
    }
    // A p.pt with the shape of another tensor (the fixture's dict_root.pt: (2, 3)).
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch/dict_root.pt"),
        src.path().join("p.pt"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = import_reference(src.path(), out.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("p.pt") && err.contains("`p` has shape [2, 3]"),
        "{err}"
    );
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                files.push((rel, fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn import_export_import_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, exported, second) = (
        tmp.path().join("first"),
        tmp.path().join("exported"),
        tmp.path().join("second"),
    );
    let ds = import_reference(&fixtures(), &first, &mut Silent).unwrap();
    let export = fiberflow_data::export_reference(&ds, &exported, &mut Silent).unwrap();
    // Imported with the reference's own split: the files keep the dataset order.
    assert!(export.identity);
    assert_eq!(export.order, [0, 1, 2, 3]);
    import_reference(&exported, &second, &mut Silent).unwrap();
    // The datasets are identical; only the record of the source files (their hashes)
    // differs, since the exported files are not PyTorch's.
    let without_source = |dir: &Path| {
        let mut files = tree(dir);
        files.retain(|(path, _)| path != Path::new(SOURCE_FILE));
        files
    };
    let (a, b) = (without_source(&first), without_source(&second));
    assert_eq!(a.len(), b.len());
    for ((pa, da), (pb, db)) in a.iter().zip(&b) {
        assert_eq!(pa, pb);
        assert!(
            da == db,
            "{} differs after export and re-import",
            pa.display()
        );
    }
    // statistics.json holds the training split's statistics under the reference's names.
    let stats: serde_json::Value =
        serde_json::from_slice(&fs::read(exported.join("statistics.json")).unwrap()).unwrap();
    let s = Statistics::load(&ds).unwrap();
    assert_eq!(stats["U_per_component"]["max_w"], s.u.vz.max_abs);
    assert_eq!(stats["U_2d_per_component"]["mean_u"], s.u2d.vx.mean_abs);
}

/// A copy of the fixtures whose `p.pt` is PyTorch's plus `delta`, written by the
/// export's own `torch.save` writer: another valid source of the same shapes.
fn other_source(dir: &Path, delta: f32) -> PathBuf {
    let x = dir.join("x");
    fs::create_dir_all(&x).unwrap();
    for name in ["U.pt", "U_2d.pt", "domain.pt", "dxyz.pt"] {
        fs::copy(fixtures().join("x").join(name), x.join(name)).unwrap();
    }
    let path = x.join("p.pt");
    let file = fs::File::create(&path).unwrap();
    let mut writer = TorchWriter::new(file, &path, TorchDType::F32, &[4, 3, 1, 8, 8]).unwrap();
    for n in 0..4 {
        for s in 0..3 {
            for h in 0..8 {
                for w in 0..8 {
                    let v = (n * 64 + s * 16 + h + w) as f32 * 0.5 + delta;
                    writer.write(&v.to_le_bytes()).unwrap();
                }
            }
        }
    }
    writer.finish().unwrap();
    dir.to_path_buf()
}

/// p[n, 0, 0, 0, 0] of each sample of the dataset in `dir`.
fn first_pressures(dir: &Path) -> Vec<f32> {
    let ds = Dataset::open(dir).unwrap();
    (0..ds.len())
        .map(|i| ds.open_sample(i).unwrap().read(Field::P).unwrap()[[0, 0, 0, 0]])
        .collect()
}

#[test]
fn a_resume_with_another_source_is_refused_and_never_mixes() {
    let tmp = tempfile::tempdir().unwrap();
    let b = other_source(&tmp.path().join("b"), 1000.0);
    // B on its own is a valid source.
    let alone = tmp.path().join("alone");
    import_reference(&b, &alone, &mut Silent).unwrap();
    assert_eq!(first_pressures(&alone), [1000.0, 1032.0, 1064.0, 1096.0]);

    // An import of A interrupted after two samples: what a kill leaves.
    let out = tmp.path().join("out");
    import_reference(&fixtures(), &out, &mut Silent).unwrap();
    for file in ["dataset.json", "splits.json", "statistics.json"] {
        fs::remove_file(out.join(file)).unwrap();
    }
    for i in [2, 3] {
        fs::remove_file(out.join(format!("samples/{i:06}.json"))).unwrap();
        fs::remove_file(out.join(format!("samples/{i:06}.safetensors"))).unwrap();
    }
    let before = tree(&out);
    let err = import_reference(&b, &out, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds an interrupted import of another source")
            && err.contains("(p.pt not as recorded")
            && err.contains(SOURCE_FILE)
            && err.contains("use a new --out"),
        "{err}"
    );
    assert_eq!(tree(&out), before, "a refused resume changes nothing");

    // The original source resumes, and the dataset is A's throughout.
    import_reference(&fixtures(), &out, &mut Silent).unwrap();
    assert_eq!(first_pressures(&out), [0.0, 32.0, 64.0, 96.0]);
    let err = import_reference(&b, &out, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds an import of another source"), "{err}");

    // A dataset without the record (another generator, an older import) cannot be
    // told apart from another source.
    fs::remove_file(out.join(SOURCE_FILE)).unwrap();
    let err = import_reference(&fixtures(), &out, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("holds a dataset without {SOURCE_FILE}")),
        "{err}"
    );
}
