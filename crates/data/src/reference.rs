//! Import of the reference project's dataset (`SRC/x/{domain,U_2d,U,p,dxyz}.pt`, each a
//! `torch.save`d tensor of all samples) into fiberflow's format, with the reference's
//! exact split (`splits.json` in `reference` mode) and train-only statistics.
//!
//! The files come from elsewhere, so every size they declare is checked before anything
//! is sized by it. That needs the headers apart from the data, which the `pytorch-reader`
//! crate does not give (it materialises every tensor, and a stride-0 view or a deflate
//! bomb with it), hence the small reader of the `torch.save` format in `reference/`.
//! [`ReferenceSource::open`] checks first the five headers alone (each view contiguous
//! inside a storage of exactly the declared bytes, the shapes consistent across files,
//! the per-sample and per-dataset memory within the budget of
//! [`fiberflow_geometry::budget`]), then every storage is read once through a fixed buffer
//! (length and CRC) and every file hashed. Samples are then converted one at a time
//! ([`SampleReader`]), so memory is one sample's fields whatever the files declare (all
//! of the reference's 100 samples of 11×256×256 would take 2.3 GB).
//!
//! Accepted shapes (`N` samples, `S` slices, `H × W` pixels): `U`, `U_2d`:
//! `(N, S, 3, H, W)`; `domain`, `p`: `(N, S, 1, H, W)` or `(N, S, H, W)`; `dxyz`: `(3,)`
//! (shared by all samples) or `(N, …, 3)`, where every triple of a sample must agree to
//! 1e-6 relative (so `(N, 3)`, `(N, 1, 3)` and per-slice copies `(N, S, 3)` all work) and
//! is taken as the voxel size `[dx, dy, dz]` in metres, as stored. Any real, integer or
//! boolean dtype but half precision is converted to f32 (`dxyz` to f64). The reference
//! gives no seeds, permeabilities or convergence flags: records get seed 0, NaN (unknown)
//! permeabilities, `converged: true` and `extra.reference_index`.
//!
//! The files' sizes and SHA-256 are recorded in [`SOURCE_FILE`] before the first sample
//! is written, and a re-run resumes only with the same files, so an interrupted import is
//! never completed from another source.

mod pickle;
mod pt;

use std::path::{Path, PathBuf};

use fiberflow_geometry::budget;
use fiberflow_geometry::layout::VoxelSize;
use ndarray::Array4;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::generate::MANIFEST_BYTES_PER_SAMPLE;
use crate::json::{read_json, write_json};
use crate::manifest::{DatasetHeader, MANIFEST_FILE, SampleRecord};
use crate::progress::Progress;
use crate::sample::{DXYZ, Field, Sample, Shape, check_dxyz};
use crate::split::SplitMode;
use crate::writer::{DatasetWriter, HEADER_FILE};
use pt::{PtFile, PtStream};

/// The record, in an imported dataset, of the reference files it was imported from
/// (names, sizes, SHA-256), written before its first sample.
pub const SOURCE_FILE: &str = "reference-source.json";

/// The field files in reading order (then `dxyz`).
const FIELDS: [Field; 4] = [Field::U, Field::U2d, Field::Domain, Field::P];

/// Imports the reference dataset at `src` (the directory holding `x/`, or `x/` itself)
/// into a fiberflow dataset at `out`. Re-running with the same files resumes an
/// interrupted import; with other files it is refused.
pub fn import_reference(src: &Path, out: &Path, progress: &mut dyn Progress) -> Result<Dataset> {
    let mut source = ReferenceSource::open(src, progress)?;
    std::fs::create_dir_all(out).map_err(DataError::io(out, "create directory"))?;
    claim_output(out, &source.files)?;
    let writer = DatasetWriter::create_or_resume(out, source.header())?;
    let n = source.samples();
    let mut samples = source.reader()?;
    progress.start("import", n as u64);
    for i in 0..n {
        if !writer.is_done(i) {
            let sample = samples.read(i)?;
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

/// One source file as [`SOURCE_FILE`] records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SourceFile {
    file: String,
    bytes: u64,
    sha256: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SourceRecord {
    files: Vec<SourceFile>,
}

/// Makes sure `out` receives samples of `files` only. Samples follow the dataset header,
/// so before the header exists nothing was imported and the record is (re)written; after,
/// it must be there and name the same files. A dataset with a header but no record
/// (another generator, or an import older than the record) is refused too, since its
/// source cannot be told.
fn claim_output(out: &Path, files: &[SourceFile]) -> Result<()> {
    let path = out.join(SOURCE_FILE);
    let record = SourceRecord {
        files: files.to_vec(),
    };
    if !out.join(HEADER_FILE).exists() {
        return write_json(&path, &record);
    }
    let fix = format!(
        "re-run with the original SRC to resume, use a new --out, or delete {} to start over",
        out.display()
    );
    if !path.exists() {
        return Err(DataError::mismatch(
            out,
            format!(
                "holds a dataset without {SOURCE_FILE}, the record of the reference files it was imported from, so importing into it could mix two sources"
            ),
            fix,
        ));
    }
    let recorded: SourceRecord = read_json(&path, "")?;
    if recorded == record {
        return Ok(());
    }
    let differing: Vec<&str> = files
        .iter()
        .filter(|f| !recorded.files.contains(f))
        .map(|f| f.file.as_str())
        .collect();
    let import = if out.join(MANIFEST_FILE).exists() {
        "an import"
    } else {
        "an interrupted import"
    };
    Err(DataError::mismatch(
        out,
        format!(
            "holds {import} of another source ({} not as recorded in {SOURCE_FILE}, by size and SHA-256)",
            if differing.is_empty() {
                "the files".to_string()
            } else {
                differing.join(", ")
            }
        ),
        fix,
    ))
}

/// The reference dataset's five `.pt` files, opened and checked as a whole before any
/// sample is read (see the module documentation).
pub struct ReferenceSource {
    x: PathBuf,
    n: usize,
    shape: Shape,
    /// In the order of [`FIELDS`].
    fields: [PtFile; 4],
    dxyz: Vec<[f64; 3]>,
    files: Vec<SourceFile>,
}

impl ReferenceSource {
    /// Opens the reference dataset at `src` (the directory holding `x/`, or `x/` itself).
    pub fn open(src: &Path, progress: &mut dyn Progress) -> Result<Self> {
        let x = if src.join("x").is_dir() {
            src.join("x")
        } else {
            src.to_path_buf()
        };
        let open = |stem: &str| PtFile::open(&x.join(format!("{stem}.pt")));
        let mut fields = [
            open(Field::U.name())?,
            open(Field::U2d.name())?,
            open(Field::Domain.name())?,
            open(Field::P.name())?,
        ];
        let mut dxyz = open(DXYZ)?;

        let u = &fields[0];
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
                    path: u.path.clone(),
                    name: "U".into(),
                    expected: "(N, S, 3, H, W)".into(),
                    found: u.shape.clone(),
                });
            }
        };
        for (file, field) in fields.iter().zip(FIELDS).skip(1) {
            expect_field_shape(file, field, n, shape)?;
        }
        if n == 0 {
            return Err(DataError::invalid(
                &x,
                "the reference dataset holds no sample (N = 0)",
            ));
        }
        let triples = dxyz_triples_per_sample(&dxyz.path, &dxyz.shape, n)?;

        // What the import holds at once: the manifest of all samples; one sample, as read
        // (its dtype), as f32 and as the writer's two copies of that (12 bytes); the voxel
        // sizes, as read, as f64 and as triples.
        budget::check(
            format!("{}: the manifest of {n} samples", u.path.display()),
            (n as u128).checked_mul(MANIFEST_BYTES_PER_SAMPLE),
        )?;
        let sample_bytes = fields
            .iter()
            .zip(FIELDS)
            .try_fold(0u128, |sum, (f, field)| {
                sum.checked_add(budget::array_bytes(
                    &shape.dims(field),
                    f.dtype.size() + 12,
                )?)
            });
        budget::check(
            format!("{}: one sample of {shape}", x.display()),
            sample_bytes,
        )?;
        budget::check_array(
            &format!("{}: the voxel sizes", dxyz.path.display()),
            &dxyz.shape,
            dxyz.dtype.size() + 16,
        )?;

        progress.start("checking .pt files", 5);
        let mut files = Vec::with_capacity(5);
        for file in fields.iter_mut().chain([&mut dxyz]) {
            file.verify()?;
            let (bytes, sha256) = file.sha256()?;
            files.push(SourceFile {
                file: file_name(&file.path),
                bytes,
                sha256,
            });
            progress.step();
        }
        progress.finish();

        let numel = dxyz.shape.iter().product();
        let mut values = Vec::with_capacity(numel);
        dxyz.stream()?.read(0, numel, |v| values.push(v))?;
        let dxyz = dxyz_per_sample(&dxyz.path, &values, triples, n)?;
        Ok(Self {
            x,
            n,
            shape,
            fields,
            dxyz,
            files,
        })
    }

    /// Number of samples, `N` (at least 1).
    pub fn samples(&self) -> usize {
        self.n
    }

    /// A reader of the samples, in increasing index order.
    pub fn reader(&mut self) -> Result<SampleReader<'_>> {
        let [u, u2d, domain, p] = &mut self.fields;
        Ok(SampleReader {
            x: &self.x,
            shape: self.shape,
            streams: [u.stream()?, u2d.stream()?, domain.stream()?, p.stream()?],
            dxyz: &self.dxyz,
        })
    }

    /// The dataset header of an import: the first sample's voxel size (each sample keeps
    /// its own) and, for a later export, each file's dtype and shape.
    fn header(&self) -> DatasetHeader {
        let files: Vec<_> = self
            .fields
            .iter()
            .map(|f| {
                json!({
                    "file": file_name(&f.path),
                    "dtype": format!("{:?}", f.dtype),
                    "shape": f.shape,
                })
            })
            .collect();
        let [dx_m, dy_m, dz_m] = self.dxyz[0];
        DatasetHeader {
            shape: self.shape,
            voxel_size: VoxelSize { dx_m, dy_m, dz_m },
            generator: json!({"source": "reference", "files": files}),
            solver: json!({"source": "reference", "note": "CFD solver of the reference dataset (undocumented)"}),
        }
    }
}

/// Reads the samples of a [`ReferenceSource`] in increasing index order, holding one
/// sample's fields at a time.
pub struct SampleReader<'a> {
    x: &'a Path,
    shape: Shape,
    /// In the order of [`FIELDS`].
    streams: [PtStream<'a>; 4],
    dxyz: &'a [[f64; 3]],
}

impl SampleReader<'_> {
    /// Sample `index`, checked as every sample written is. Indices must increase; the
    /// samples skipped are read past, not kept.
    pub fn read(&mut self, index: usize) -> Result<Sample> {
        let Some(&dxyz) = self.dxyz.get(index) else {
            return Err(DataError::invalid(
                self.x,
                format!("no sample {index}: the files hold {}", self.dxyz.len()),
            ));
        };
        let [u, u2d, domain, p] = &mut self.streams;
        let shape = self.shape;
        let sample = Sample {
            domain: read_field(domain, shape.dims(Field::Domain), index)?,
            u2d: read_field(u2d, shape.dims(Field::U2d), index)?,
            u: read_field(u, shape.dims(Field::U), index)?,
            p: read_field(p, shape.dims(Field::P), index)?,
            p2d: None,
            dxyz,
        };
        sample.check(&PathBuf::from(format!(
            "{} (sample {index})",
            self.x.display()
        )))?;
        Ok(sample)
    }
}

/// Sample `index` of a field file, as f32 `dims`.
fn read_field(stream: &mut PtStream, dims: [usize; 4], index: usize) -> Result<Array4<f32>> {
    let len = dims.iter().product();
    let mut values = Vec::with_capacity(len);
    stream.read(index * len, len, |v| values.push(v as f32))?;
    Ok(Array4::from_shape_vec(dims, values).expect("len is the product of dims"))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks the shape of a field file: `(N, S, C, H, W)`, or `(N, S, H, W)` for C = 1.
fn expect_field_shape(file: &PtFile, field: Field, n: usize, shape: Shape) -> Result<()> {
    let [s, c, h, w] = shape.dims(field);
    if file.shape == [n, s, c, h, w] || (c == 1 && file.shape == [n, s, h, w]) {
        return Ok(());
    }
    Err(DataError::WrongShape {
        path: file.path.clone(),
        name: field.name().into(),
        expected: format!(
            "{:?}{} (N, S, C, H, W) as in U.pt",
            [n, s, c, h, w],
            if c == 1 { " or without C" } else { "" }
        ),
        found: file.shape.clone(),
    })
}

/// `[dx, dy, dz]` triples per sample of a `dxyz` of `shape`: `None` for one triple
/// shared by all `n` samples, `(3,)`; `Some(k)` for `(n, …, 3)`.
fn dxyz_triples_per_sample(path: &Path, shape: &[usize], n: usize) -> Result<Option<usize>> {
    match shape {
        [3] => Ok(None),
        [m, .., 3] if *m == n && n > 0 && shape.iter().all(|&d| d > 0) => {
            Ok(Some(shape.iter().product::<usize>() / 3 / n))
        }
        _ => Err(DataError::WrongShape {
            path: path.to_path_buf(),
            name: DXYZ.into(),
            expected: format!("(3,) or ({n}, …, 3)"),
            found: shape.to_vec(),
        }),
    }
}

/// `[dx, dy, dz]` of each of `n` samples from the `values` of a `dxyz` laid out as
/// [`dxyz_triples_per_sample`] says.
fn dxyz_per_sample(
    path: &Path,
    values: &[f64],
    per_sample: Option<usize>,
    n: usize,
) -> Result<Vec<[f64; 3]>> {
    let triples: Vec<[f64; 3]> = values.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    let Some(per_sample) = per_sample else {
        check_dxyz(path, &triples[0])?;
        return Ok(vec![triples[0]; n]);
    };
    triples
        .chunks(per_sample)
        .enumerate()
        .map(|(i, group)| {
            let first = group[0];
            check_dxyz(path, &first)?;
            let agrees = |d: &[f64; 3]| d.iter().zip(first).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs());
            if group.iter().all(agrees) {
                Ok(first)
            } else {
                Err(DataError::invalid(
                    path,
                    format!("sample {i} has differing voxel sizes {group:?}; fiberflow stores one [dx, dy, dz] per sample"),
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dxyz(shape: &[usize], values: &[f64], n: usize) -> Result<Vec<[f64; 3]>> {
        let path = Path::new("dxyz.pt");
        dxyz_per_sample(path, values, dxyz_triples_per_sample(path, shape, n)?, n)
    }

    #[test]
    fn dxyz_shapes_are_accepted_and_checked() {
        let shared = [1e-7, 1e-7, 5e-6];
        assert_eq!(dxyz(&[3], &shared, 2).unwrap(), vec![shared; 2]);
        let per_sample = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(
            dxyz(&[2, 3], &per_sample, 2).unwrap(),
            [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
        );
        let per_slice = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
        assert_eq!(dxyz(&[1, 2, 3], &per_slice, 1).unwrap(), [[1.0, 2.0, 3.0]]);
        let differing = [1.0, 2.0, 3.0, 1.0, 2.0, 4.0];
        assert!(
            dxyz(&[1, 2, 3], &differing, 1)
                .unwrap_err()
                .to_string()
                .contains("differing voxel sizes")
        );
        let err = dxyz(&[2, 3], &[1.0; 6], 3).unwrap_err().to_string();
        assert!(
            err.contains("dxyz.pt") && err.contains("(3, …, 3)"),
            "{err}"
        );
        let err = dxyz(&[1, 0, 3], &[], 1).unwrap_err().to_string();
        assert!(err.contains("[1, 0, 3]"), "{err}");
        for (shape, values) in [(&[1, 3][..], [1.0, -2.0, 3.0]), (&[3][..], [0.0, 1.0, 1.0])] {
            let err = dxyz(shape, &values, 1).unwrap_err().to_string();
            assert!(err.contains("positive"), "{err}");
        }
    }

    fn fixture(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(relative)
    }

    /// The first `len` values of the tensor in `relative`, with its dtype and shape.
    fn read(relative: &str, len: usize) -> (pt::DType, Vec<usize>, Vec<f64>) {
        let mut file = PtFile::open(&fixture(relative)).unwrap();
        file.verify().unwrap();
        let mut values = Vec::new();
        file.stream()
            .unwrap()
            .read(0, len, |v| values.push(v))
            .unwrap();
        (file.dtype, file.shape, values)
    }

    #[test]
    fn bare_and_dictionary_roots_written_by_torch_are_read() {
        let (dtype, shape, values) = read("reference/x/U.pt", 3);
        assert_eq!((dtype, &shape[..]), (pt::DType::F32, &[4, 3, 3, 8, 8][..]));
        // U[0, 0, 0, 0, w] = w / 1024 * 1e-3 as f32 (scripts/make_reference_fixtures.py)
        let want: Vec<f64> = (0..3)
            .map(|w| f64::from((w as f64 / 1024.0 * 1e-3) as f32))
            .collect();
        assert_eq!(values, want);

        let (dtype, _, values) = read("reference/x/domain.pt", 3);
        assert_eq!(dtype, pt::DType::Bool);
        assert_eq!(values, [0.0, 1.0, 1.0]);

        let (_, shape, values) = read("torch/dict_root.pt", 6);
        assert_eq!(shape, [2, 3]);
        assert_eq!(values, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn truncated_and_missing_pt_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("reference/x/U.pt")).unwrap();
        let truncated = dir.path().join("U.pt");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = PtFile::open(&truncated).err().unwrap().to_string();
        assert!(
            err.contains("U.pt") && err.contains("corrupt or truncated"),
            "{err}"
        );
        let err = PtFile::open(&dir.path().join("p.pt"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("p.pt") && err.contains("not found"), "{err}");
    }

    #[test]
    fn a_flipped_data_byte_fails_the_crc_before_any_sample_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = std::fs::read(fixture("reference/x/p.pt")).unwrap();
        // The storage p/data/0 holds bytes 576..3648 of the file.
        bytes[1000] ^= 0x01;
        let path = dir.path().join("p.pt");
        std::fs::write(&path, &bytes).unwrap();
        let mut file = PtFile::open(&path).unwrap();
        let err = file.verify().unwrap_err().to_string();
        assert!(
            err.contains("p.pt") && err.contains("data/0 fails its zip check"),
            "{err}"
        );
    }
}
