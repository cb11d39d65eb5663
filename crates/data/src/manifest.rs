//! `dataset.json`: what a dataset is (shape, voxel size, units, the generator and solver
//! configurations) and what it holds (one record per sample), plus its content hash,
//! which model logs record to tie a model to the exact data it saw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fiberflow_geometry::layout::VoxelSize;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::json::{canonical_sha256, read_json, unknown_as_null, write_json};
use crate::sample::{SampleFile, Shape};

/// File name of the manifest inside a dataset directory.
pub const MANIFEST_FILE: &str = "dataset.json";

/// Version of the on-disk dataset format this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Units of the stored quantities, written into every manifest.
pub fn units() -> BTreeMap<String, String> {
    [
        ("domain", "1 = fluid, 0 = fibre"),
        ("U_2d", "m/s"),
        ("U", "m/s"),
        ("p", "Pa"),
        ("dxyz", "m"),
        ("k_3d_m2", "m^2"),
        ("k_2d_m2", "m^2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// What every sample of a dataset shares; a generator restarted with a different header
/// must not add to the same directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetHeader {
    /// `(S, H, W)` of every sample.
    pub shape: Shape,
    /// Nominal voxel size; `dz_m` is the slice pitch. Each sample also stores its own `dxyz`.
    pub voxel_size: VoxelSize,
    /// Generator configuration (opaque to this crate).
    pub generator: Value,
    /// Solver configuration (opaque to this crate).
    pub solver: Value,
}

/// Per-sample facts the generator knows. Unknown permeabilities (imported data) are NaN
/// and stored as `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// Position of the sample in the dataset, `0..n`.
    pub index: usize,
    /// Sample file, relative to the dataset directory; set by the writer.
    pub file: String,
    /// Seed the microstructure was generated from (0 for imported samples).
    pub seed: u64,
    /// Fluid volume fraction.
    pub porosity: f64,
    /// Permeability of the 3D flow along x, m².
    #[serde(with = "unknown_as_null")]
    pub k_3d_m2: f64,
    /// Per-slice permeabilities of the 2D flows, m².
    #[serde(with = "unknown_as_null::vec")]
    pub k_2d_m2: Vec<f64>,
    /// Whether the solver met its tolerance.
    pub converged: bool,
    /// Anything else the producer wants to keep.
    #[serde(default)]
    pub extra: Value,
}

/// The content of `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Units of the stored quantities; always [`units()`].
    pub units: BTreeMap<String, String>,
    #[serde(flatten)]
    pub header: DatasetHeader,
    /// Distance between slices, m (the same as `voxel_size.dz_m`, stated for readers).
    pub slice_pitch_m: f64,
    /// One record per sample, ordered by index.
    pub samples: Vec<SampleRecord>,
}

impl Manifest {
    /// A manifest for `samples`, which must be indexed `0..n` in order.
    pub fn new(header: DatasetHeader, samples: Vec<SampleRecord>) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            units: units(),
            slice_pitch_m: header.voxel_size.dz_m,
            header,
            samples,
        }
    }

    /// Reads `DIR/dataset.json` and checks its version, units and record indices.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let manifest: Self = read_json(
            &path,
            "finish the dataset (re-run the generator or `fiberflow dataset merge`) or point to a dataset directory",
        )?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(DataError::mismatch(
                &path,
                format!(
                    "format version {} is not the supported {FORMAT_VERSION}",
                    manifest.format_version
                ),
                "regenerate or re-import the dataset with this version of fiberflow",
            ));
        }
        if manifest.units != units() {
            return Err(DataError::invalid(
                &path,
                format!(
                    "units {:?} differ from fiberflow's {:?}",
                    manifest.units,
                    units()
                ),
            ));
        }
        if manifest.slice_pitch_m != manifest.header.voxel_size.dz_m {
            return Err(DataError::invalid(
                &path,
                format!(
                    "slice_pitch_m = {} disagrees with voxel_size.dz_m = {}",
                    manifest.slice_pitch_m, manifest.header.voxel_size.dz_m
                ),
            ));
        }
        manifest.check_indices(&path)?;
        Ok(manifest)
    }

    /// Writes `DIR/dataset.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        self.check_indices(&path)?;
        write_json(&path, self)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the dataset has no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Path of sample `index`'s file under `dir`, if the dataset has that sample.
    pub fn sample_path(&self, dir: &Path, index: usize) -> Option<PathBuf> {
        self.samples.get(index).map(|r| dir.join(&r.file))
    }

    /// SHA-256 hex of the canonical JSON of the manifest.
    pub fn sha256(&self, dir: &Path) -> Result<String> {
        canonical_sha256(self, &dir.join(MANIFEST_FILE))
    }

    /// Checks that every listed file exists, is a readable sample file and has the
    /// manifest's shape (headers only; values are checked when read).
    pub fn check_files(&self, dir: &Path) -> Result<()> {
        for record in &self.samples {
            let path = dir.join(&record.file);
            let file = SampleFile::open(&path).map_err(|e| match e {
                DataError::NotFound { path, .. } => DataError::mismatch(
                    path,
                    format!(
                        "listed in {MANIFEST_FILE} as sample {} but missing",
                        record.index
                    ),
                    "restore the file, or regenerate/re-import the dataset",
                ),
                other => other,
            })?;
            if file.shape() != self.header.shape {
                return Err(DataError::mismatch(
                    path,
                    format!(
                        "has shape {}, but {MANIFEST_FILE} says {}",
                        file.shape(),
                        self.header.shape
                    ),
                    "regenerate this sample or the whole dataset with one shape",
                ));
            }
        }
        Ok(())
    }

    fn check_indices(&self, path: &Path) -> Result<()> {
        match self.samples.iter().enumerate().find(|(i, r)| r.index != *i) {
            Some((i, r)) => Err(DataError::invalid(
                path,
                format!(
                    "record {i} has index {}; records must be indexed 0..n in order",
                    r.index
                ),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn header(shape: Shape) -> DatasetHeader {
        DatasetHeader {
            shape,
            voxel_size: VoxelSize::from_um(0.5, 5.0),
            generator: serde_json::json!({"fibres": 3, "radius_um": 3.5}),
            solver: serde_json::json!({"tolerance": 1e-6}),
        }
    }

    pub(crate) fn record(index: usize) -> SampleRecord {
        SampleRecord {
            index,
            file: String::new(),
            seed: 100 + index as u64,
            porosity: 0.5,
            k_3d_m2: 1e-13 * (index + 1) as f64,
            k_2d_m2: vec![2e-13, f64::NAN],
            converged: true,
            extra: Value::Null,
        }
    }

    #[test]
    fn roundtrip_keeps_values_and_unknown_permeability() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape {
            slices: 2,
            height: 3,
            width: 4,
        };
        let manifest = Manifest::new(header(shape), vec![record(0), record(1)]);
        manifest.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["slice_pitch_m"], json["voxel_size"]["dz_m"]);
        assert_eq!(json["units"]["U"], "m/s");
        assert!(
            json["samples"][0]["k_2d_m2"][1].is_null(),
            "NaN must be written as null: {text}"
        );
        let back = Manifest::load(dir.path()).unwrap();
        assert_eq!(back.header, manifest.header);
        assert_eq!(back.samples[1].k_3d_m2, 2e-13);
        assert!(back.samples[0].k_2d_m2[1].is_nan());
        assert_eq!(
            back.sha256(dir.path()).unwrap(),
            manifest.sha256(dir.path()).unwrap()
        );
    }

    #[test]
    fn hash_changes_with_content() {
        let shape = Shape {
            slices: 1,
            height: 1,
            width: 1,
        };
        let dir = Path::new(".");
        let a = Manifest::new(header(shape), vec![record(0)]);
        let mut b = a.clone();
        b.samples[0].porosity = 0.25;
        assert_ne!(a.sha256(dir).unwrap(), b.sha256(dir).unwrap());
    }

    #[test]
    fn bad_indices_and_versions_are_rejected_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape {
            slices: 1,
            height: 1,
            width: 1,
        };
        let manifest = Manifest::new(header(shape), vec![record(1)]);
        let err = manifest.save(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("dataset.json") && err.contains("index 1"),
            "{err}"
        );

        let mut manifest = Manifest::new(header(shape), vec![record(0)]);
        manifest.format_version = 99;
        write_json(&dir.path().join(MANIFEST_FILE), &manifest).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("dataset.json") && err.contains("format version 99"),
            "{err}"
        );
    }
}
