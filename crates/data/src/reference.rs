//! Import of the reference project's dataset (`SRC/x/{domain,U_2d,U,p,dxyz}.pt`, each a
//! `torch.save`d tensor of all samples) into fiberflow's format, with the reference's
//! exact split (`splits.json` in `reference` mode) and train-only statistics.
//!
//! The `.pt` files are read with `pytorch-reader` (the standalone, ML-framework-free
//! reader behind Burn's `burn-store`). It only accepts a dictionary at the pickle root,
//! while the reference saved bare tensors, so each file is first copied into a scratch
//! archive whose `data.pkl` wraps the root as `{"tensor": root}` (two opcodes before it,
//! one after; the tensor storages are copied as they are). The reader materialises whole
//! tensors, so the import holds every field of all samples in memory at once (about
//! 2.3 GB for the reference's 100 samples of 11×256×256) and converts them sample by
//! sample.
//!
//! Accepted shapes (`N` samples, `S` slices, `H × W` pixels): `U`, `U_2d`:
//! `(N, S, 3, H, W)`; `domain`, `p`: `(N, S, 1, H, W)` or `(N, S, H, W)`; `dxyz`: `(3,)`
//! (shared by all samples) or `(N, …, 3)`, where every triple of a sample must agree to
//! 1e-6 relative (so `(N, 3)`, `(N, 1, 3)` and per-slice copies `(N, S, 3)` all work) and
//! is taken as the voxel size `[dx, dy, dz]` in metres, as stored. Any real, integer or
//! boolean dtype is converted to f32 (`dxyz` to f64). The reference gives no seeds,
//! permeabilities or convergence flags: records get seed 0, NaN (unknown)
//! permeabilities, `converged: true` and `extra.reference_index`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use fiberflow_geometry::layout::VoxelSize;
use ndarray::Array4;
use pytorch_reader::{DType, PytorchReader};
use serde_json::json;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::atomic::AtomicFile;
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::manifest::{DatasetHeader, SampleRecord};
use crate::progress::Progress;
use crate::sample::{DXYZ, Field, Sample, Shape, check_dxyz};
use crate::split::SplitMode;
use crate::writer::DatasetWriter;

/// Imports the reference dataset at `src` (the directory holding `x/`, or `x/` itself)
/// into a fiberflow dataset at `out`. Re-running resumes an interrupted import.
pub fn import_reference(src: &Path, out: &Path, progress: &mut dyn Progress) -> Result<Dataset> {
    let x = if src.join("x").is_dir() {
        src.join("x")
    } else {
        src.to_path_buf()
    };
    std::fs::create_dir_all(out).map_err(DataError::io(out, "create directory"))?;

    progress.start("reading .pt files", 5);
    let mut read = |stem: &str| {
        let tensor = TorchTensor::read(&x.join(format!("{stem}.pt")), out);
        progress.step();
        tensor
    };
    let u = read(Field::U.name())?;
    let u2d = read(Field::U2d.name())?;
    let domain = read(Field::Domain.name())?;
    let p = read(Field::P.name())?;
    let dxyz = read(DXYZ)?;
    progress.finish();

    let (n, shape) = match u.shape[..] {
        [n, s, 3, h, w] => (
            n,
            Shape {
                slices: s,
                height: h,
                width: w,
            },
        ),
        _ => {
            return Err(DataError::WrongShape {
                path: u.path,
                name: "U".into(),
                expected: "(N, S, 3, H, W)".into(),
                found: u.shape,
            });
        }
    };
    for (tensor, field) in [(&u2d, Field::U2d), (&domain, Field::Domain), (&p, Field::P)] {
        tensor.expect_field_shape(field, n, shape)?;
    }
    let dxyz = dxyz_per_sample(&dxyz, n)?;
    let Some(first) = dxyz.first() else {
        return Err(DataError::invalid(
            &x,
            "the reference dataset holds no sample (N = 0)",
        ));
    };

    let files: Vec<_> = [&u, &u2d, &domain, &p]
        .iter()
        .map(|t| {
            json!({
                "file": t.path.file_name().map(|f| f.to_string_lossy().into_owned()),
                "dtype": format!("{:?}", t.dtype),
                "shape": t.shape,
            })
        })
        .collect();
    let header = DatasetHeader {
        shape,
        voxel_size: VoxelSize {
            dx_m: first[0],
            dy_m: first[1],
            dz_m: first[2],
        },
        generator: json!({"source": "reference", "files": files}),
        solver: json!({"source": "reference", "note": "CFD solver of the reference dataset (undocumented)"}),
    };
    let writer = DatasetWriter::create_or_resume(out, header)?;
    progress.start("import", n as u64);
    for (i, dxyz) in dxyz.into_iter().enumerate() {
        if !writer.is_done(i) {
            let sample = Sample {
                domain: domain.sample(i, shape.dims(Field::Domain))?,
                u2d: u2d.sample(i, shape.dims(Field::U2d))?,
                u: u.sample(i, shape.dims(Field::U))?,
                p: p.sample(i, shape.dims(Field::P))?,
                p2d: None,
                dxyz,
            };
            sample.check(&PathBuf::from(format!("{} (sample {i})", x.display())))?;
            let record = SampleRecord {
                index: i,
                file: String::new(),
                seed: 0,
                porosity: sample.porosity(),
                k_3d_m2: f64::NAN,
                k_2d_m2: Vec::new(),
                converged: true,
                extra: json!({"source": "reference", "reference_index": i}),
            };
            writer.write(i, &sample, record)?;
        }
        progress.step();
    }
    progress.finish();
    writer.finalize(n, SplitMode::Reference, progress)
}

/// One tensor read from a `.pt` file: its element type, shape and raw bytes.
struct TorchTensor {
    path: PathBuf,
    dtype: DType,
    shape: Vec<usize>,
    /// Row-major, native-endian.
    bytes: Vec<u8>,
}

impl TorchTensor {
    /// Reads the single tensor of `path`, using a scratch copy in `scratch_dir`.
    fn read(path: &Path, scratch_dir: &Path) -> Result<Self> {
        let corrupt = |reason: String| DataError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let scratch = AtomicFile::create(&scratch_dir.join("reference-import.pt"))?;
        wrap_root(path, scratch.file())?;
        let reader = PytorchReader::new(scratch.path())
            .map_err(|e| corrupt(format!("not a readable PyTorch file ({e})")))?;
        let mut tensors: Vec<_> = reader.into_tensors().into_values().collect();
        let tensor = match tensors.len() {
            1 => tensors.remove(0),
            found => {
                let names: Vec<_> = tensors
                    .iter()
                    .map(|t| t.name.trim_start_matches("tensor."))
                    .collect();
                return Err(corrupt(format!(
                    "expected one tensor, found {found}: {names:?}"
                )));
            }
        };
        let bytes = tensor
            .read()
            .map_err(|e| corrupt(format!("tensor data unreadable ({e})")))?;
        Ok(Self {
            path: path.to_path_buf(),
            dtype: tensor.dtype(),
            shape: tensor.shape().to_vec(),
            bytes,
        })
    }

    /// Checks the shape of a field tensor: `(N, S, C, H, W)`, or `(N, S, H, W)` for C = 1.
    fn expect_field_shape(&self, field: Field, n: usize, shape: Shape) -> Result<()> {
        let [s, c, h, w] = shape.dims(field);
        let ok = self.shape == [n, s, c, h, w] || (c == 1 && self.shape == [n, s, h, w]);
        if ok {
            return Ok(());
        }
        Err(DataError::WrongShape {
            path: self.path.clone(),
            name: field.name().into(),
            expected: format!(
                "{:?}{} (N, S, C, H, W) as in U.pt",
                [n, s, c, h, w],
                if c == 1 { " or without C" } else { "" }
            ),
            found: self.shape.clone(),
        })
    }

    /// All values as f64.
    fn values(&self, range: std::ops::Range<usize>) -> Result<Vec<f64>> {
        let size = self.dtype.size();
        let bytes = self
            .bytes
            .get(range.start * size..range.end * size)
            .ok_or_else(|| DataError::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "holds {} bytes, fewer than its shape {:?} needs",
                    self.bytes.len(),
                    self.shape
                ),
            })?;
        macro_rules! decode {
            ($t:ty) => {
                bytes
                    .chunks_exact(size)
                    .map(|c| <$t>::from_ne_bytes(c.try_into().unwrap_or_default()) as f64)
                    .collect()
            };
        }
        Ok(match self.dtype {
            DType::F64 => decode!(f64),
            DType::F32 => decode!(f32),
            DType::I64 => decode!(i64),
            DType::I32 => decode!(i32),
            DType::I16 => decode!(i16),
            DType::I8 => decode!(i8),
            DType::U64 => decode!(u64),
            DType::U32 => decode!(u32),
            DType::U16 => decode!(u16),
            DType::U8 | DType::Bool => decode!(u8),
            DType::F16 | DType::BF16 => {
                return Err(DataError::WrongDtype {
                    path: self.path.clone(),
                    name: "tensor".into(),
                    expected: "a 32/64-bit float, integer or bool tensor (save with `.float()`)"
                        .into(),
                    found: format!("{:?}", self.dtype),
                });
            }
        })
    }

    /// Sample `i` of a field tensor, as f32 `dims`.
    fn sample(&self, i: usize, dims: [usize; 4]) -> Result<Array4<f32>> {
        let len: usize = dims.iter().product();
        let values = self.values(i * len..(i + 1) * len)?;
        Array4::from_shape_vec(dims, values.into_iter().map(|v| v as f32).collect()).map_err(|e| {
            DataError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        })
    }
}

/// `[dx, dy, dz]` of each of `n` samples from a `(3,)` or `(N, …, 3)` tensor.
fn dxyz_per_sample(t: &TorchTensor, n: usize) -> Result<Vec<[f64; 3]>> {
    let values = t.values(0..t.shape.iter().product())?;
    let triples: Vec<[f64; 3]> = values.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    let per_sample = match t.shape[..] {
        [3] => return Ok(vec![triples[0]; n]),
        [m, .., 3] if m == n && n > 0 && triples.len() >= n => triples.len() / n,
        _ => {
            return Err(DataError::WrongShape {
                path: t.path.clone(),
                name: DXYZ.into(),
                expected: format!("(3,) or ({n}, …, 3)"),
                found: t.shape.clone(),
            });
        }
    };
    triples
        .chunks(per_sample)
        .enumerate()
        .map(|(i, group)| {
            let first = group[0];
            check_dxyz(&t.path, &first)?;
            let agrees = |d: &[f64; 3]| d.iter().zip(first).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs());
            if group.iter().all(agrees) {
                Ok(first)
            } else {
                Err(DataError::invalid(
                    &t.path,
                    format!("sample {i} has differing voxel sizes {group:?}; fiberflow stores one [dx, dy, dz] per sample"),
                ))
            }
        })
        .collect()
}

/// Copies the `torch.save` archive `src` into `dst` with its pickle root wrapped in a
/// one-entry dictionary.
pub(crate) fn wrap_root(src: &Path, dst: &File) -> Result<()> {
    let corrupt = |reason: String| DataError::Corrupt {
        path: src.to_path_buf(),
        reason,
    };
    let file = File::open(src).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: src.to_path_buf(),
            fix: "expected the reference layout SRC/x/{domain,U_2d,U,p,dxyz}.pt".into(),
        },
        _ => DataError::Io {
            path: src.to_path_buf(),
            action: "open",
            error: source,
        },
    })?;
    let zip_error = |e: zip::result::ZipError| corrupt(format!("not a PyTorch zip archive ({e})"));
    let mut archive = ZipArchive::new(BufReader::new(file)).map_err(zip_error)?;
    let mut out = ZipWriter::new(dst);
    let mut wrapped = false;
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(zip_error)?;
        let name = entry.name().map_err(zip_error)?.into_owned();
        if !name.ends_with("data.pkl") {
            drop(entry);
            out.raw_copy_file(archive.by_index_raw(i).map_err(zip_error)?)
                .map_err(zip_error)?;
            continue;
        }
        let mut pickle = Vec::new();
        entry
            .take(pytorch_reader::MAX_PICKLE_SIZE)
            .read_to_end(&mut pickle)
            .map_err(|e| corrupt(format!("data.pkl unreadable ({e})")))?;
        let pickle = wrap_pickle(&pickle)
            .ok_or_else(|| corrupt("data.pkl is not a complete pickle".into()))?;
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        out.start_file(name, options).map_err(zip_error)?;
        std::io::Write::write_all(&mut out, &pickle).map_err(|e| corrupt(e.to_string()))?;
        wrapped = true;
    }
    if !wrapped {
        return Err(corrupt(
            "no data.pkl entry; not a file written by torch.save".into(),
        ));
    }
    out.finish().map_err(zip_error)?;
    Ok(())
}

/// `PROTO n, <root>, STOP` → `PROTO n, EMPTY_DICT, "tensor", <root>, SETITEM, STOP`.
fn wrap_pickle(pickle: &[u8]) -> Option<Vec<u8>> {
    const PROTO: u8 = 0x80;
    let (proto, rest) = pickle.split_at_checked(2)?;
    let body = rest.strip_suffix(b".")?;
    if proto[0] != PROTO || body.is_empty() {
        return None;
    }
    let key = b"tensor";
    let mut out = Vec::with_capacity(pickle.len() + 16);
    out.extend_from_slice(proto);
    out.push(b'}'); // EMPTY_DICT
    out.push(b'X'); // BINUNICODE
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(body);
    out.push(b's'); // SETITEM
    out.push(b'.'); // STOP
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dxyz_tensor(shape: Vec<usize>, values: &[f64]) -> TorchTensor {
        TorchTensor {
            path: PathBuf::from("dxyz.pt"),
            dtype: DType::F64,
            shape,
            bytes: values.iter().flat_map(|v| v.to_ne_bytes()).collect(),
        }
    }

    #[test]
    fn dxyz_shapes_are_accepted_and_checked() {
        let shared = dxyz_tensor(vec![3], &[1e-7, 1e-7, 5e-6]);
        assert_eq!(
            dxyz_per_sample(&shared, 2).unwrap(),
            vec![[1e-7, 1e-7, 5e-6]; 2]
        );
        let per_sample = dxyz_tensor(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            dxyz_per_sample(&per_sample, 2).unwrap(),
            [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
        );
        let per_slice = dxyz_tensor(vec![1, 2, 3], &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        assert_eq!(dxyz_per_sample(&per_slice, 1).unwrap(), [[1.0, 2.0, 3.0]]);
        let differing = dxyz_tensor(vec![1, 2, 3], &[1.0, 2.0, 3.0, 1.0, 2.0, 4.0]);
        assert!(
            dxyz_per_sample(&differing, 1)
                .unwrap_err()
                .to_string()
                .contains("differing voxel sizes")
        );
        let wrong_n = dxyz_tensor(vec![2, 3], &[1.0; 6]);
        let err = dxyz_per_sample(&wrong_n, 3).unwrap_err().to_string();
        assert!(
            err.contains("dxyz.pt") && err.contains("(3, …, 3)"),
            "{err}"
        );
        let negative = dxyz_tensor(vec![1, 3], &[1.0, -2.0, 3.0]);
        assert!(
            dxyz_per_sample(&negative, 1)
                .unwrap_err()
                .to_string()
                .contains("positive")
        );
    }

    fn fixture(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(relative)
    }

    #[test]
    fn bare_and_dictionary_roots_written_by_torch_are_read() {
        let scratch = tempfile::tempdir().unwrap();
        let u = TorchTensor::read(&fixture("reference/x/U.pt"), scratch.path()).unwrap();
        assert_eq!((u.dtype, &u.shape[..]), (DType::F32, &[4, 3, 3, 8, 8][..]));
        // U[0, 0, 0, 0, w] = w / 1024 * 1e-3 as f32 (scripts/make_reference_fixtures.py)
        let want: Vec<f64> = (0..3)
            .map(|w| f64::from((w as f64 / 1024.0 * 1e-3) as f32))
            .collect();
        assert_eq!(u.values(0..3).unwrap(), want);

        let domain = TorchTensor::read(&fixture("reference/x/domain.pt"), scratch.path()).unwrap();
        assert_eq!(domain.dtype, DType::Bool);
        assert_eq!(domain.values(0..3).unwrap(), [0.0, 1.0, 1.0]);

        let dict = TorchTensor::read(&fixture("torch/dict_root.pt"), scratch.path()).unwrap();
        assert_eq!(dict.shape, [2, 3]);
        assert_eq!(dict.values(0..6).unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            std::fs::read_dir(scratch.path()).unwrap().count(),
            0,
            "scratch copies are removed"
        );
    }

    #[test]
    fn truncated_and_missing_pt_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("reference/x/U.pt")).unwrap();
        let truncated = dir.path().join("U.pt");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = TorchTensor::read(&truncated, dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("U.pt") && err.contains("corrupt or truncated"),
            "{err}"
        );
        let err = TorchTensor::read(&dir.path().join("p.pt"), dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("p.pt") && err.contains("not found"), "{err}");
    }

    #[test]
    fn pickle_root_is_wrapped_in_a_dict() {
        assert_eq!(
            wrap_pickle(b"\x80\x02K\x07.").unwrap(),
            b"\x80\x02}X\x06\x00\x00\x00tensorK\x07s."
        );
        assert!(wrap_pickle(b"\x80\x02K\x07").is_none(), "truncated pickle");
        assert!(wrap_pickle(b"K\x07.").is_none(), "no protocol marker");
    }
}
