//! Training loader, independent of any ML framework: batches of samples from one subset,
//! shuffled per epoch from a seed (the same seed and epoch give the same order), read
//! lazily through the memory map or preloaded, with optional mirror augmentation.
//!
//! Each mirror is applied to every field of a sample at once and keeps the sample an
//! exact Stokes solution driven along +x: mirror y flips H and negates vy; mirror z flips
//! S and negates vz; mirror x flips W, which alone gives the flow driven along −x, so by
//! Stokes reversibility the whole flow is then reversed: vx is kept and vy, vz and the
//! pressure are negated. The mask is only flipped.

use ndarray::{Array2, Array4, Array5, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::sample::{Field, Sample, SampleFile};
use crate::split::Subset;

/// Which axes a sample is mirrored along.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mirror {
    /// Flip W (columns), negate vy, vz and both pressures (mirror, then reverse to keep the
    /// drive along +x).
    pub x: bool,
    /// Flip H (rows), negate vy.
    pub y: bool,
    /// Flip S (slices), negate vz.
    pub z: bool,
}

impl Mirror {
    /// The eight combinations, numbered by [`Mirror::code`] (the identity first).
    pub fn all() -> impl Iterator<Item = Mirror> {
        (0..8u8).map(|c| Mirror {
            x: c & 1 != 0,
            y: c & 2 != 0,
            z: c & 4 != 0,
        })
    }

    /// 0–7: bit 0 for x, 1 for y, 2 for z; names cached per-mirror files.
    pub fn code(self) -> u8 {
        u8::from(self.x) | u8::from(self.y) << 1 | u8::from(self.z) << 2
    }

    /// Applies the mirrors to every field of `sample` in place. Flips reverse strides
    /// without copying; use `as_standard_layout` where contiguous memory is needed.
    pub fn apply(self, sample: &mut Sample) {
        for field in Field::EVERY {
            if let Some(array) = sample.field_mut(field) {
                self.apply_to(field, array);
            }
        }
    }

    /// Applies the mirrors to one `(S, C, H, W)` field, e.g. a predicted velocity; each
    /// mirror is its own inverse, so this also maps a prediction for the mirrored sample
    /// back.
    pub fn apply_to(self, field: Field, array: &mut Array4<f32>) {
        // (enabled, array axis flipped, velocity channels negated, pressure negated)
        let mirrors: [(bool, usize, &[usize], bool); 3] = [
            (self.x, 3, &[1, 2], true),
            (self.y, 2, &[1], false),
            (self.z, 0, &[2], false),
        ];
        for (on, axis, channels, negate_p) in mirrors {
            if !on {
                continue;
            }
            array.invert_axis(Axis(axis));
            if field.channels() == 3 {
                for &c in channels {
                    array.index_axis_mut(Axis(1), c).mapv_inplace(|v| -v);
                }
            } else if negate_p && field != Field::Domain {
                array.mapv_inplace(|v| -v);
            }
        }
    }
}

/// How a [`Loader`] batches, shuffles and augments.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Shuffle the order every epoch (otherwise the split's order).
    pub shuffle: bool,
    /// Seed of the shuffle and of the augmentation draws.
    pub seed: u64,
    /// Decode every sample once at construction instead of at each access.
    pub preload: bool,
    /// Mirrors that may be applied, each to a sample with probability 1/2.
    pub augment: Mirror,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 1,
            shuffle: true,
            seed: 0,
            preload: false,
            augment: Mirror::default(),
            drop_last: false,
        }
    }
}

impl LoaderConfig {
    /// One sample per batch in the split's order, unaugmented: for encoding, validation
    /// and evaluation, where each result must not depend on the others.
    pub fn sequential() -> Self {
        Self {
            shuffle: false,
            ..Self::default()
        }
    }
}

/// A batch: the dataset indices and the samples, in the same order.
#[derive(Debug, Clone)]
pub struct Batch {
    pub indices: Vec<usize>,
    pub samples: Vec<Sample>,
    /// The mirrors applied to each sample.
    pub mirrors: Vec<Mirror>,
}

impl Batch {
    /// `field` of every sample stacked along a leading batch axis, `(B, S, C, H, W)`.
    pub fn stack(&self, field: Field) -> Result<Array5<f32>> {
        let views = self
            .samples
            .iter()
            .zip(&self.indices)
            .map(|(s, i)| {
                s.field(field).map(|a| a.view()).ok_or_else(|| {
                    DataError::invalid(
                        "<batch>",
                        format!(
                            "sample {i} has no `{}` (a dataset generated before it was \
                             stored, or an import); regenerate the dataset",
                            field.name()
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        ndarray::stack(Axis(0), &views).map_err(|e| {
            DataError::invalid("<batch>", format!("cannot stack `{}`: {e}", field.name()))
        })
    }

    /// `dxyz` of every sample, `(B, 3)`.
    pub fn dxyz(&self) -> Array2<f64> {
        Array2::from_shape_fn((self.samples.len(), 3), |(b, a)| self.samples[b].dxyz[a])
    }
}

/// Batches of one subset of a dataset.
#[derive(Debug)]
pub struct Loader {
    indices: Vec<usize>,
    source: Source,
    config: LoaderConfig,
}

#[derive(Debug)]
enum Source {
    Mapped(Vec<SampleFile>),
    Preloaded(Vec<Sample>),
}

impl Loader {
    /// A loader over `subset` of `dataset` (every sample for `None`).
    pub fn new(dataset: &Dataset, subset: Option<Subset>, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::invalid(
                &dataset.dir,
                "batch size must be at least 1",
            ));
        }
        let indices = dataset.indices(subset);
        let files = indices
            .iter()
            .map(|&i| dataset.open_sample(i))
            .collect::<Result<Vec<_>>>()?;
        let source = if config.preload {
            Source::Preloaded(files.iter().map(SampleFile::load).collect::<Result<_>>()?)
        } else {
            Source::Mapped(files)
        };
        Ok(Self {
            indices,
            source,
            config,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the subset is empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Number of batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The batches of `epoch`, in an order and with augmentations fixed by seed and epoch.
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = Result<Batch>> + '_ {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = (0..self.len()).collect();
        if self.config.shuffle {
            order.shuffle(&mut rng);
        }
        let allowed = self.config.augment;
        let mirrors: Vec<Mirror> = order
            .iter()
            .map(|_| Mirror {
                x: allowed.x && rng.random_bool(0.5),
                y: allowed.y && rng.random_bool(0.5),
                z: allowed.z && rng.random_bool(0.5),
            })
            .collect();
        let batches = self.batches_per_epoch();
        (0..batches).map(move |b| {
            let range =
                b * self.config.batch_size..((b + 1) * self.config.batch_size).min(order.len());
            let mut batch = Batch {
                indices: Vec::with_capacity(range.len()),
                samples: Vec::with_capacity(range.len()),
                mirrors: mirrors[range.clone()].to_vec(),
            };
            for (&pos, &mirror) in order[range.clone()].iter().zip(&mirrors[range]) {
                let mut sample = self.sample(pos)?;
                mirror.apply(&mut sample);
                batch.indices.push(self.indices[pos]);
                batch.samples.push(sample);
            }
            Ok(batch)
        })
    }

    fn sample(&self, pos: usize) -> Result<Sample> {
        match &self.source {
            Source::Mapped(files) => files[pos].load(),
            Source::Preloaded(samples) => Ok(samples[pos].clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    /// A 2×3×2×2 sample (S, C, H, W) whose every value encodes its index.
    fn sample() -> Sample {
        let code = |c_base: f32| {
            move |(s, c, h, w): (usize, usize, usize, usize)| {
                c_base + (1000 * s + 100 * c + 10 * h + w) as f32
            }
        };
        Sample {
            domain: Array4::from_shape_fn((2, 1, 2, 2), |(s, _, h, w)| ((s + h + w) % 2) as f32),
            u2d: Array4::from_shape_fn((2, 3, 2, 2), code(0.5)),
            u: Array4::from_shape_fn((2, 3, 2, 2), code(0.25)),
            p: Array4::from_shape_fn((2, 1, 2, 2), code(0.75)),
            p2d: Some(Array4::from_shape_fn((2, 1, 2, 2), code(0.125))),
            dxyz: [1.0, 2.0, 3.0],
        }
    }

    #[test]
    fn the_eight_mirrors_are_distinct_and_numbered_by_their_code() {
        let all: Vec<Mirror> = Mirror::all().collect();
        assert_eq!(all[0], Mirror::default());
        for (k, m) in all.iter().enumerate() {
            assert_eq!(usize::from(m.code()), k);
        }
        let z = Mirror {
            z: true,
            ..Mirror::default()
        };
        assert_eq!(z.code(), 4);
    }

    #[test]
    fn mirror_y_flips_rows_and_negates_vy_only() {
        let before = sample();
        let mut after = before.clone();
        Mirror {
            x: false,
            y: true,
            z: false,
        }
        .apply(&mut after);
        for (s, h, w) in [(0, 0, 0), (1, 0, 1), (0, 1, 1)] {
            let hm = 1 - h;
            assert_eq!(after.domain[[s, 0, h, w]], before.domain[[s, 0, hm, w]]);
            assert_eq!(after.p[[s, 0, h, w]], before.p[[s, 0, hm, w]]);
            for field in [Field::U, Field::U2d] {
                let (a, b) = (after.field(field).unwrap(), before.field(field).unwrap());
                assert_eq!(a[[s, 0, h, w]], b[[s, 0, hm, w]], "vx kept");
                assert_eq!(a[[s, 1, h, w]], -b[[s, 1, hm, w]], "vy negated");
                assert_eq!(a[[s, 2, h, w]], b[[s, 2, hm, w]], "vz kept");
            }
        }
        assert_eq!(after.dxyz, before.dxyz);
    }

    #[test]
    fn mirror_x_and_z_flip_their_axes_and_negate_their_components() {
        let before = sample();
        let mut x = before.clone();
        Mirror {
            x: true,
            y: false,
            z: false,
        }
        .apply(&mut x);
        assert_eq!(x.u[[0, 0, 1, 0]], before.u[[0, 0, 1, 1]]);
        assert_eq!(x.u[[0, 1, 1, 0]], -before.u[[0, 1, 1, 1]]);
        assert_eq!(x.u[[0, 2, 1, 0]], -before.u[[0, 2, 1, 1]]);
        assert_eq!(x.u2d[[1, 0, 0, 1]], before.u2d[[1, 0, 0, 0]]);
        assert_eq!(x.p[[1, 0, 0, 1]], -before.p[[1, 0, 0, 0]]);
        let (xp2d, p2d) = (x.p2d.as_ref().unwrap(), before.p2d.as_ref().unwrap());
        assert_eq!(xp2d[[1, 0, 0, 1]], -p2d[[1, 0, 0, 0]]);
        assert_eq!(x.domain[[1, 0, 0, 1]], before.domain[[1, 0, 0, 0]]);

        let mut z = before.clone();
        Mirror {
            x: false,
            y: false,
            z: true,
        }
        .apply(&mut z);
        assert_eq!(z.u[[0, 2, 1, 0]], -before.u[[1, 2, 1, 0]]);
        assert_eq!(z.u2d[[0, 0, 1, 0]], before.u2d[[1, 0, 1, 0]]);
        assert_eq!(z.p[[0, 0, 1, 0]], before.p[[1, 0, 1, 0]]);
        let (zp2d, p2d) = (z.p2d.as_ref().unwrap(), before.p2d.as_ref().unwrap());
        assert_eq!(zp2d[[0, 0, 1, 0]], p2d[[1, 0, 1, 0]]);
        assert_eq!(z.domain[[0, 0, 0, 1]], before.domain[[1, 0, 0, 1]]);
    }

    #[test]
    fn every_mirror_twice_is_the_identity_and_keeps_a_valid_sample() {
        let before = sample();
        for bits in 0..8u8 {
            let m = Mirror {
                x: bits & 1 != 0,
                y: bits & 2 != 0,
                z: bits & 4 != 0,
            };
            let mut twice = before.clone();
            m.apply(&mut twice);
            twice.validate().unwrap();
            if bits != 0 {
                assert_ne!(twice, before, "{m:?} must change the sample");
            }
            m.apply(&mut twice);
            assert_eq!(twice, before, "{m:?}");
        }
    }
}
