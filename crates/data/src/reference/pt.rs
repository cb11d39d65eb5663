//! One tensor saved by `torch.save`: a zip archive holding `<root>/data.pkl`, a pickle
//! naming the tensor's storage and the view of it the tensor is, and `<root>/data/<key>`,
//! the storage's raw little-endian elements (stored uncompressed by PyTorch; a deflated
//! entry is read too).
//!
//! Every size here comes from the file, so nothing is sized by it before it is checked:
//! [`PtFile::open`] reads only the zip directory and the (size-capped) pickle, and refuses
//! a storage entry whose uncompressed size is not exactly what the pickle declares (before
//! anything is inflated) and a view that is not contiguous inside its storage (a stride-0
//! `expand` declares any number of elements over one). The caller then checks the declared
//! shape against the other files and the memory budget, and only then reads: the whole
//! storage once through a fixed buffer ([`PtFile::verify`]), and the view a window at a
//! time ([`PtStream`]), never past the declared bytes.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zip::read::ZipFile;
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use super::pickle;
use crate::error::{DataError, Result};

/// Largest `data.pkl` read: the pickle of one tensor is about 170 bytes.
const MAX_PICKLE_BYTES: u64 = 1 << 20;

/// Element types read (converted to f32, or f64 for voxel sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DType {
    F64,
    F32,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// The dtype of a `torch.<class>` storage; `None` for those not read (half precision,
    /// complex, quantized).
    fn from_storage(class: &str) -> Option<Self> {
        Some(match class {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub(crate) fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A `.pt` file whose header has been read and checked; its data not yet read.
pub(crate) struct PtFile {
    pub path: PathBuf,
    pub dtype: DType,
    pub shape: Vec<usize>,
    archive: ZipArchive<BufReader<File>>,
    /// A duplicate of the archive's handle (one open file, so the hash is of the bytes
    /// the archive reads).
    file: File,
    /// Index and name (`data/<key>`) of the storage entry.
    storage: usize,
    storage_name: String,
    /// Bytes of the storage, as both the pickle and the zip directory declare them.
    storage_bytes: u64,
    /// Where the view starts in the storage.
    offset_bytes: u64,
}

impl PtFile {
    /// Opens `path` and checks its header: the zip directory, `data.pkl` and the storage
    /// entry's declared size. Reads no tensor data.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DataError::NotFound {
                path: path.to_path_buf(),
                fix: "expected the reference layout SRC/x/{domain,U_2d,U,p,dxyz}.pt".into(),
            },
            _ => DataError::Io {
                path: path.to_path_buf(),
                action: "open",
                error: source,
            },
        })?;
        let handle = file.try_clone().map_err(DataError::io(path, "open"))?;
        let mut archive =
            ZipArchive::new(BufReader::new(handle)).map_err(|e| zip_error(path, e))?;
        let root = archive_root(path, &archive)?;
        check_byteorder(path, &mut archive, &root)?;
        let pickle = read_pickle(path, &mut archive, &root)?;
        let (view, dtype, shape) = tensor_view(path, &pickle)?;

        let storage_name = format!("data/{}", view.storage.key);
        let index = archive
            .index_for_name(&format!("{root}{storage_name}"))
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("{storage_name}, named by data.pkl, is missing"),
                )
            })?;
        let entry = archive
            .by_index_data(index)
            .map_err(|e| zip_error(path, e))?;
        let storage_bytes = storage_entry_bytes(
            &storage_name,
            entry.compression(),
            entry.size(),
            &view.storage,
            dtype,
        )
        .map_err(|e| corrupt(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            dtype,
            shape,
            archive,
            file,
            storage: index,
            storage_name,
            storage_bytes,
            // offset + numel ≤ storage numel (check_view), so no overflow.
            offset_bytes: view.offset * dtype.size() as u64,
        })
    }

    /// Bytes and SHA-256 (hex) of the whole file.
    pub(crate) fn sha256(&self) -> Result<(u64, String)> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))
            .map_err(DataError::io(&self.path, "read"))?;
        let mut hasher = Sha256::new();
        let bytes = io::copy(&mut BufReader::with_capacity(1 << 18, file), &mut hasher)
            .map_err(DataError::io(&self.path, "read"))?;
        Ok((bytes, format!("{:x}", hasher.finalize())))
    }

    /// Reads the whole storage once, through a fixed buffer, so a corrupt or truncated
    /// file fails before any sample is written: its length must be the declared one and
    /// its CRC-32 (checked by the zip reader at the end of the entry) must match. An entry
    /// that inflates beyond the declared size is refused after one byte more.
    pub(crate) fn verify(&mut self) -> Result<()> {
        let name = &self.storage_name;
        let corrupt = |reason: String| DataError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let mut entry = self
            .archive
            .by_index(self.storage)
            .map_err(|e| corrupt(format!("{name} unreadable ({e})")))?;
        let read = io::copy(&mut (&mut entry).take(self.storage_bytes), &mut io::sink())
            .map_err(|e| corrupt(format!("{name} unreadable ({e})")))?;
        if read < self.storage_bytes {
            return Err(corrupt(format!(
                "{name} ends after {read} of its {} bytes",
                self.storage_bytes
            )));
        }
        match entry.read(&mut [0]) {
            Ok(0) => Ok(()),
            Ok(_) => Err(corrupt(format!(
                "{name} holds more than its declared {} bytes",
                self.storage_bytes
            ))),
            Err(e) => Err(corrupt(format!("{name} fails its zip check ({e})"))),
        }
    }

    /// A reader of the view's elements, in order.
    pub(crate) fn stream(&mut self) -> Result<PtStream<'_>> {
        let reader = self
            .archive
            .by_index(self.storage)
            .map_err(|e| DataError::Corrupt {
                path: self.path.clone(),
                reason: format!("{} unreadable ({e})", self.storage_name),
            })?;
        Ok(PtStream {
            path: &self.path,
            dtype: self.dtype,
            reader,
            position: 0,
            offset_bytes: self.offset_bytes,
            buffer: Vec::new(),
        })
    }
}

/// A [`DataError::Corrupt`] of `path`.
fn corrupt(path: &Path, reason: String) -> DataError {
    DataError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// A zip error reading `path`, which therefore is not an archive `torch.save` wrote.
fn zip_error(path: &Path, e: ZipError) -> DataError {
    corrupt(path, format!("not a PyTorch zip archive ({e})"))
}

/// The folder (`"<name>/"`, or `""`) that holds `data.pkl`: `torch.save` puts every entry
/// under one folder, named after the file it first wrote.
fn archive_root(path: &Path, archive: &ZipArchive<BufReader<File>>) -> Result<String> {
    let names = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| zip_error(path, e))?;
    let root = names
        .iter()
        .filter_map(|n| n.strip_suffix("data.pkl"))
        .filter(|r| r.is_empty() || r.ends_with('/'))
        .min_by_key(|r| r.len())
        .ok_or_else(|| {
            corrupt(
                path,
                "no data.pkl entry; not a file written by torch.save".into(),
            )
        })?;
    Ok(root.to_string())
}

/// Refuses an archive whose `byteorder` entry is not `little`, since the elements are
/// decoded as little-endian; an archive without the entry is read as little-endian.
fn check_byteorder(
    path: &Path,
    archive: &mut ZipArchive<BufReader<File>>,
    root: &str,
) -> Result<()> {
    let Some(i) = archive.index_for_name(&format!("{root}byteorder")) else {
        return Ok(());
    };
    let mut order = String::new();
    let entry = archive.by_index(i).map_err(|e| zip_error(path, e))?;
    entry
        .take(16)
        .read_to_string(&mut order)
        .map_err(|e| corrupt(path, format!("byteorder unreadable ({e})")))?;
    if order.trim() != "little" {
        return Err(DataError::invalid(
            path,
            format!(
                "byteorder is {:?}; only little-endian .pt files are read",
                order.trim()
            ),
        ));
    }
    Ok(())
}

/// The bytes of `data.pkl`, refused before reading when it declares more than
/// [`MAX_PICKLE_BYTES`] (and never read past that).
fn read_pickle(
    path: &Path,
    archive: &mut ZipArchive<BufReader<File>>,
    root: &str,
) -> Result<Vec<u8>> {
    let i = archive
        .index_for_name(&format!("{root}data.pkl"))
        .ok_or_else(|| corrupt(path, "data.pkl unreadable".into()))?;
    let entry = archive.by_index(i).map_err(|e| zip_error(path, e))?;
    if entry.size() > MAX_PICKLE_BYTES {
        return Err(corrupt(
            path,
            format!(
                "data.pkl declares {} bytes, more than the {} KiB the pickle of a tensor can need",
                entry.size(),
                MAX_PICKLE_BYTES >> 10
            ),
        ));
    }
    let mut pickle = Vec::with_capacity(entry.size() as usize);
    entry
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut pickle)
        .map_err(|e| corrupt(path, format!("data.pkl unreadable ({e})")))?;
    Ok(pickle)
}

/// The one tensor `pickle` holds, with its dtype and (checked, see [`check_view`])
/// shape. Its storage entry is not yet looked at.
fn tensor_view(path: &Path, pickle: &[u8]) -> Result<(pickle::TensorView, DType, Vec<usize>)> {
    let root = pickle::parse(pickle).map_err(|e| corrupt(path, format!("data.pkl: {e}")))?;
    let view = match root.tensors()[..] {
        [view] => view.clone(),
        ref found => {
            return Err(corrupt(
                path,
                format!("expected one tensor, found {}", found.len()),
            ));
        }
    };
    let class = &view.storage.class;
    let dtype = DType::from_storage(class).ok_or_else(|| DataError::WrongDtype {
        path: path.to_path_buf(),
        name: "tensor".into(),
        expected: "a 32/64-bit float, integer or bool tensor (save with `.float()`)".into(),
        found: format!("torch.{class}"),
    })?;
    let shape = check_view(&view).map_err(|e| DataError::invalid(path, e))?;
    Ok((view, dtype, shape))
}

/// Checks the zip directory's record of the storage entry `name` against the pickle's
/// `storage` and returns the storage's bytes. Done before anything is inflated, so every
/// later read is held to the size the pickle declares and the caller budgets for.
fn storage_entry_bytes(
    name: &str,
    method: CompressionMethod,
    uncompressed: u64,
    storage: &pickle::StorageRef,
    dtype: DType,
) -> std::result::Result<u64, String> {
    if !matches!(
        method,
        CompressionMethod::Stored | CompressionMethod::Deflated
    ) {
        return Err(format!(
            "{name} is compressed with {method}, which torch.save never writes"
        ));
    }
    let esize = dtype.size() as u64;
    storage
        .numel
        .checked_mul(esize)
        .filter(|&b| b == uncompressed)
        .ok_or_else(|| {
            format!(
                "{name} declares {uncompressed} bytes uncompressed, but data.pkl declares {} elements of {esize} bytes",
                storage.numel,
            )
        })
}

/// Checks that `view` is a contiguous (row-major) tensor inside its storage and returns
/// its shape. Strides of axes of extent 1 do not matter, as in PyTorch.
fn check_view(view: &pickle::TensorView) -> std::result::Result<Vec<usize>, String> {
    let shape: Vec<usize> = view.shape.iter().map(|&d| d as usize).collect();
    if view.stride.len() != shape.len() {
        return Err(format!(
            "data.pkl gives {} strides for the {} axes of shape {shape:?}",
            view.stride.len(),
            shape.len()
        ));
    }
    let numel = view
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if numel > 0 {
        let mut contiguous = 1u64;
        for (&extent, &stride) in view.shape.iter().zip(&view.stride).rev() {
            if extent > 1 && stride != contiguous {
                let repeat = if view.stride.contains(&0) {
                    " (a stride of 0 repeats one stored element along an axis, as expand() does)"
                } else {
                    ""
                };
                return Err(format!(
                    "holds a view with strides {:?} over shape {shape:?}, not a contiguous tensor{repeat}; save it with torch.save(t.contiguous().clone())",
                    view.stride
                ));
            }
            contiguous *= extent;
        }
    }
    let storage = &view.storage;
    match view.offset.checked_add(numel) {
        Some(end) if end <= storage.numel => Ok(shape),
        _ => Err(format!(
            "its shape {shape:?} needs {numel} elements from element {} of storage data/{}, which holds {}",
            view.offset, storage.key, storage.numel
        )),
    }
}

/// Reads windows of a view in increasing order, keeping one window's bytes.
pub(crate) struct PtStream<'a> {
    path: &'a Path,
    dtype: DType,
    reader: ZipFile<'a, BufReader<File>>,
    /// Bytes of the storage read so far.
    position: u64,
    offset_bytes: u64,
    buffer: Vec<u8>,
}

impl PtStream<'_> {
    /// Passes elements `start..start + len` of the view (which the caller keeps within
    /// its shape) to `each`. Windows must not go back.
    pub(crate) fn read(&mut self, start: usize, len: usize, each: impl FnMut(f64)) -> Result<()> {
        let corrupt = |reason: String| DataError::Corrupt {
            path: self.path.to_path_buf(),
            reason,
        };
        let size = self.dtype.size() as u64;
        let from = self.offset_bytes + start as u64 * size;
        let Some(skip) = from.checked_sub(self.position) else {
            return Err(DataError::invalid(
                self.path,
                format!("element {start} read after a later one; samples are read in order"),
            ));
        };
        let skipped = io::copy(&mut (&mut self.reader).take(skip), &mut io::sink())
            .map_err(|e| corrupt(format!("tensor data unreadable ({e})")))?;
        if skipped < skip {
            return Err(corrupt("tensor data ends early".into()));
        }
        self.buffer.resize(len * size as usize, 0);
        self.reader
            .read_exact(&mut self.buffer)
            .map_err(|e| corrupt(format!("tensor data unreadable ({e})")))?;
        self.position = from + self.buffer.len() as u64;
        decode(self.dtype, &self.buffer, each);
        Ok(())
    }
}

/// Passes the little-endian elements of `bytes` to `each` as f64 (booleans as 0 or 1).
fn decode(dtype: DType, bytes: &[u8], mut each: impl FnMut(f64)) {
    macro_rules! decode {
        ($t:ty) => {
            for c in bytes.chunks_exact(size_of::<$t>()) {
                each(<$t>::from_le_bytes(c.try_into().unwrap_or_default()) as f64);
            }
        };
    }
    match dtype {
        DType::F64 => decode!(f64),
        DType::F32 => decode!(f32),
        DType::I64 => decode!(i64),
        DType::I32 => decode!(i32),
        DType::I16 => decode!(i16),
        DType::I8 => decode!(i8),
        DType::U8 => decode!(u8),
        DType::Bool => bytes.iter().for_each(|&b| each(f64::from(b != 0))),
    }
}
