//! `dataset info`: what a dataset holds at a glance (shape, split sizes, porosity and
//! permeability ranges, the state of its statistics), as a serde struct for `--json`
//! and as text for people.

use std::fmt;
use std::path::PathBuf;

use fiberflow_geometry::layout::VoxelSize;
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::sample::Shape;
use crate::split::SplitMode;
use crate::statistics::Statistics;

/// Min, mean and max of the finite values of a quantity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of finite values summarised.
    pub count: usize,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of the finite values, `None` if there is none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let (mut count, mut sum, mut min, mut max) = (0, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            count += 1;
            sum += v;
            min = min.min(v);
            max = max.max(v);
        }
        (count > 0).then(|| Self {
            count,
            min,
            mean: sum / count as f64,
            max,
        })
    }
}

/// Sizes of the three subsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub mode: SplitMode,
    pub seed: u64,
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// Whether `statistics.json` can be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum StatisticsState {
    /// Present and computed from the current manifest and split.
    Current { statistics: Box<Statistics> },
    /// Not computed yet.
    Missing,
    /// Present but stale or unreadable; `reason` says why and how to fix it.
    Unusable { reason: String },
}

/// The summary `fiberflow dataset info` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub dir: PathBuf,
    pub shape: Shape,
    pub voxel_size: VoxelSize,
    pub n_samples: usize,
    pub manifest_sha256: String,
    pub split: SplitCounts,
    /// Samples whose solver converged.
    pub converged: usize,
    pub porosity: Option<Summary>,
    pub fibre_volume_fraction: Option<Summary>,
    /// `None` when no sample has a known permeability (imported data).
    pub k_3d_m2: Option<Summary>,
    /// Over every slice of every sample.
    pub k_2d_m2: Option<Summary>,
    pub statistics: StatisticsState,
}

impl DatasetInfo {
    /// Gathers the summary of an opened dataset.
    pub fn gather(dataset: &Dataset) -> Result<Self> {
        let records = &dataset.manifest.samples;
        let splits = &dataset.splits;
        let statistics = match Statistics::load(dataset) {
            Ok(s) => StatisticsState::Current {
                statistics: Box::new(s),
            },
            Err(DataError::NotFound { .. }) => StatisticsState::Missing,
            Err(e) => StatisticsState::Unusable {
                reason: e.to_string(),
            },
        };
        Ok(Self {
            dir: dataset.dir.clone(),
            shape: dataset.manifest.header.shape,
            voxel_size: dataset.manifest.header.voxel_size,
            n_samples: dataset.len(),
            manifest_sha256: dataset.manifest.sha256(&dataset.dir)?,
            split: SplitCounts {
                mode: splits.mode,
                seed: splits.seed,
                train: splits.train.len(),
                val: splits.val.len(),
                test: splits.test.len(),
            },
            converged: records.iter().filter(|r| r.converged).count(),
            porosity: Summary::of(records.iter().map(|r| r.porosity)),
            fibre_volume_fraction: Summary::of(records.iter().map(|r| 1.0 - r.porosity)),
            k_3d_m2: Summary::of(records.iter().map(|r| r.k_3d_m2)),
            k_2d_m2: Summary::of(records.iter().flat_map(|r| r.k_2d_m2.iter().copied())),
            statistics,
        })
    }
}

impl fmt::Display for DatasetInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.voxel_size;
        writeln!(f, "dataset     {}", self.dir.display())?;
        writeln!(
            f,
            "samples     {} of {}, voxel {:.4} × {:.4} × {:.4} µm",
            self.n_samples,
            self.shape,
            v.dx_m * 1e6,
            v.dy_m * 1e6,
            v.dz_m * 1e6
        )?;
        let s = &self.split;
        writeln!(
            f,
            "split       {} (seed {}): train {}, val {}, test {}",
            s.mode, s.seed, s.train, s.val, s.test
        )?;
        writeln!(f, "converged   {} of {}", self.converged, self.n_samples)?;
        let rows = [
            ("porosity", self.porosity),
            ("fibre Vf", self.fibre_volume_fraction),
            ("K_3d [m²]", self.k_3d_m2),
            ("K_2d [m²]", self.k_2d_m2),
        ];
        for (name, summary) in rows {
            match summary {
                Some(x) => writeln!(
                    f,
                    "{name:<11} min {:.4e}  mean {:.4e}  max {:.4e}",
                    x.min, x.mean, x.max
                )?,
                None => writeln!(f, "{name:<11} unknown")?,
            }
        }
        match &self.statistics {
            StatisticsState::Current { statistics: st } => {
                writeln!(
                    f,
                    "statistics  current (train n = {}, {} fluid voxels)",
                    st.fingerprint.n_train, st.n_fluid_voxels
                )?;
                for (name, u) in [("U", &st.u), ("U_2d", &st.u2d)] {
                    writeln!(
                        f,
                        "  {name:<9} max |vx| {:.3e}  |vy| {:.3e}  |vz| {:.3e}  |U| {:.3e} m/s",
                        u.vx.max_abs, u.vy.max_abs, u.vz.max_abs, u.max_magnitude
                    )?;
                }
                writeln!(
                    f,
                    "  {:<9} max |p| {:.3e}  mean {:.3e}  std {:.3e} Pa",
                    "p", st.p.max_abs, st.p.mean, st.p.std
                )?;
            }
            StatisticsState::Missing => writeln!(f, "statistics  missing")?,
            StatisticsState::Unusable { reason } => writeln!(f, "statistics  unusable: {reason}")?,
        }
        write!(f, "sha256      {}", self.manifest_sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_skips_unknown_values() {
        let s = Summary::of([1.0, f64::NAN, 3.0]).unwrap();
        assert_eq!((s.count, s.min, s.mean, s.max), (2, 1.0, 2.0, 3.0));
        assert!(Summary::of([f64::NAN]).is_none());
    }
}
