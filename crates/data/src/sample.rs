//! One sample (one microstructure and its flow fields) in memory and on disk.
//!
//! On disk a sample is one safetensors file holding `domain`, `U_2d`, `U`, `p` (f32,
//! `(S, C, H, W)`, see `fiberflow_geometry::layout`), `dxyz` (f64, `(3,)`, metres) and,
//! in datasets generated here, `p_2d` (f32, `(S, 1, H, W)`); reference imports lack it.
//! Files are written atomically and read through a memory map, so opening one costs only
//! its header and a field is decoded only when asked for.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::Array4;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use fiberflow_geometry::budget;

use crate::atomic::write_atomic;
use crate::error::{DataError, Result};

/// Name of the voxel-size tensor `[dx, dy, dz]` in metres.
pub const DXYZ: &str = "dxyz";

/// Spatial extent of every field of a sample: `S` slices of `H × W` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub slices: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    /// `(S, C, H, W)` of `field`.
    pub fn dims(&self, field: Field) -> [usize; 4] {
        [self.slices, field.channels(), self.height, self.width]
    }

    /// Number of voxels, `S·H·W`.
    pub fn voxels(&self) -> usize {
        self.slices * self.height * self.width
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{}×{} (S×H×W)", self.slices, self.height, self.width)
    }
}

/// The voxel fields of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// Mask, 1 = fluid, 0 = fibre; one channel.
    Domain,
    /// Per-slice 2D velocity (vx, vy, vz ≡ 0), m/s.
    U2d,
    /// 3D velocity (vx, vy, vz), m/s.
    U,
    /// Pressure, Pa; one channel.
    P,
    /// Pressure of each slice's own 2D solve, Pa; one channel. Optional: the reference's
    /// layout has no such file.
    P2d,
}

impl Field {
    /// The fields every sample holds, in storage order.
    pub const ALL: [Field; 4] = [Field::Domain, Field::U2d, Field::U, Field::P];

    /// Every field, the optional [`Field::P2d`] last.
    pub const EVERY: [Field; 5] = [Field::Domain, Field::U2d, Field::U, Field::P, Field::P2d];

    /// Tensor name in sample files and exports (the reference's file stems).
    pub const fn name(self) -> &'static str {
        match self {
            Field::Domain => "domain",
            Field::U2d => "U_2d",
            Field::U => "U",
            Field::P => "p",
            Field::P2d => "p_2d",
        }
    }

    /// Position in [`Field::EVERY`].
    const fn index(self) -> usize {
        match self {
            Field::Domain => 0,
            Field::U2d => 1,
            Field::U => 2,
            Field::P => 3,
            Field::P2d => 4,
        }
    }

    /// Number of channels `C`.
    pub const fn channels(self) -> usize {
        match self {
            Field::Domain | Field::P | Field::P2d => 1,
            Field::U2d | Field::U => 3,
        }
    }
}

/// One microstructure with its flow fields, all `(S, C, H, W)`, SI units.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `(S, 1, H, W)`, 1 = fluid, 0 = fibre.
    pub domain: Array4<f32>,
    /// `(S, 3, H, W)` per-slice 2D velocity, m/s, vz ≡ 0.
    pub u2d: Array4<f32>,
    /// `(S, 3, H, W)` 3D velocity, m/s.
    pub u: Array4<f32>,
    /// `(S, 1, H, W)` pressure, Pa.
    pub p: Array4<f32>,
    /// `(S, 1, H, W)` pressure of each slice's 2D solve, Pa, when known.
    pub p2d: Option<Array4<f32>>,
    /// Voxel size `[dx, dy, dz]`, m.
    pub dxyz: [f64; 3],
}

impl Sample {
    /// The array of `field`; `None` only for an absent optional field.
    pub fn field(&self, field: Field) -> Option<&Array4<f32>> {
        match field {
            Field::Domain => Some(&self.domain),
            Field::U2d => Some(&self.u2d),
            Field::U => Some(&self.u),
            Field::P => Some(&self.p),
            Field::P2d => self.p2d.as_ref(),
        }
    }

    /// The array of `field`, mutably; `None` only for an absent optional field.
    pub fn field_mut(&mut self, field: Field) -> Option<&mut Array4<f32>> {
        match field {
            Field::Domain => Some(&mut self.domain),
            Field::U2d => Some(&mut self.u2d),
            Field::U => Some(&mut self.u),
            Field::P => Some(&mut self.p),
            Field::P2d => self.p2d.as_mut(),
        }
    }

    /// The fields this sample holds, in storage order.
    fn present(&self) -> impl Iterator<Item = (Field, &Array4<f32>)> {
        Field::EVERY
            .into_iter()
            .filter_map(|f| self.field(f).map(|a| (f, a)))
    }

    /// `(S, H, W)` as given by the domain.
    pub fn shape(&self) -> Shape {
        let (s, _, h, w) = self.domain.dim();
        Shape {
            slices: s,
            height: h,
            width: w,
        }
    }

    /// Fluid volume fraction (mean of the mask); 1 − porosity is the fibre volume fraction.
    pub fn porosity(&self) -> f64 {
        let n = self.domain.len().max(1) as f64;
        self.domain.iter().map(|&v| f64::from(v)).sum::<f64>() / n
    }

    /// Checks shapes, channel counts, a binary mask, finite values and a positive `dxyz`.
    pub fn validate(&self) -> Result<()> {
        self.check(Path::new("<in-memory sample>"))
    }

    /// [`Sample::validate`], with errors naming `origin`.
    pub(crate) fn check(&self, origin: &Path) -> Result<()> {
        let shape = self.shape();
        if shape.voxels() == 0 {
            return Err(DataError::invalid(
                origin,
                format!("empty sample, shape {shape}"),
            ));
        }
        for (field, array) in self.present() {
            let expected = shape.dims(field);
            if array.shape() != expected {
                return Err(DataError::WrongShape {
                    path: origin.to_path_buf(),
                    name: field.name().into(),
                    expected: format!("{expected:?} (S, C, H, W)"),
                    found: array.shape().to_vec(),
                });
            }
            check_values(origin, field, array)?;
        }
        check_dxyz(origin, &self.dxyz)
    }

    /// Writes the sample as a safetensors file, atomically, after validating it.
    pub fn write(&self, path: &Path) -> Result<()> {
        self.check(path)?;
        let bytes: Vec<(Field, &Array4<f32>, Vec<u8>)> = self
            .present()
            .map(|(f, a)| (f, a, a.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let dxyz: Vec<u8> = self.dxyz.iter().flat_map(|v| v.to_le_bytes()).collect();
        let corrupt = |e: safetensors::SafeTensorError| DataError::invalid(path, e.to_string());
        let mut views = Vec::with_capacity(bytes.len() + 1);
        for (field, array, data) in &bytes {
            let shape = array.shape().to_vec();
            views.push((
                field.name(),
                TensorView::new(Dtype::F32, shape, data).map_err(corrupt)?,
            ));
        }
        views.push((
            DXYZ,
            TensorView::new(Dtype::F64, vec![3], &dxyz).map_err(corrupt)?,
        ));
        let file = safetensors::serialize(views, None).map_err(corrupt)?;
        write_atomic(path, &file)
    }
}

/// Checks the values of one field: all finite, and 0/1 for the mask.
fn check_values(origin: &Path, field: Field, array: &Array4<f32>) -> Result<()> {
    if let Some((index, &value)) = array.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(DataError::NonFinite {
            path: origin.to_path_buf(),
            name: field.name().into(),
            index: vec![index.0, index.1, index.2, index.3],
            value: value.into(),
        });
    }
    let non_binary = (field == Field::Domain)
        .then(|| array.indexed_iter().find(|(_, v)| **v != 0.0 && **v != 1.0))
        .flatten();
    if let Some((i, v)) = non_binary {
        return Err(DataError::invalid(
            origin,
            format!(
                "`domain` must be 0 (fibre) or 1 (fluid), found {v} at index {:?}",
                [i.0, i.1, i.2, i.3]
            ),
        ));
    }
    // Finite but absurd values (a corrupt file, or a field not in SI units) would pass
    // every later check and turn metrics into 1e33s; no Stokes flow comes near these.
    let (limit, unit) = match field {
        Field::Domain => return Ok(()),
        Field::U | Field::U2d => (MAX_SPEED_M_S, "m/s"),
        Field::P | Field::P2d => (MAX_PRESSURE_PA, "Pa"),
    };
    match array.indexed_iter().find(|(_, v)| v.abs() > limit) {
        Some((i, v)) => Err(DataError::invalid(
            origin,
            format!(
                "`{}` holds {v:e} {unit} at index {:?}, beyond any Stokes flow (|·| ≤ {limit:e} {unit}); the file is corrupt or not in SI units",
                field.name(),
                [i.0, i.1, i.2, i.3]
            ),
        )),
        None => Ok(()),
    }
}

/// Largest speed a sample may hold, m/s: resin flow in fibre beds runs at µm/s to mm/s,
/// and Stokes flow ends far below the speed of sound; the bound is that with a wide margin
/// (synthetic test fields use values in the thousands).
pub const MAX_SPEED_M_S: f32 = 1e6;
/// Largest pressure a sample may hold, Pa (a million times any process pressure).
pub const MAX_PRESSURE_PA: f32 = 1e15;

/// Checks that every voxel size is finite and positive.
pub(crate) fn check_dxyz(origin: &Path, dxyz: &[f64; 3]) -> Result<()> {
    if dxyz.iter().all(|d| d.is_finite() && *d > 0.0) {
        Ok(())
    } else {
        Err(DataError::invalid(
            origin,
            format!("`dxyz` must be three finite positive lengths in metres, found {dxyz:?}"),
        ))
    }
}

/// A sample file opened through a memory map: its header is parsed and checked, its
/// fields are decoded on demand.
#[derive(Debug)]
pub struct SampleFile {
    path: PathBuf,
    map: Mmap,
    shape: Shape,
    /// Byte ranges of the fields in `map`, in [`Field::EVERY`] order; `None` for an
    /// absent optional field.
    ranges: [Option<(usize, usize)>; 5],
    dxyz: [f64; 3],
}

impl SampleFile {
    /// Maps `path` and checks that it holds the five tensors with the right dtypes and
    /// consistent shapes, and a valid `dxyz`. The safetensors parser bounds the header's
    /// length by the file's and checks that the declared offsets cover the file exactly,
    /// so a truncated body or a lying header is a `Corrupt` error here, before any field
    /// is decoded; [`SampleFile::read`] and [`SampleFile::load`] check the memory budget.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DataError::NotFound {
                path: path.to_path_buf(),
                fix: "re-run the command that writes this sample (generation or import)".into(),
            },
            _ => DataError::Io {
                path: path.to_path_buf(),
                action: "open",
                error: source,
            },
        })?;
        // SAFETY: the map is read-only and dataset files are only ever replaced by an
        // atomic rename, never modified in place, so the mapped bytes do not change.
        let map = unsafe { Mmap::map(&file) }.map_err(DataError::io(path, "memory-map"))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| DataError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("not a valid safetensors file ({e})"),
            })?;
        let data_start = 8 + header_len;
        let tensor = |name: &str, dtype: Dtype| {
            let info = metadata
                .info(name)
                .ok_or_else(|| DataError::MissingTensor {
                    path: path.to_path_buf(),
                    name: name.into(),
                })?;
            if info.dtype != dtype {
                return Err(DataError::WrongDtype {
                    path: path.to_path_buf(),
                    name: name.into(),
                    expected: format!("{dtype:?}"),
                    found: format!("{:?}", info.dtype),
                });
            }
            let (start, end) = info.data_offsets;
            Ok((info.shape.clone(), (data_start + start, data_start + end)))
        };

        let (domain_dims, _) = tensor(Field::Domain.name(), Dtype::F32)?;
        let shape = match domain_dims[..] {
            [s, 1, h, w] if s > 0 && h > 0 && w > 0 => Shape {
                slices: s,
                height: h,
                width: w,
            },
            _ => {
                return Err(DataError::WrongShape {
                    path: path.to_path_buf(),
                    name: Field::Domain.name().into(),
                    expected: "(S, 1, H, W) with S, H, W > 0".into(),
                    found: domain_dims,
                });
            }
        };
        let mut ranges = [None; 5];
        for (slot, field) in ranges.iter_mut().zip(Field::EVERY) {
            if !Field::ALL.contains(&field) && metadata.info(field.name()).is_none() {
                continue;
            }
            let (dims, range) = tensor(field.name(), Dtype::F32)?;
            let expected = shape.dims(field);
            if dims != expected {
                return Err(DataError::WrongShape {
                    path: path.to_path_buf(),
                    name: field.name().into(),
                    expected: format!("{expected:?} (S, C, H, W, with the S, H, W of `domain`)"),
                    found: dims,
                });
            }
            *slot = Some(range);
        }
        let (dxyz_dims, dxyz_range) = tensor(DXYZ, Dtype::F64)?;
        if dxyz_dims != [3] {
            return Err(DataError::WrongShape {
                path: path.to_path_buf(),
                name: DXYZ.into(),
                expected: "[3]".into(),
                found: dxyz_dims,
            });
        }
        let mut dxyz = [0.0; 3];
        for (d, chunk) in dxyz
            .iter_mut()
            .zip(map[dxyz_range.0..dxyz_range.1].chunks_exact(8))
        {
            *d = f64::from_le_bytes(chunk.try_into().unwrap_or_default());
        }
        check_dxyz(path, &dxyz)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            shape,
            ranges,
            dxyz,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `(S, H, W)` of the fields.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Voxel size `[dx, dy, dz]`, m.
    pub fn dxyz(&self) -> [f64; 3] {
        self.dxyz
    }

    /// Decodes one field and checks its values (finite; binary for the mask).
    pub fn read(&self, field: Field) -> Result<Array4<f32>> {
        self.check_budget(format_args!("`{}`", field.name()), field.channels())?;
        let array = self.decode(field)?;
        check_values(&self.path, field, &array)?;
        Ok(array)
    }

    /// Decodes the whole sample and validates it.
    pub fn load(&self) -> Result<Sample> {
        let channels = Field::EVERY
            .into_iter()
            .filter(|&f| self.has(f))
            .map(Field::channels)
            .sum();
        self.check_budget("the whole sample", channels)?;
        let sample = Sample {
            domain: self.decode(Field::Domain)?,
            u2d: self.decode(Field::U2d)?,
            u: self.decode(Field::U)?,
            p: self.decode(Field::P)?,
            p2d: self
                .has(Field::P2d)
                .then(|| self.decode(Field::P2d))
                .transpose()?,
            dxyz: self.dxyz,
        };
        sample.check(&self.path)?;
        Ok(sample)
    }

    /// Whether the file holds `field` (always true for [`Field::ALL`]).
    pub fn has(&self, field: Field) -> bool {
        self.ranges[field.index()].is_some()
    }

    /// Checks that decoding `channels` f32 channels of this file's shape, called `what`,
    /// fits the memory budget. Mapping the file costs no heap, but each decoded field is a
    /// copy, so a large file is refused here with its size instead of exhausting memory.
    /// Runs on every [`SampleFile::read`], so the message is built only when refusing.
    fn check_budget(&self, what: impl fmt::Display, channels: usize) -> Result<()> {
        let Shape {
            slices,
            height,
            width,
        } = self.shape;
        let dims = [slices, channels, height, width];
        let element = size_of::<f32>();
        if budget::array_bytes(&dims, element).is_some_and(|n| n <= u128::from(budget::bytes())) {
            return Ok(());
        }
        budget::check_array(&format!("{}: {what}", self.path.display()), &dims, element)?;
        Ok(())
    }

    fn decode(&self, field: Field) -> Result<Array4<f32>> {
        let (start, end) = self.ranges[field.index()].ok_or_else(|| DataError::MissingTensor {
            path: self.path.clone(),
            name: field.name().into(),
        })?;
        let values: Vec<f32> = self.map[start..end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        Array4::from_shape_vec(self.shape.dims(field), values).map_err(|e| DataError::Corrupt {
            path: self.path.clone(),
            reason: format!("`{}`: {e}", field.name()),
        })
    }
}
