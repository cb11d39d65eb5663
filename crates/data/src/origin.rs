//! What made a dataset, read from its manifest header's `generator` record. The header
//! keeps the record exactly as written, because the manifest's SHA-256 (which every
//! trained run checks its dataset against) hashes it, and a typed round trip could add
//! defaults or drop fields; this typed view is how every consumer reads it.

use crate::error::{DataError, Result};
use crate::generate::GeneratorConfig;
use crate::manifest::{DatasetHeader, MANIFEST_FILE};
use fiberflow_geometry::layout::SliceGrid;
use fiberflow_solver::FlowConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The record of `fiberflow generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedBy {
    pub config: GeneratorConfig,
    pub grid: SliceGrid,
    /// Base seed; each sample's seed derives from it and the sample's index.
    pub seed: u64,
    /// Version of the sampling rules ([`crate::generate::SAMPLING_VERSION`]); datasets
    /// made before it was recorded have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<u32>,
}

/// One file of the reference project's layout that a dataset was imported from, as it
/// was stored (so that an export can write it back the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedFile {
    /// File name, e.g. `U.pt`.
    pub file: String,
    /// Element type as the importer named it (`Bool`, `U8`, `F32`, `F64`).
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// The record of `fiberflow dataset import`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedFrom {
    /// Always `reference`.
    pub source: String,
    pub files: Vec<ImportedFile>,
}

/// Where a dataset came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Generated(Box<GeneratedBy>),
    Imported(ImportedFrom),
    /// A record neither writes (hand-made or test datasets).
    Unknown,
}

impl Origin {
    /// Reads a header's `generator` record; one that claims to be a generator's or an
    /// import's but does not parse as one is an error naming `path`.
    pub fn read(record: &Value, path: &Path) -> Result<Self> {
        let bad = |what: &str, e: serde_json::Error| {
            DataError::mismatch(
                path.to_path_buf(),
                format!("its header's generator record is not {what}'s ({e})"),
                "regenerate or re-import the dataset with this fiberflow",
            )
        };
        if record.get("source").and_then(Value::as_str) == Some("reference") {
            let imported =
                serde_json::from_value(record.clone()).map_err(|e| bad("an import", e))?;
            return Ok(Self::Imported(imported));
        }
        if record.get("config").is_some() && record.get("grid").is_some() {
            let generated =
                serde_json::from_value(record.clone()).map_err(|e| bad("fiberflow generate", e))?;
            return Ok(Self::Generated(Box::new(generated)));
        }
        Ok(Self::Unknown)
    }

    /// The solver settings the data was made with; the defaults where the record has none
    /// (imported data: the reference's solver is undocumented).
    pub fn flow_config(&self) -> FlowConfig {
        match self {
            Self::Generated(g) => g.config.flow.clone(),
            _ => FlowConfig::default(),
        }
    }

    /// The generator's record, where the data was generated.
    pub fn generated(&self) -> Option<&GeneratedBy> {
        match self {
            Self::Generated(g) => Some(g),
            _ => None,
        }
    }
}

impl DatasetHeader {
    /// Where the dataset came from (`dir` names it in errors).
    pub fn origin(&self, dir: &Path) -> Result<Origin> {
        Origin::read(&self.generator, &dir.join(MANIFEST_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grid() -> SliceGrid {
        SliceGrid {
            size: 64,
            slices: 11,
            pitch_um: 5.0,
        }
    }

    #[test]
    fn a_generators_header_reads_back_and_keeps_its_record() {
        let mut cfg = GeneratorConfig {
            vf: [0.5, 0.55],
            ..Default::default()
        };
        cfg.flow.physics.viscosity_pa_s = 0.2;
        let header = cfg.header(&grid(), 17);
        // The record as datasets have always stored it, so manifests hash as before.
        let written = json!({"config": cfg, "grid": grid(), "seed": 17, "sampling": crate::generate::SAMPLING_VERSION});
        assert_eq!(header.generator, written);
        let origin = header.origin(Path::new("d")).unwrap();
        let g = origin.generated().unwrap();
        assert_eq!((g.seed, g.grid, &g.config), (17, grid(), &cfg));
        assert_eq!(origin.flow_config().physics.viscosity_pa_s, 0.2);
        // A record from before the sampling version was kept reads as version none.
        let old = json!({"config": cfg, "grid": grid(), "seed": 17});
        let g = Origin::read(&old, Path::new("d")).unwrap();
        assert_eq!(g.generated().unwrap().sampling, None);
    }

    #[test]
    fn imports_and_unknown_records_are_told_apart_and_bad_ones_named() {
        let import = json!({"source": "reference", "files": [{"file": "U.pt", "dtype": "F32", "shape": [4, 11, 3, 8, 8]}]});
        match Origin::read(&import, Path::new("d")).unwrap() {
            Origin::Imported(i) => assert_eq!(i.files[0].shape, vec![4, 11, 3, 8, 8]),
            other => panic!("{other:?}"),
        }
        let unknown = Origin::read(&json!({"fibres": 3}), Path::new("d")).unwrap();
        assert_eq!(unknown, Origin::Unknown);
        assert_eq!(unknown.flow_config(), FlowConfig::default());
        let bad = json!({"config": {"vf": "dense"}, "grid": grid(), "seed": 1});
        let e = Origin::read(&bad, Path::new("runs/d/dataset.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("runs/d/dataset.json") && e.contains("fiberflow generate"),
            "{e}"
        );
    }
}
