//! The one train/val/test split of a dataset, written once to `splits.json` and re-read
//! by every stage, so no two stages can disagree about which samples are held out (the
//! reference's VAE and diffusion stages did).
//!
//! Counts follow the reference: `n_train = floor(0.7 n)`, `n_val = floor(0.15 n)`, test
//! gets the rest. [`SplitMode::Reference`] reproduces the reference's Python split exactly,
//! in its shuffled order; [`SplitMode::Fiberflow`] shuffles with ChaCha8 and sorts each list
//! (the order comes from the locked `rand` version; since the file is written once, a
//! later version cannot change an existing dataset's split).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::json::{canonical_sha256, read_json, write_json};
use crate::python_random::PythonRandom;

/// File name of the split inside a dataset directory.
pub const SPLITS_FILE: &str = "splits.json";

/// Seed of every split unless told otherwise (the reference's).
pub const SPLIT_SEED: u64 = 2024;

/// Train/val/test fractions; test gets what the floors leave.
pub const FRACTIONS: [f64; 3] = [0.7, 0.15, 0.15];

/// How the indices are shuffled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// ChaCha8 shuffle, each list sorted.
    Fiberflow,
    /// `random.Random(seed).shuffle(list(range(n)))`, lists kept in shuffled order.
    Reference,
}

impl FromStr for SplitMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "fiberflow" => Ok(Self::Fiberflow),
            "reference" => Ok(Self::Reference),
            _ => Err(format!(
                "unknown split mode `{s}`; use `fiberflow` or `reference`"
            )),
        }
    }
}

impl fmt::Display for SplitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fiberflow => "fiberflow",
            Self::Reference => "reference",
        })
    }
}

/// One of the three subsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    Train,
    Val,
    Test,
}

impl FromStr for Subset {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "train" => Ok(Self::Train),
            "val" => Ok(Self::Val),
            "test" => Ok(Self::Test),
            _ => Err(format!(
                "unknown subset `{s}`; use `train`, `val` or `test`"
            )),
        }
    }
}

impl fmt::Display for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        })
    }
}

/// The content of `splits.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    pub mode: SplitMode,
    pub seed: u64,
    pub fractions: [f64; 3],
    /// Number of samples split.
    pub n: usize,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

impl Splits {
    /// The split of `n` samples with the standard seed.
    pub fn new(n: usize, mode: SplitMode) -> Self {
        Self::with_seed(n, mode, SPLIT_SEED)
    }

    /// Sizes of the train, validation and test subsets of `n` samples.
    pub fn counts(n: usize) -> [usize; 3] {
        // Python's int(0.7 * N): the same f64 product, truncated.
        let n_train = (FRACTIONS[0] * n as f64) as usize;
        let n_val = (FRACTIONS[1] * n as f64) as usize;
        [n_train, n_val, n - n_train - n_val]
    }

    /// The split of `n` samples with `seed`.
    pub fn with_seed(n: usize, mode: SplitMode, seed: u64) -> Self {
        let mut idx: Vec<usize> = (0..n).collect();
        match mode {
            SplitMode::Fiberflow => idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed)),
            SplitMode::Reference => PythonRandom::new(seed).shuffle(&mut idx),
        }
        let [n_train, n_val, _] = Self::counts(n);
        let test = idx.split_off(n_train + n_val);
        let val = idx.split_off(n_train);
        let mut splits = Self {
            mode,
            seed,
            fractions: FRACTIONS,
            n,
            train: idx,
            val,
            test,
        };
        if mode == SplitMode::Fiberflow {
            splits.train.sort_unstable();
            splits.val.sort_unstable();
            splits.test.sort_unstable();
        }
        splits
    }

    /// The indices of `subset`, in the split's order.
    pub fn indices(&self, subset: Subset) -> &[usize] {
        match subset {
            Subset::Train => &self.train,
            Subset::Val => &self.val,
            Subset::Test => &self.test,
        }
    }

    /// Reads `DIR/splits.json` and checks that it splits exactly `0..n`.
    pub fn load(dir: &Path, n: usize) -> Result<Self> {
        let path = dir.join(SPLITS_FILE);
        let command = format!("fiberflow dataset split {}", dir.display());
        let splits: Self = read_json(&path, &format!("run `{command}`"))?;
        let fix = format!("run `{command} --force`");
        if splits.n != n {
            return Err(DataError::mismatch(
                &path,
                format!("splits {} samples but the dataset has {n}", splits.n),
                format!(
                    "{fix}, then `fiberflow dataset stats {} --force`",
                    dir.display()
                ),
            ));
        }
        let mut seen = vec![false; n];
        for &i in splits.train.iter().chain(&splits.val).chain(&splits.test) {
            match seen.get_mut(i) {
                Some(slot) if !*slot => *slot = true,
                _ => {
                    return Err(DataError::mismatch(
                        &path,
                        format!("index {i} is out of range 0..{n} or listed twice"),
                        fix.clone(),
                    ));
                }
            }
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(DataError::mismatch(
                &path,
                format!("index {missing} is in no subset"),
                fix,
            ));
        }
        Ok(splits)
    }

    /// Loads the existing split of `DIR`, or creates and writes one in `mode`. An existing
    /// split in another mode is an error: it is never replaced silently.
    pub fn load_or_create(dir: &Path, n: usize, mode: SplitMode) -> Result<Self> {
        if !dir.join(SPLITS_FILE).exists() {
            let splits = Self::new(n, mode);
            splits.save(dir, false)?;
            return Ok(splits);
        }
        let splits = Self::load(dir, n)?;
        if splits.mode != mode {
            return Err(DataError::mismatch(
                dir.join(SPLITS_FILE),
                format!("has mode `{}` but `{mode}` was asked for", splits.mode),
                format!(
                    "run `fiberflow dataset split {} --mode {mode} --force`",
                    dir.display()
                ),
            ));
        }
        Ok(splits)
    }

    /// Writes `DIR/splits.json`; an existing file is replaced only when `overwrite`.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let path = dir.join(SPLITS_FILE);
        if path.exists() && !overwrite {
            return Err(DataError::Exists {
                path,
                fix: "a split is written once; pass --force to replace it (this makes statistics.json stale and any model trained on the old split incomparable)".into(),
            });
        }
        write_json(&path, self)
    }

    /// SHA-256 hex of the canonical JSON of the split.
    pub fn sha256(&self, dir: &Path) -> Result<String> {
        canonical_sha256(self, &dir.join(SPLITS_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_split_of_100_is_the_reference_one() {
        let s = Splits::new(100, SplitMode::Reference);
        assert_eq!(
            s.test,
            [45, 63, 81, 31, 68, 33, 91, 52, 92, 25, 38, 74, 93, 23, 60]
        );
        assert_eq!(
            s.val,
            [97, 87, 89, 18, 59, 26, 9, 66, 42, 69, 39, 27, 78, 67, 53]
        );
        assert_eq!(&s.train[..11], [3, 64, 99, 34, 62, 30, 73, 95, 49, 0, 48]);
        assert_eq!(s.train.len(), 70);
    }

    #[test]
    fn reference_split_matches_python_for_other_sizes() {
        // python3 -c 'import random; N=10; idx=list(range(N)); random.Random(2024).shuffle(idx);
        //   a=int(0.7*N); b=int(0.15*N); print(idx[:a], idx[a:a+b], idx[a+b:])'
        let s = Splits::new(10, SplitMode::Reference);
        assert_eq!(
            (s.train, s.val, s.test),
            (vec![6, 0, 9, 8, 3, 5, 1], vec![4], vec![2, 7])
        );
        // Same one-liner with N=7, seed 0: idx = [4, 2, 1, 0, 5, 3, 6], int(4.9)=4, int(1.05)=1.
        let s = Splits::with_seed(7, SplitMode::Reference, 0);
        assert_eq!(
            (s.train, s.val, s.test),
            (vec![4, 2, 1, 0], vec![5], vec![3, 6])
        );
    }

    #[test]
    fn counts_follow_python_int_truncation() {
        for (n, counts) in [
            (100, (70, 15, 15)),
            (10, (7, 1, 2)),
            (3, (2, 0, 1)),
            (0, (0, 0, 0)),
            (21, (14, 3, 4)),
        ] {
            let s = Splits::new(n, SplitMode::Fiberflow);
            assert_eq!(
                (s.train.len(), s.val.len(), s.test.len()),
                counts,
                "n = {n}"
            );
        }
    }

    #[test]
    fn fiberflow_split_is_sorted_deterministic_and_a_partition() {
        let a = Splits::new(50, SplitMode::Fiberflow);
        assert_eq!(a, Splits::new(50, SplitMode::Fiberflow));
        assert_ne!(a, Splits::with_seed(50, SplitMode::Fiberflow, 7));
        assert!(a.train.is_sorted() && a.val.is_sorted() && a.test.is_sorted());
        let mut all: Vec<usize> = a
            .train
            .iter()
            .chain(&a.val)
            .chain(&a.test)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        assert_ne!(a.train, (0..35).collect::<Vec<_>>(), "must be shuffled");
    }

    #[test]
    fn file_is_written_once_and_checked_against_n() {
        let dir = tempfile::tempdir().unwrap();
        let s = Splits::load_or_create(dir.path(), 20, SplitMode::Reference).unwrap();
        assert_eq!(Splits::load(dir.path(), 20).unwrap(), s);
        assert!(matches!(
            s.save(dir.path(), false),
            Err(DataError::Exists { .. })
        ));
        let err = Splits::load(dir.path(), 21).unwrap_err().to_string();
        assert!(
            err.contains("splits.json") && err.contains("splits 20 samples but the dataset has 21"),
            "{err}"
        );
        assert!(err.contains("--force"), "{err}");
        let err = Splits::load_or_create(dir.path(), 20, SplitMode::Fiberflow)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--mode fiberflow --force"), "{err}");
    }

    #[test]
    fn a_broken_partition_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Splits::new(10, SplitMode::Fiberflow);
        s.test.push(s.train[0]);
        s.save(dir.path(), false).unwrap();
        let err = Splits::load(dir.path(), 10).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }
}
