//! A bundle unpacked into run folders, so that a shipped model can be built on like any
//! trained run: a new refiner trained on its latent model, a run exported again with a
//! new card. Each run's log names the run it builds on by path, so unpacking points those
//! paths at the unpacked copies; everything else is written as the bundle holds it.

use super::{Bundle, PREDICTOR, REFINER, STAGE1, STAGE2};
use crate::error::ModelError;
use crate::run::checkpoint::{LOG_FILE, absolute};
use fiberflow_data::atomic::write_atomic;
use fiberflow_data::json::{read_json, write_json};
use std::path::{Path, PathBuf};

/// The run folders of an unpacked bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct Unpacked {
    /// The latent predictor (diffusion or direct), unrefined.
    pub predictor: PathBuf,
    /// The refiner run, which loads as the refined model, where the bundle has one.
    pub refiner: Option<PathBuf>,
}

/// In each run's log, the key that names the run it builds on, and that run's folder.
const LINKS: [(&str, &str, &str); 3] = [
    (STAGE2, "stage1", STAGE1),
    (PREDICTOR, "vae", STAGE2),
    (REFINER, "base", PREDICTOR),
];

impl Bundle {
    /// Writes every member under `out` (which must not exist or be empty) and points each
    /// run's log at its unpacked neighbours.
    pub fn unpack(&self, out: &Path) -> Result<Unpacked, ModelError> {
        let occupied = out.read_dir().map(|mut d| d.next().is_some());
        if occupied.unwrap_or(false) || (out.exists() && !out.is_dir()) {
            return Err(ModelError::Input(format!(
                "{} exists and is not an empty folder; unpack into a new one",
                out.display()
            )));
        }
        let out = absolute(out);
        for member in &self.card.members {
            let from = self.dir.path().join(&member.path);
            let to = out.join(&member.path);
            let bytes = std::fs::read(&from).map_err(|e| ModelError::checkpoint(&from, e))?;
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ModelError::checkpoint(parent, e))?;
            }
            write_atomic(&to, &bytes)?;
        }
        for (run, key, target) in LINKS {
            let log = out.join(run).join(LOG_FILE);
            if !log.exists() {
                continue;
            }
            let mut value: serde_json::Value = read_json(&log, "unpack the bundle again")?;
            let field = value.get_mut(key).ok_or_else(|| {
                ModelError::checkpoint(&log, format!("has no `{key}` to point at {target}"))
            })?;
            *field = serde_json::Value::String(out.join(target).display().to_string());
            write_json(&log, &value)?;
        }
        let refiner = out.join(REFINER);
        Ok(Unpacked {
            predictor: out.join(PREDICTOR),
            refiner: refiner.join(LOG_FILE).exists().then_some(refiner),
        })
    }
}
