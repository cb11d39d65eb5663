//! A finished dataset directory opened for reading: its manifest, checked against the
//! files, and its split. Every stage that reads data starts here.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::manifest::Manifest;
use crate::sample::SampleFile;
use crate::split::{Splits, Subset};

/// A dataset directory whose `dataset.json` matches its files and whose `splits.json`
/// splits exactly its samples.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub splits: Splits,
}

impl Dataset {
    /// Opens `dir`, checking every sample file's header against the manifest.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::load(&dir)?;
        manifest.check_files(&dir)?;
        let splits = Splits::load(&dir, manifest.len())?;
        Ok(Self {
            dir,
            manifest,
            splits,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.manifest.len()
    }

    /// Whether the dataset has no sample.
    pub fn is_empty(&self) -> bool {
        self.manifest.is_empty()
    }

    /// The indices of `subset` in split order, or every index for `None`.
    pub fn indices(&self, subset: Option<Subset>) -> Vec<usize> {
        match subset {
            Some(s) => self.splits.indices(s).to_vec(),
            None => (0..self.len()).collect(),
        }
    }

    /// Opens the file of sample `index`.
    pub fn open_sample(&self, index: usize) -> Result<SampleFile> {
        let path = self.manifest.sample_path(&self.dir, index).ok_or_else(|| {
            DataError::invalid(
                &self.dir,
                format!("no sample {index} (the dataset has {})", self.len()),
            )
        })?;
        SampleFile::open(path)
    }
}
