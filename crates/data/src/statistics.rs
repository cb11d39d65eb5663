//! `statistics.json`: normalisation statistics computed from the training split only,
//! streaming over sample files, written once and tied to the manifest and split it was
//! computed from, so a stale or leaked file is an error rather than a silent change of
//! normalisation (the reference rewrote it from whichever loader ran last).
//!
//! Velocity components (vx, vy, vz of `U` and `U_2d`): max |c| over all voxels; mean |c|,
//! signed mean, std and percentiles p1/p5/p50/p95/p99 of the signed value over fluid
//! voxels. Percentiles are exact (NumPy's default linear interpolation), found in two
//! passes: a histogram over the top 16 bits of each value's order-preserving bit pattern
//! locates the bins holding the wanted ranks, and the second pass keeps only those bins.
//! Pressure: max |p|, mean and std over fluid voxels. `dxyz`: per-axis max and mean.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayView3, Axis, Zip};
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::json::{read_json, write_json};
use crate::progress::Progress;
use crate::sample::Field;
use crate::split::Subset;

/// File name of the statistics inside a dataset directory.
pub const STATISTICS_FILE: &str = "statistics.json";

/// Percentiles reported for every velocity component.
pub const PERCENTILES: [f64; 5] = [1.0, 5.0, 50.0, 95.0, 99.0];

/// What the statistics were computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub manifest_sha256: String,
    pub split_sha256: String,
    pub n_train: usize,
}

impl Fingerprint {
    /// The fingerprint of `dataset` as it is now.
    pub fn of(dataset: &Dataset) -> Result<Self> {
        Ok(Self {
            manifest_sha256: dataset.manifest.sha256(&dataset.dir)?,
            split_sha256: dataset.splits.sha256(&dataset.dir)?,
            n_train: dataset.splits.train.len(),
        })
    }
}

/// Statistics of one velocity component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentStats {
    /// max |c| over all voxels.
    pub max_abs: f64,
    /// Mean |c| over fluid voxels.
    pub mean_abs: f64,
    /// Mean of c over fluid voxels.
    pub mean: f64,
    /// Standard deviation (population) of c over fluid voxels.
    pub std: f64,
    pub p1: f64,
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Statistics of a velocity field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VelocityStats {
    pub vx: ComponentStats,
    pub vy: ComponentStats,
    pub vz: ComponentStats,
    /// max |U| over all voxels.
    pub max_magnitude: f64,
}

/// Pressure over fluid voxels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PressureStats {
    pub max_abs: f64,
    pub mean: f64,
    pub std: f64,
}

/// Voxel sizes over the training samples, per axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DxyzStats {
    pub max: [f64; 3],
    pub mean: [f64; 3],
}

/// The content of `statistics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    pub fingerprint: Fingerprint,
    /// Fluid voxels over all training samples.
    pub n_fluid_voxels: u64,
    #[serde(rename = "U")]
    pub u: VelocityStats,
    #[serde(rename = "U_2d")]
    pub u2d: VelocityStats,
    pub p: PressureStats,
    pub dxyz: DxyzStats,
}

impl Statistics {
    /// Computes the statistics of the training split, two streaming passes over its files.
    pub fn compute(dataset: &Dataset, progress: &mut dyn Progress) -> Result<Self> {
        let fingerprint = Fingerprint::of(dataset)?;
        // The whole split, whatever limit a learning-curve run set: the fingerprint is
        // the whole split's.
        let train = dataset.splits.indices(Subset::Train).to_vec();
        if train.is_empty() {
            return Err(DataError::invalid(
                &dataset.dir,
                format!(
                    "the training split is empty ({} samples in all); statistics need at least one training sample",
                    dataset.len()
                ),
            ));
        }
        let mut velocity = [VelocityAcc::default(), VelocityAcc::default()];
        let mut pressure = Moments::default();
        let mut pressure_max = 0.0f64;
        let (mut dxyz_max, mut dxyz_sum) = ([0.0f64; 3], [0.0f64; 3]);

        progress.start("statistics (pass 1 of 2)", train.len() as u64);
        for &i in &train {
            let file = dataset.open_sample(i)?;
            let domain = file.read(Field::Domain)?;
            let mask = domain.index_axis(Axis(1), 0);
            for (acc, field) in velocity.iter_mut().zip([Field::U, Field::U2d]) {
                acc.first_pass(mask, &file.read(field)?);
            }
            let p = file.read(Field::P)?;
            Zip::from(mask)
                .and(p.index_axis(Axis(1), 0))
                .for_each(|&m, &v| {
                    pressure_max = pressure_max.max(f64::from(v).abs());
                    if m == 1.0 {
                        pressure.push(v.into());
                    }
                });
            for (axis, d) in file.dxyz().into_iter().enumerate() {
                dxyz_max[axis] = dxyz_max[axis].max(d);
                dxyz_sum[axis] += d;
            }
            progress.step();
        }
        progress.finish();
        if pressure.n == 0 {
            return Err(DataError::invalid(
                &dataset.dir,
                "the training samples have no fluid voxel; statistics need some",
            ));
        }

        for acc in &mut velocity {
            acc.components.iter_mut().for_each(|c| c.percentiles.plan());
        }
        progress.start("statistics (pass 2 of 2)", train.len() as u64);
        for &i in &train {
            let file = dataset.open_sample(i)?;
            let domain = file.read(Field::Domain)?;
            let mask = domain.index_axis(Axis(1), 0);
            for (acc, field) in velocity.iter_mut().zip([Field::U, Field::U2d]) {
                acc.second_pass(mask, &file.read(field)?);
            }
            progress.step();
        }
        progress.finish();

        let [u, u2d] = velocity.map(VelocityAcc::finish);
        let n = train.len() as f64;
        Ok(Self {
            fingerprint,
            n_fluid_voxels: pressure.n,
            u,
            u2d,
            p: PressureStats {
                max_abs: pressure_max,
                mean: pressure.mean,
                std: pressure.std(),
            },
            dxyz: DxyzStats {
                max: dxyz_max,
                mean: dxyz_sum.map(|s| s / n),
            },
        })
    }

    /// Reads `statistics.json` of `dataset` and checks that it was computed from the
    /// dataset's current manifest and split.
    pub fn load(dataset: &Dataset) -> Result<Self> {
        let path = dataset.dir.join(STATISTICS_FILE);
        let command = format!("fiberflow dataset stats {}", dataset.dir.display());
        let stats: Self = read_json(&path, &format!("run `{command}`"))?;
        let now = Fingerprint::of(dataset)?;
        let stale = |what: &str| {
            DataError::mismatch(
                &path,
                format!("statistics.json was computed for a different {what}"),
                format!("delete it and run `{command}` (or run `{command} --force`)"),
            )
        };
        if stats.fingerprint.split_sha256 != now.split_sha256
            || stats.fingerprint.n_train != now.n_train
        {
            return Err(stale("split"));
        }
        if stats.fingerprint.manifest_sha256 != now.manifest_sha256 {
            return Err(stale("dataset.json (the samples or header changed)"));
        }
        Ok(stats)
    }

    /// Writes `statistics.json`; an existing file is replaced only when `overwrite`.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let path = dir.join(STATISTICS_FILE);
        if path.exists() && !overwrite {
            return Err(DataError::Exists {
                path,
                fix: format!(
                    "statistics are written once; run `fiberflow dataset stats {} --force` to recompute them",
                    dir.display()
                ),
            });
        }
        write_json(&path, self)
    }

    /// Loads the current statistics, or computes and writes them if there are none.
    pub fn load_or_compute(dataset: &Dataset, progress: &mut dyn Progress) -> Result<Self> {
        if dataset.dir.join(STATISTICS_FILE).exists() {
            return Self::load(dataset);
        }
        let stats = Self::compute(dataset, progress)?;
        stats.save(&dataset.dir, false)?;
        Ok(stats)
    }
}

/// Count, mean and sum of squared deviations (Welford), for mean and std in one pass.
#[derive(Debug, Default)]
struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    fn std(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }
}

#[derive(Debug, Default)]
struct ComponentAcc {
    max_abs: f64,
    sum_abs: f64,
    moments: Moments,
    percentiles: Percentiles,
}

#[derive(Debug, Default)]
struct VelocityAcc {
    components: [ComponentAcc; 3],
    max_magnitude: f64,
}

impl VelocityAcc {
    fn first_pass(&mut self, mask: ArrayView3<f32>, u: &ndarray::Array4<f32>) {
        for (c, acc) in self.components.iter_mut().enumerate() {
            Zip::from(mask)
                .and(u.index_axis(Axis(1), c))
                .for_each(|&m, &v| {
                    let x = f64::from(v);
                    acc.max_abs = acc.max_abs.max(x.abs());
                    if m == 1.0 {
                        acc.sum_abs += x.abs();
                        acc.moments.push(x);
                        acc.percentiles.count(v);
                    }
                });
        }
        let channel = |c| u.index_axis(Axis(1), c);
        Zip::from(channel(0))
            .and(channel(1))
            .and(channel(2))
            .for_each(|&x, &y, &z| {
                let (x, y, z) = (f64::from(x), f64::from(y), f64::from(z));
                self.max_magnitude = self.max_magnitude.max((x * x + y * y + z * z).sqrt());
            });
    }

    fn second_pass(&mut self, mask: ArrayView3<f32>, u: &ndarray::Array4<f32>) {
        for (c, acc) in self.components.iter_mut().enumerate() {
            Zip::from(mask)
                .and(u.index_axis(Axis(1), c))
                .for_each(|&m, &v| {
                    if m == 1.0 {
                        acc.percentiles.collect(v);
                    }
                });
        }
    }

    fn finish(self) -> VelocityStats {
        let [vx, vy, vz] = self.components.map(|acc| {
            let [p1, p5, p50, p95, p99] = acc.percentiles.finish();
            ComponentStats {
                max_abs: acc.max_abs,
                mean_abs: acc.sum_abs / acc.moments.n.max(1) as f64,
                mean: acc.moments.mean,
                std: acc.moments.std(),
                p1,
                p5,
                p50,
                p95,
                p99,
            }
        });
        VelocityStats {
            vx,
            vy,
            vz,
            max_magnitude: self.max_magnitude,
        }
    }
}

/// Exact [`PERCENTILES`] of a stream seen twice: [`count`](Self::count) every value,
/// [`plan`](Self::plan), [`collect`](Self::collect) every value again, [`finish`](Self::finish).
#[derive(Debug)]
struct Percentiles {
    /// Values per bin (top 16 bits of the order key).
    counts: Vec<u64>,
    total: u64,
    /// Values of the bins holding a wanted rank, filled by the second pass.
    kept: HashMap<usize, Vec<f32>>,
}

impl Default for Percentiles {
    fn default() -> Self {
        Self {
            counts: vec![0; 1 << 16],
            total: 0,
            kept: HashMap::new(),
        }
    }
}

/// Maps an f32 to a u32 with the same (IEEE total) order.
fn order_key(v: f32) -> u32 {
    let bits = v.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

fn bin(v: f32) -> usize {
    (order_key(v) >> 16) as usize
}

impl Percentiles {
    fn count(&mut self, v: f32) {
        self.counts[bin(v)] += 1;
        self.total += 1;
    }

    /// Ranks (0-based, ascending) that linear interpolation needs for each percentile,
    /// with the interpolation weight of the upper one.
    fn ranks(&self) -> [(u64, u64, f64); 5] {
        PERCENTILES.map(|q| {
            let pos = q / 100.0 * self.total.saturating_sub(1) as f64;
            (pos.floor() as u64, pos.ceil() as u64, pos - pos.floor())
        })
    }

    /// The bin holding `rank` and the rank within it.
    fn locate(&self, rank: u64) -> (usize, u64) {
        let mut before = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            if rank < before + n {
                return (b, rank - before);
            }
            before += n;
        }
        (self.counts.len() - 1, 0)
    }

    fn plan(&mut self) {
        for (lo, hi, _) in self.ranks() {
            for rank in [lo, hi] {
                self.kept.entry(self.locate(rank).0).or_default();
            }
        }
    }

    fn collect(&mut self, v: f32) {
        if let Some(values) = self.kept.get_mut(&bin(v)) {
            values.push(v);
        }
    }

    fn finish(mut self) -> [f64; 5] {
        self.kept
            .values_mut()
            .for_each(|v| v.sort_unstable_by(f32::total_cmp));
        let value = |rank| {
            let (b, r) = self.locate(rank);
            self.kept
                .get(&b)
                .and_then(|v| v.get(r as usize))
                .map_or(f64::NAN, |&x| f64::from(x))
        };
        self.ranks().map(|(lo, hi, w)| {
            let (a, b) = (value(lo), value(hi));
            a + (b - a) * w
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// NumPy's default percentile, computed by sorting.
    fn numpy_percentile(sorted: &[f64], q: f64) -> f64 {
        let pos = q / 100.0 * (sorted.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - pos.floor())
    }

    fn two_pass(values: &[f32]) -> [f64; 5] {
        let mut p = Percentiles::default();
        values.iter().for_each(|&v| p.count(v));
        p.plan();
        values.iter().for_each(|&v| p.collect(v));
        p.finish()
    }

    #[test]
    fn two_pass_percentiles_are_exact() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for n in [1usize, 2, 7, 1000] {
            // Mixed signs and magnitudes, with repeats (exact zeros) as in vz.
            let values: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 5 == 0 {
                        0.0
                    } else {
                        rng.random_range(-1e-3f32..2e-3)
                    }
                })
                .collect();
            let mut sorted: Vec<f64> = values.iter().map(|&v| v.into()).collect();
            sorted.sort_by(f64::total_cmp);
            let got = two_pass(&values);
            for (q, g) in PERCENTILES.iter().zip(got) {
                assert_eq!(g, numpy_percentile(&sorted, *q), "n = {n}, q = {q}");
            }
        }
    }

    #[test]
    fn percentiles_of_a_known_list() {
        // numpy.percentile([-2, -1, 0, 1, 10], [1, 5, 50, 95, 99]) = [-1.96, -1.8, 0, 8.2, 9.64]
        let got = two_pass(&[10.0, -1.0, 0.0, 1.0, -2.0]);
        let want = [-1.96, -1.8, 0.0, 8.2, 9.64];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn order_key_preserves_order() {
        let values = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::INFINITY,
        ];
        assert!(values.windows(2).all(|w| order_key(w[0]) < order_key(w[1])));
    }

    #[test]
    fn moments_match_two_pass_formula() {
        let xs = [1.0, 2.0, 4.0, 7.0];
        let mut m = Moments::default();
        xs.iter().for_each(|&x| m.push(x));
        assert!((m.mean - 3.5).abs() < 1e-15);
        // population variance: (6.25 + 2.25 + 0.25 + 12.25) / 4 = 5.25
        assert!((m.std() - 5.25f64.sqrt()).abs() < 1e-15);
    }
}
