//! A writer of PyTorch's `torch.save` file format for one bare tensor per file, which is
//! how the reference PyTorch project stores its dataset (`x/U.pt`, …). No Rust crate
//! writes it (the readers, `pytorch-reader` and candle's, only read), and the format for a
//! tensor is small:
//!
//! * a zip archive (entries stored, not compressed) whose entries share one top folder:
//!   `archive/data.pkl`, `archive/byteorder` (`little`), `archive/version` (`3`) and one
//!   storage `archive/data/0` holding the elements in row-major order, 64-byte aligned as
//!   PyTorch aligns them (so `torch.load(mmap=True)` works too);
//! * `data.pkl`, a pickle (protocol 2) of `torch._utils._rebuild_tensor_v2(storage, 0,
//!   size, stride, False, OrderedDict())`, the storage given by a persistent id
//!   `('storage', torch.FloatStorage, '0', 'cpu', numel)`: exactly the objects that
//!   `torch.load`'s default `weights_only` unpickler allows.
//!
//! The elements are streamed in by the caller, so a tensor larger than memory can be
//! written one sample at a time.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::error::{DataError, Result};

/// Element types the reference's tensors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDType {
    Bool,
    U8,
    F32,
    F64,
}

impl TorchDType {
    fn storage(self) -> &'static str {
        match self {
            Self::Bool => "BoolStorage",
            Self::U8 => "ByteStorage",
            Self::F32 => "FloatStorage",
            Self::F64 => "DoubleStorage",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 => 1,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }
}

/// One `.pt` file being written: create it with its dtype and shape, [`TorchWriter::write`]
/// exactly `numel × size` bytes of little-endian elements, then [`TorchWriter::finish`].
pub struct TorchWriter<W: Write + Seek> {
    zip: ZipWriter<W>,
    path: PathBuf,
    remaining: u64,
}

impl<W: Write + Seek> TorchWriter<W> {
    /// Starts `file` (whose name `path` is only for messages) as a tensor of `shape`.
    pub fn new(file: W, path: &Path, dtype: TorchDType, shape: &[usize]) -> Result<Self> {
        let overflow = || DataError::invalid(path, format!("shape {shape:?} overflows"));
        let numel = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(overflow)?;
        let bytes = numel
            .checked_mul(dtype.size() as u64)
            .filter(|&b| b < 1 << 62)
            .ok_or_else(overflow)?;
        let io = |e: zip::result::ZipError| DataError::invalid(path, format!("zip: {e}"));
        let mut zip = ZipWriter::new(file);
        let small = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for (name, content) in [
            ("archive/data.pkl", pickle(dtype, shape, numel)),
            ("archive/byteorder", b"little".to_vec()),
            ("archive/version", b"3\n".to_vec()),
        ] {
            zip.start_file(name, small).map_err(io)?;
            zip.write_all(&content)
                .map_err(DataError::io(path, "write"))?;
        }
        let data = small
            .with_alignment(64)
            .large_file(bytes >= u64::from(u32::MAX));
        zip.start_file("archive/data/0", data).map_err(io)?;
        Ok(Self {
            zip,
            path: path.to_path_buf(),
            remaining: bytes,
        })
    }

    /// Appends elements (little-endian bytes).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > self.remaining {
            return Err(DataError::invalid(
                &self.path,
                "more tensor data than its shape holds",
            ));
        }
        self.remaining -= bytes.len() as u64;
        self.zip
            .write_all(bytes)
            .map_err(DataError::io(&self.path, "write"))
    }

    /// Closes the archive; every element must have been written.
    pub fn finish(self) -> Result<W> {
        if self.remaining != 0 {
            return Err(DataError::invalid(
                &self.path,
                format!("{} bytes of tensor data missing", self.remaining),
            ));
        }
        self.zip
            .finish()
            .map_err(|e| DataError::invalid(&self.path, format!("zip: {e}")))
    }
}

/// The pickle of one contiguous tensor of `shape` over storage `0` of `numel` elements.
fn pickle(dtype: TorchDType, shape: &[usize], numel: u64) -> Vec<u8> {
    let mut p = Pickle(vec![0x80, 2]); // PROTO 2
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.0.push(b'('); // MARK: the arguments
    p.0.push(b'('); // MARK: the persistent id
    p.unicode("storage");
    p.global("torch", dtype.storage());
    p.unicode("0");
    p.unicode("cpu");
    p.int(numel);
    p.0.extend([b't', b'Q']); // TUPLE, BINPERSID
    p.int(0); // storage offset
    p.tuple(shape.iter().map(|&d| d as u64));
    let mut stride = vec![1u64; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        stride[k] = stride[k + 1] * shape[k + 1] as u64;
    }
    p.tuple(stride);
    p.0.push(0x89); // NEWFALSE: requires_grad
    p.global("collections", "OrderedDict");
    p.0.extend([b')', b'R']); // EMPTY_TUPLE, REDUCE: backward hooks
    p.0.extend([b't', b'R', b'.']); // TUPLE, REDUCE, STOP
    p.0
}

/// Pickle opcodes, appended in order.
struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        for part in [module, name] {
            self.0.extend(part.bytes());
            self.0.push(b'\n');
        }
    }

    fn unicode(&mut self, s: &str) {
        self.0.push(b'X'); // BINUNICODE
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.bytes());
    }

    /// BININT1, BININT2, BININT or LONG1, whichever holds `v`.
    fn int(&mut self, v: u64) {
        if v < 1 << 8 {
            self.0.extend([b'K', v as u8]);
        } else if v < 1 << 16 {
            self.0.push(b'M');
            self.0.extend((v as u16).to_le_bytes());
        } else if v < 1 << 31 {
            self.0.push(b'J');
            self.0.extend((v as u32).to_le_bytes());
        } else {
            // Two's complement, little-endian, with a zero byte so the sign stays positive.
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] < 0x80 {
                bytes.pop();
            }
            self.0.extend([0x8a, bytes.len() as u8]);
            self.0.extend(bytes);
        }
    }

    fn tuple(&mut self, items: impl IntoIterator<Item = u64>) {
        self.0.push(b'(');
        for v in items {
            self.int(v);
        }
        self.0.push(b't');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pytorch_reader::PytorchReader;
    use std::fs::File;
    use std::io::{BufReader, Read};
    use zip::ZipArchive;

    /// Writes a tensor and reads it back with `pytorch-reader`, a reader written
    /// independently after PyTorch's own loader (the import uses the crate's own reader,
    /// `crate::reference`, so this checks the writer against a second one).
    fn round_trip(dtype: TorchDType, shape: &[usize], bytes: &[u8]) -> (Vec<usize>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pt");
        let file = File::create(&path).unwrap();
        let mut w = TorchWriter::new(file, &path, dtype, shape).unwrap();
        // Streamed in two parts, as the export writes one sample at a time.
        let half = bytes.len() / 2;
        w.write(&bytes[..half]).unwrap();
        w.write(&bytes[half..]).unwrap();
        w.finish().unwrap();
        // pytorch-reader reads only dictionary roots: wrap the tensor in one.
        let wrapped = dir.path().join("w.pt");
        wrap_root(&path, &File::create(&wrapped).unwrap()).unwrap();
        let reader = PytorchReader::new(&wrapped).unwrap();
        let t = reader.into_tensors().into_values().next().unwrap();
        (t.shape().to_vec(), t.read().unwrap())
    }

    /// Copies the `torch.save` archive `src` into `dst` with its pickle root wrapped in a
    /// one-entry dictionary, which `pytorch-reader` (reading only dictionary roots) can read.
    fn wrap_root(src: &Path, dst: &File) -> Result<()> {
        let corrupt = |reason: String| DataError::Corrupt {
            path: src.to_path_buf(),
            reason,
        };
        let file = File::open(src).map_err(DataError::io(src, "open"))?;
        let zip_error =
            |e: zip::result::ZipError| corrupt(format!("not a PyTorch zip archive ({e})"));
        let mut archive = ZipArchive::new(BufReader::new(file)).map_err(zip_error)?;
        let mut out = ZipWriter::new(dst);
        for i in 0..archive.len() {
            let entry = archive.by_index(i).map_err(zip_error)?;
            let name = entry.name().map_err(zip_error)?.into_owned();
            if !name.ends_with("data.pkl") {
                drop(entry);
                out.raw_copy_file(archive.by_index_raw(i).map_err(zip_error)?)
                    .map_err(zip_error)?;
                continue;
            }
            let mut pickle = Vec::new();
            entry
                .take(1 << 20)
                .read_to_end(&mut pickle)
                .map_err(|e| corrupt(format!("data.pkl unreadable ({e})")))?;
            let pickle = wrap_pickle(&pickle)
                .ok_or_else(|| corrupt("data.pkl is not a complete pickle".into()))?;
            let options =
                SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
            out.start_file(name, options).map_err(zip_error)?;
            out.write_all(&pickle).map_err(|e| corrupt(e.to_string()))?;
        }
        out.finish().map_err(zip_error)?;
        Ok(())
    }

    /// `PROTO n, <root>, STOP` → `PROTO n, EMPTY_DICT, "tensor", <root>, SETITEM, STOP`.
    fn wrap_pickle(pickle: &[u8]) -> Option<Vec<u8>> {
        const PROTO: u8 = 0x80;
        let (proto, rest) = pickle.split_at_checked(2)?;
        let body = rest.strip_suffix(b".")?;
        if proto[0] != PROTO || body.is_empty() {
            return None;
        }
        let key = b"tensor";
        let mut out = Vec::with_capacity(pickle.len() + 16);
        out.extend_from_slice(proto);
        out.push(b'}'); // EMPTY_DICT
        out.push(b'X'); // BINUNICODE
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(body);
        out.push(b's'); // SETITEM
        out.push(b'.'); // STOP
        Some(out)
    }

    #[test]
    fn tensors_read_back_with_shape_dtype_and_values() {
        let v: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            round_trip(TorchDType::F32, &[2, 3, 4], &bytes),
            (vec![2, 3, 4], bytes)
        );
        let d: Vec<u8> = [1e-7f64, 2e-7, 5e-6]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(round_trip(TorchDType::F64, &[1, 3], &d), (vec![1, 3], d));
        let b = vec![1u8, 0, 0, 1, 1, 1];
        assert_eq!(round_trip(TorchDType::Bool, &[6], &b), (vec![6], b));
    }

    #[test]
    fn integers_take_the_shortest_opcode() {
        let op = |v: u64| {
            let mut p = Pickle(Vec::new());
            p.int(v);
            p.0
        };
        assert_eq!(op(7), [b'K', 7]);
        assert_eq!(op(300), [b'M', 0x2c, 0x01]);
        assert_eq!(op(70_000), [b'J', 0x70, 0x11, 0x01, 0x00]);
        // 2^31 needs a fifth byte to stay positive in two's complement.
        assert_eq!(op(1 << 31), [0x8a, 5, 0, 0, 0, 0x80, 0]);
        assert_eq!(op(1 << 32), [0x8a, 5, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn wrong_amounts_of_data_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pt");
        let w = |shape: &[usize]| {
            TorchWriter::new(File::create(&path).unwrap(), &path, TorchDType::F32, shape).unwrap()
        };
        let e = w(&[2]).finish().unwrap_err();
        assert!(
            e.to_string().contains("8 bytes of tensor data missing"),
            "{e}"
        );
        let e = w(&[1]).write(&[0; 8]).unwrap_err();
        assert!(e.to_string().contains("more tensor data"), "{e}");
    }

    #[test]
    fn pickle_root_is_wrapped_in_a_dict() {
        assert_eq!(
            wrap_pickle(b"\x80\x02K\x07.").unwrap(),
            b"\x80\x02}X\x06\x00\x00\x00tensorK\x07s."
        );
        assert!(wrap_pickle(b"\x80\x02K\x07").is_none(), "truncated pickle");
        assert!(wrap_pickle(b"K\x07.").is_none(), "no protocol marker");
    }
}
