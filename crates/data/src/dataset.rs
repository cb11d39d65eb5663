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
    /// Samples used per subset (train, val, test: the first N of each list), for
    /// learning curves; the split and everything fingerprinted from it (statistics) stay
    /// whole.
    limits: [Option<usize>; 3],
}

impl Dataset {
    /// Opens `dir`, checking every sample file's header against the manifest.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::load(&dir)?;
        manifest.check_files(&dir)?;
        let splits = Splits::load(&dir, manifest.len())?;
        Ok(Self::new(dir, manifest, splits))
    }

    /// A dataset of these parts, with no training limit.
    pub(crate) fn new(dir: PathBuf, manifest: Manifest, splits: Splits) -> Self {
        Self {
            dir,
            manifest,
            splits,
            limits: [None; 3],
        }
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
            Some(s) => {
                let all = self.splits.indices(s);
                all[..self.limits[s as usize].unwrap_or(all.len())].to_vec()
            }
            None => (0..self.len()).collect(),
        }
    }

    /// Keeps only the first `n` samples of `subset` in split order, leaving the others
    /// untouched: the subsets for n₁ < n₂ are nested, so a learning curve measures more
    /// data and nothing else. Statistics stay those of the whole training split.
    pub fn limit(&mut self, subset: Subset, n: usize) -> Result<()> {
        let available = self.splits.indices(subset).len();
        if n == 0 || n > available {
            return Err(DataError::invalid(
                &self.dir,
                format!(
                    "{n} {subset} samples asked for: it must lie in 1..={available}, the {subset} split's size"
                ),
            ));
        }
        self.limits[subset as usize] = Some(n);
        Ok(())
    }

    /// The dataset with at most `train` training and `val` validation samples (see
    /// [`Dataset::limit`]); `None` keeps a subset whole.
    pub fn with_limits(mut self, train: Option<usize>, val: Option<usize>) -> Result<Self> {
        for (subset, n) in [(Subset::Train, train), (Subset::Val, val)] {
            if let Some(n) = n {
                self.limit(subset, n)?;
            }
        }
        Ok(self)
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
