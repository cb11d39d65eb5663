//! Writing a dataset from a generator that may be killed at any moment and restarted with
//! the same arguments, possibly split into shards that run on different machines.
//!
//! Layout of a dataset directory:
//! `header.json` (what every sample shares, written first), `samples/NNNNNN.safetensors`
//! (one per sample), `samples/NNNNNN.json` (its [`SampleRecord`], written after the sample
//! file, so its presence means the sample is complete), then, on
//! [`finalize`](DatasetWriter::finalize), `dataset.json`, `splits.json` and
//! `statistics.json`. Every file is written atomically; leftovers of killed writes end in
//! `.tmp` and are removed on resume.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::atomic::{link_or_copy, remove_temp_files};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::json::{read_json, write_json};
use crate::manifest::{DatasetHeader, Manifest, SampleRecord};
use crate::progress::Progress;
use crate::sample::{Sample, SampleFile};
use crate::split::{SplitMode, Splits};
use crate::statistics::Statistics;

/// File name of the header inside a dataset directory.
pub const HEADER_FILE: &str = "header.json";

/// Directory of the sample files inside a dataset directory.
pub const SAMPLES_DIR: &str = "samples";

/// Sample file of `index`, relative to the dataset directory.
pub fn sample_file(index: usize) -> String {
    format!("{SAMPLES_DIR}/{index:06}.safetensors")
}

/// Record sidecar of `index`, relative to the dataset directory.
fn record_file(index: usize) -> String {
    format!("{SAMPLES_DIR}/{index:06}.json")
}

/// The part of the indices one process generates: those with `index % count == index_of_shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole dataset in one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether sample `index` belongs to this shard.
    pub fn contains(&self, index: usize) -> bool {
        index % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;

    /// Parses `i/n` with `i < n`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let parsed = s
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Self { index, count }),
            _ => Err(format!(
                "invalid shard `{s}`: expected `i/n` with 0 <= i < n, e.g. `0/4`"
            )),
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Writes samples into a dataset directory, resuming whatever a killed run left.
#[derive(Debug)]
pub struct DatasetWriter {
    dir: PathBuf,
    header: DatasetHeader,
}

impl DatasetWriter {
    /// Creates `dir` for `header`, or resumes it if it already holds a dataset with the
    /// same header (anything else is an error naming the fix). Leftover temporary files
    /// of killed writes are removed.
    pub fn create_or_resume(dir: impl AsRef<Path>, header: DatasetHeader) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let samples = dir.join(SAMPLES_DIR);
        fs::create_dir_all(&samples).map_err(DataError::io(&samples, "create directory"))?;
        let header_path = dir.join(HEADER_FILE);
        if header_path.exists() {
            let existing: DatasetHeader = read_json(&header_path, "")?;
            let differs = differing_keys(&existing, &header, &header_path)?;
            if !differs.is_empty() {
                return Err(DataError::mismatch(
                    &header_path,
                    format!(
                        "this directory holds a dataset made with a different {} than the one asked for",
                        differs.join(", ")
                    ),
                    "re-run with the original arguments to resume, write to a new output directory, or delete this one to start over",
                ));
            }
        } else {
            write_json(&header_path, &header)?;
        }
        remove_temp_files(&dir)?;
        remove_temp_files(&samples)?;
        Ok(Self { dir, header })
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The header every sample shares.
    pub fn header(&self) -> &DatasetHeader {
        &self.header
    }

    /// Whether sample `index` is complete: its file opens with the header's shape and its
    /// record is present and names it.
    pub fn is_done(&self, index: usize) -> bool {
        self.done_record(index).is_some()
    }

    /// Writes sample `index`: validates it, writes the sample file, then its record (whose
    /// `index` must be `index`; its `file` is filled in here).
    pub fn write(&self, index: usize, sample: &Sample, mut record: SampleRecord) -> Result<()> {
        let path = self.dir.join(sample_file(index));
        if record.index != index {
            return Err(DataError::invalid(
                &path,
                format!(
                    "record has index {} but is written as sample {index}",
                    record.index
                ),
            ));
        }
        if sample.shape() != self.header.shape {
            return Err(DataError::mismatch(
                &path,
                format!(
                    "sample has shape {}, the dataset {}",
                    sample.shape(),
                    self.header.shape
                ),
                "generate samples with the dataset's shape",
            ));
        }
        sample.write(&path)?;
        record.file = sample_file(index);
        write_json(&self.dir.join(record_file(index)), &record)
    }

    /// Gathers the records of samples `0..n_expected` into `dataset.json`, then writes
    /// `splits.json` (in `mode`) and `statistics.json` unless they exist (existing ones are
    /// checked against the dataset). Fails, listing them, if samples are missing.
    pub fn finalize(
        &self,
        n_expected: usize,
        mode: SplitMode,
        progress: &mut dyn Progress,
    ) -> Result<Dataset> {
        let mut records = Vec::with_capacity(n_expected);
        let mut missing = Vec::new();
        for index in 0..n_expected {
            match self.done_record(index) {
                Some(r) => records.push(r),
                None => missing.push(index),
            }
        }
        if !missing.is_empty() {
            return Err(DataError::mismatch(
                &self.dir,
                format!(
                    "{} of {n_expected} samples are missing: {}",
                    missing.len(),
                    list(&missing, missing.len())
                ),
                "re-run the generator with the same arguments to fill them in (or merge the other shards)",
            ));
        }
        if let Some(extra) = self.completed()?.into_iter().find(|&i| i >= n_expected) {
            return Err(DataError::mismatch(
                self.dir.join(record_file(extra)),
                format!("sample {extra} lies beyond the {n_expected} samples expected"),
                "finalize with the number of samples the directory was generated for",
            ));
        }
        Manifest::new(self.header.clone(), records).save(&self.dir)?;
        let manifest = Manifest::load(&self.dir)?;
        let splits = Splits::load_or_create(&self.dir, manifest.len(), mode)?;
        let dataset = Dataset::new(self.dir.clone(), manifest, splits);
        Statistics::load_or_compute(&dataset, progress)?;
        Ok(dataset)
    }

    /// The record of sample `index` if the sample is complete.
    fn done_record(&self, index: usize) -> Option<SampleRecord> {
        let record: SampleRecord = read_json(&self.dir.join(record_file(index)), "").ok()?;
        if record.index != index || record.file != sample_file(index) {
            return None;
        }
        let file = SampleFile::open(self.dir.join(&record.file)).ok()?;
        (file.shape() == self.header.shape).then_some(record)
    }

    /// Indices of the complete samples, ascending.
    fn completed(&self) -> Result<Vec<usize>> {
        let samples = self.dir.join(SAMPLES_DIR);
        let mut indices = Vec::new();
        for entry in fs::read_dir(&samples).map_err(DataError::io(&samples, "list directory"))? {
            let name = entry
                .map_err(DataError::io(&samples, "list directory"))?
                .file_name();
            let index = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse().ok());
            if let Some(index) = index.filter(|&i| self.is_done(i)) {
                indices.push(index);
            }
        }
        indices.sort_unstable();
        Ok(indices)
    }
}

/// Joins shard directories (each written by a [`DatasetWriter`] with the same header) into
/// one finished dataset of `n_expected` samples at `out` (without it, the highest index
/// found + 1, which cannot notice missing samples at the end). Samples are hard-linked
/// where possible, copied otherwise. Duplicate or missing indices and differing headers
/// are errors.
pub fn merge(
    shards: &[PathBuf],
    out: &Path,
    n_expected: Option<usize>,
    progress: &mut dyn Progress,
) -> Result<Dataset> {
    let Some(first) = shards.first() else {
        return Err(DataError::invalid(
            out,
            "nothing to merge: no shard directory given",
        ));
    };
    let header_of = |dir: &Path| -> Result<DatasetHeader> {
        read_json(
            &dir.join(HEADER_FILE),
            "this is not a dataset or shard directory written by fiberflow",
        )
    };
    let header = header_of(first)?;
    let mut owner: BTreeMap<usize, PathBuf> = BTreeMap::new();
    for dir in shards {
        if same_dir(dir, out) {
            return Err(DataError::invalid(
                out,
                "the output directory must not be one of the shards",
            ));
        }
        let shard = DatasetWriter {
            dir: dir.clone(),
            header: header_of(dir)?,
        };
        let differs = differing_keys(&header, &shard.header, &dir.join(HEADER_FILE))?;
        if !differs.is_empty() {
            return Err(DataError::mismatch(
                dir.join(HEADER_FILE),
                format!(
                    "differs from {} in {}",
                    first.join(HEADER_FILE).display(),
                    differs.join(", ")
                ),
                "merge only shards generated with the same arguments",
            ));
        }
        for index in shard.completed()? {
            if let Some(other) = owner.insert(index, dir.clone()) {
                return Err(DataError::mismatch(
                    dir.join(sample_file(index)),
                    format!("sample {index} is also in {}", other.display()),
                    "merge each shard once, and only shards of one `--shard i/n` family",
                ));
            }
        }
    }
    let n = n_expected.unwrap_or_else(|| owner.keys().next_back().map_or(0, |&last| last + 1));
    // Counted, not collected: `--samples` may ask for far more than the shards hold.
    let lacking = n - owner.range(..n).count();
    if lacking > 0 {
        let first: Vec<usize> = (0..n).filter(|i| !owner.contains_key(i)).take(10).collect();
        return Err(DataError::mismatch(
            out,
            format!(
                "the shards lack {lacking} of samples 0..{n}: {}",
                list(&first, lacking)
            ),
            "finish the incomplete shards (re-run them with the same arguments), then merge again",
        ));
    }

    if let Some((&extra, dir)) = owner.range(n..).next() {
        return Err(DataError::mismatch(
            dir.join(sample_file(extra)),
            format!("sample {extra} lies beyond the {n} samples expected"),
            "merge with the number of samples the shards were generated for",
        ));
    }

    let writer = DatasetWriter::create_or_resume(out, header)?;
    progress.start("merge", n as u64);
    for (&index, dir) in &owner {
        if !writer.is_done(index) {
            link_or_copy(&dir.join(sample_file(index)), &out.join(sample_file(index)))?;
            link_or_copy(&dir.join(record_file(index)), &out.join(record_file(index)))?;
        }
        progress.step();
    }
    progress.finish();
    writer.finalize(n, SplitMode::Fiberflow, progress)
}

/// Top-level keys of two headers whose values differ.
fn differing_keys(a: &DatasetHeader, b: &DatasetHeader, path: &Path) -> Result<Vec<String>> {
    let to_value = |h: &DatasetHeader| {
        serde_json::to_value(h).map_err(|source| DataError::Json {
            path: path.to_path_buf(),
            error: source,
        })
    };
    let (a, b) = (to_value(a)?, to_value(b)?);
    let keys = ["shape", "voxel_size", "generator", "solver"];
    Ok(keys
        .iter()
        .filter(|k| a.get(**k) != b.get(**k))
        .map(|k| k.to_string())
        .collect())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A short list of indices for messages: the first ten of `indices`, and how many more of
/// `total` there are.
fn list(indices: &[usize], total: usize) -> String {
    let shown: Vec<String> = indices.iter().take(10).map(usize::to_string).collect();
    let more = total.saturating_sub(shown.len());
    if more > 0 {
        format!("{}, … ({more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_parsing_and_membership() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert_eq!(
            (0..7).filter(|&i| s.contains(i)).collect::<Vec<_>>(),
            [1, 4]
        );
        assert_eq!(s.to_string(), "1/3");
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().unwrap_err().contains("i/n"), "{bad}");
        }
        assert!((0..5).all(|i| Shard::ALL.contains(i)));
    }

    #[test]
    fn long_lists_are_shortened() {
        assert_eq!(list(&[1, 2], 2), "1, 2");
        assert!(list(&(0..25).collect::<Vec<_>>(), 25).ends_with("(15 more)"));
        assert!(list(&[3, 4], 1 << 60).ends_with(&format!("({} more)", (1usize << 60) - 2)));
    }
}
