//! Import of user microstructure images as fluid masks `(S, H, W)`, 1 = fluid.
//!
//! Accepted: a `.npy` array of shape (H, W) or (S, H, W) with dtype bool, uint8, int32,
//! int64, float32 or float64 holding only 0 and 1; or a folder of PNG/TIFF slices read in
//! file-name order (zero-pad the numbers). By default 0 / dark marks fibre and 1 / bright
//! marks fluid; `SolidValue::High` flips that. Images are binarised at half their range.
//!
//! Inputs are untrusted: every header is parsed first and the size it declares is checked
//! against the file and the memory budget (`crate::budget`) before anything of that size
//! is allocated, so a corrupt or hostile file ends in an error naming it, not an abort.

use crate::budget;
use crate::error::GeometryError;
use image::{ImageDecoder, ImageReader, Limits};
use ndarray::{Array, Array3, ArrayD, Dimension, Ix3, IxDyn, ShapeBuilder};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadDataError, ReadableElement};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Which pixel value marks fibre (solid) in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SolidValue {
    /// 0 / dark pixels are fibre (fiberflow's own convention).
    #[default]
    Low,
    /// 1 / bright pixels are fibre.
    High,
}

/// Reads a mask from a `.npy` file or a folder of PNG/TIFF slices and checks it is usable:
/// binary, finite, and containing both fluid and fibre.
pub fn load_mask(path: &Path, solid: SolidValue) -> Result<Array3<u8>, GeometryError> {
    if !path.exists() {
        return Err(GeometryError::input(path, "no such file or folder"));
    }
    let mut mask = if path.is_dir() {
        read_image_folder(path)?
    } else if path.extension().and_then(|e| e.to_str()) == Some("npy") {
        read_npy_binary(path)?
    } else {
        return Err(GeometryError::input(
            path,
            "unsupported microstructure file; give a .npy array or a folder of PNG/TIFF slices",
        ));
    };
    if solid == SolidValue::High {
        // In place: a copy would double the peak the budget was checked for.
        mask.mapv_inplace(|v| 1 - v);
    }
    let fluid = mask.iter().filter(|&&v| v == 1).count();
    if fluid == 0 {
        return Err(GeometryError::input(
            path,
            "the image is all fibre (no fluid pixel); check --solid-value",
        ));
    }
    if fluid == mask.len() {
        return Err(GeometryError::input(
            path,
            "the image is all fluid (no fibre pixel); check --solid-value",
        ));
    }
    Ok(mask)
}

/// Longest `.npy` header accepted. Real headers are about a hundred bytes and NumPy
/// itself refuses more than 10 000 by default; the `.npy` format lets a header claim up
/// to 4 GiB, which would otherwise be allocated before the claim is checked.
const MAX_NPY_HEADER: usize = 1 << 16;

/// Deepest bracket nesting let through to the header parser. The parser recurses once per
/// level, so a header of tens of thousands of `(` would overflow the stack, an abort that
/// no error handling can catch; real headers nest two levels.
const MAX_NPY_NESTING: usize = 16;

/// A `.npy` file whose header is parsed and whose data length is known, before anything
/// sized by the header is allocated.
struct NpyFile {
    /// Positioned at the first data byte.
    file: File,
    header: Header,
    /// Bytes after the header.
    data_len: u64,
}

impl NpyFile {
    /// Opens `path` and parses its header, refusing a header that is too long, nested too
    /// deeply or longer than the file before reading it.
    fn open(path: &Path) -> Result<Self, GeometryError> {
        let io = |error| GeometryError::Io {
            path: path.to_path_buf(),
            error,
        };
        let bad = |msg: String| GeometryError::input(path, format!("not a readable .npy: {msg}"));
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        // Magic string (6 bytes), version (2), header length (2 bytes in version 1, 4 later).
        let mut prefix = Vec::with_capacity(12);
        (&mut file).take(12).read_to_end(&mut prefix).map_err(io)?;
        if !prefix.starts_with(b"\x93NUMPY") {
            return Err(bad("it does not start with the NumPy magic string".into()));
        }
        let (prefix_len, header_len) = match (prefix[6..].first(), prefix.len()) {
            (Some(1), 10..) => (10, usize::from(u16::from_le_bytes([prefix[8], prefix[9]]))),
            (Some(2 | 3), 12) => (
                12,
                u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize,
            ),
            (Some(&v), _) if !(1..=3).contains(&v) => {
                return Err(bad(format!("unsupported format version {v}")));
            }
            _ => return Err(bad(format!("truncated: {file_len} bytes"))),
        };
        if header_len > MAX_NPY_HEADER {
            return Err(bad(format!(
                "header claims {header_len} bytes, more than the {MAX_NPY_HEADER} any array needs"
            )));
        }
        let data_start = (prefix_len + header_len) as u64;
        if data_start > file_len {
            return Err(bad(format!(
                "truncated: the header claims {header_len} bytes but the file holds {file_len} in all"
            )));
        }
        let mut raw = prefix[..prefix_len].to_vec();
        raw.resize(prefix_len + header_len, 0);
        file.seek(SeekFrom::Start(prefix_len as u64)).map_err(io)?;
        file.read_exact(&mut raw[prefix_len..]).map_err(io)?;
        let mut depth = 0usize;
        for &b in &raw[prefix_len..] {
            match b {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_NPY_NESTING {
                return Err(bad(format!(
                    "header nests brackets more than {MAX_NPY_NESTING} deep"
                )));
            }
        }
        let header = Header::from_reader(&mut raw.as_slice()).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            file,
            header,
            data_len: file_len - data_start,
        })
    }

    /// Checks, before allocating, that the file holds exactly the declared shape's data
    /// in elements of `element_bytes` (a truncated or padded body is an error, not a
    /// short read or a panic) and that `peak_bytes_per_element` for every element fits
    /// the memory budget. Returns the number of elements.
    fn check(
        &self,
        path: &Path,
        what: &str,
        element_bytes: usize,
        peak_bytes_per_element: usize,
    ) -> Result<usize, GeometryError> {
        let shape = &self.header.shape;
        let declared = budget::array_bytes(shape, element_bytes);
        if declared != Some(u128::from(self.data_len)) {
            let declared = match declared {
                Some(n) => format!("{n} bytes"),
                None => "more bytes than any file holds".into(),
            };
            return Err(GeometryError::input(
                path,
                format!(
                    "not a readable .npy: truncated or corrupt, its header declares shape {shape:?} ({declared} of data) but {} bytes follow the header",
                    self.data_len
                ),
            ));
        }
        budget::check_array(
            &format!("{}: {what}", path.display()),
            shape,
            peak_bytes_per_element,
        )?;
        // The data is exactly elements × element_bytes, and within the budget. (The
        // product of the shape itself may overflow when an axis is 0.)
        Ok((self.data_len / element_bytes as u64) as usize)
    }

    /// Reads the data as `T` (the caller has checked it with [`NpyFile::check`]).
    fn read<T: ReadableElement>(self, path: &Path, len: usize) -> Result<ArrayD<T>, GeometryError> {
        let data =
            T::read_to_end_exact_vec(BufReader::new(self.file), &self.header.type_descriptor, len)
                .map_err(|e| match e {
                    ReadDataError::WrongDescriptor(d) => GeometryError::input(
                        path,
                        format!("holds dtype {d}, expected {}", std::any::type_name::<T>()),
                    ),
                    e => GeometryError::input(path, format!("not a readable .npy: {e}")),
                })?;
        let shape = IxDyn(&self.header.shape).set_f(self.header.layout.is_fortran());
        ArrayD::from_shape_vec(shape, data).map_err(|e| {
            GeometryError::input(
                path,
                format!("shape {:?} is unusable: {e}", self.header.shape),
            )
        })
    }
}

/// Reads a `.npy` array of element type `T` and dimension `D`, called `what` in errors.
/// Unlike `ReadNpyExt::read_npy`, which allocates whatever the header declares before
/// reading a byte of data, it checks the declared size against the file's length and the
/// memory budget first, so a lying header is an error rather than an allocation abort.
pub fn read_npy<T: ReadableElement, D: Dimension>(
    path: &Path,
    what: &str,
) -> Result<Array<T, D>, GeometryError> {
    let npy = NpyFile::open(path)?;
    let ndim = npy.header.shape.len();
    if D::NDIM.is_some_and(|n| n != ndim) {
        return Err(GeometryError::input(
            path,
            format!(
                "{what} must be {}-D, got {ndim}-D shape {:?}",
                D::NDIM.unwrap_or_default(),
                npy.header.shape
            ),
        ));
    }
    let size = std::mem::size_of::<T>();
    let len = npy.check(path, what, size, size)?;
    npy.read::<T>(path, len)?
        .into_dimensionality()
        .map_err(|e| GeometryError::input(path, e.to_string()))
}

/// Reads a `.npy` of any supported dtype as 0/1 values, shaped `(S, H, W)`.
fn read_npy_binary(path: &Path) -> Result<Array3<u8>, GeometryError> {
    /// The values as 0/1, in standard layout whatever the file's order.
    fn to_binary<T: Copy>(
        path: &Path,
        a: ArrayD<T>,
        as_f64: impl Fn(T) -> f64,
    ) -> Result<ArrayD<u8>, GeometryError> {
        let mut out = ArrayD::<u8>::zeros(a.shape());
        for (o, &v) in out.iter_mut().zip(a.iter()) {
            *o = match as_f64(v) {
                0.0 => 0,
                1.0 => 1,
                v if v.is_nan() => return Err(GeometryError::input(path, "mask contains NaN")),
                v => {
                    return Err(GeometryError::input(
                        path,
                        format!("mask must hold only 0 and 1, found {v}"),
                    ));
                }
            };
        }
        Ok(out)
    }
    let npy = NpyFile::open(path)?;
    let descr = npy.header.type_descriptor.as_string().map(String::as_str);
    // The descriptors ndarray-npy reads for each supported type, with their sizes.
    let element_bytes = match descr {
        Some("|u1" | "u1" | "B" | "|b1") => 1,
        Some("<i4" | ">i4" | "<f4" | ">f4") => 4,
        Some("<i8" | ">i8" | "<f8" | ">f8") => 8,
        _ => {
            return Err(GeometryError::input(
                path,
                format!(
                    "unsupported dtype {}; use bool, uint8, int32, int64, float32 or float64",
                    npy.header.type_descriptor
                ),
            ));
        }
    };
    let shape = &npy.header.shape;
    if !(2..=3).contains(&shape.len()) {
        return Err(GeometryError::input(
            path,
            format!(
                "mask must be 2-D (H, W) or 3-D (S, H, W), got {}-D shape {shape:?}",
                shape.len()
            ),
        ));
    }
    // The file's array and its 0/1 copy are alive together.
    let len = npy.check(path, "a mask", element_bytes, element_bytes + 1)?;
    let any = match descr {
        Some("|b1") => to_binary(path, npy.read::<bool>(path, len)?, f64::from)?,
        Some("<i4" | ">i4") => to_binary(path, npy.read::<i32>(path, len)?, f64::from)?,
        Some("<f4" | ">f4") => to_binary(path, npy.read::<f32>(path, len)?, f64::from)?,
        Some("<i8" | ">i8") => to_binary(path, npy.read::<i64>(path, len)?, |v| v as f64)?,
        Some("<f8" | ">f8") => to_binary(path, npy.read::<f64>(path, len)?, |v| v)?,
        _ => to_binary(path, npy.read::<u8>(path, len)?, f64::from)?,
    };
    // Standard layout with 2 or 3 axes (checked above), so neither conversion can fail.
    match *any.shape() {
        [h, w] => Ok(any
            .into_shape_with_order((1, h, w))
            .expect("standard layout, same size")),
        _ => Ok(any.into_dimensionality::<Ix3>().expect("checked ndim")),
    }
}

/// Each slice of a `(S, H, W)` mask encoded as PNG (fluid white, fibre black) with its file
/// name `slice_000.png`, …, the layout `load_mask` reads back. Returned as bytes so the
/// caller writes them through its atomic writer, which never follows a planted link.
pub fn png_slices(mask: &Array3<u8>) -> Result<Vec<(String, Vec<u8>)>, GeometryError> {
    let (_, h, w) = mask.dim();
    mask.outer_iter()
        .enumerate()
        .map(|(k, slice)| {
            let name = format!("slice_{k:03}.png");
            let img = image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
                image::Luma([if slice[[y as usize, x as usize]] != 0 {
                    255
                } else {
                    0
                }])
            });
            let mut bytes = std::io::Cursor::new(Vec::new());
            img.write_to(&mut bytes, image::ImageFormat::Png)
                .map_err(|e| {
                    GeometryError::input(Path::new(&name), format!("cannot encode PNG: {e}"))
                })?;
            Ok((name, bytes.into_inner()))
        })
        .collect()
}

/// Reads every PNG/TIFF in a folder (sorted by name) as one slice; bright (≥ half range) = 1.
fn read_image_folder(dir: &Path) -> Result<Array3<u8>, GeometryError> {
    let io = |error| GeometryError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("png" | "tif" | "tiff")
            )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(GeometryError::input(
            dir,
            "folder holds no .png, .tif or .tiff slice",
        ));
    }
    let unreadable =
        |f: &Path, e: image::ImageError| GeometryError::input(f, format!("cannot read image: {e}"));
    // Every header first: a stack whose slices disagree or that would not fit the budget
    // is refused before one pixel is decoded or the stack is allocated.
    let header = |f: &Path| -> Result<((u32, u32), u64), GeometryError> {
        if is_tiff(f) {
            check_tiff_directory(f)?;
        }
        let mut reader = ImageReader::open(f).map_err(|error| GeometryError::Io {
            path: f.to_path_buf(),
            error,
        })?;
        reader.limits(decoder_limits(None, budget::bytes()));
        let decoder = reader.into_decoder().map_err(|e| unreadable(f, e))?;
        Ok((decoder.dimensions(), decoder.total_bytes()))
    };
    let ((w, h), mut largest) = header(&files[0])?;
    for f in &files[1..] {
        let ((sw, sh), bytes) = header(f)?;
        if (sw, sh) != (w, h) {
            return Err(GeometryError::input(
                f,
                format!("slice is {sw}×{sh} but the first slice is {w}×{h}"),
            ));
        }
        largest = largest.max(bytes);
    }
    // The mask, plus one slice being decoded: the decoder's buffer, which the TIFF decoder
    // copies once more, and its 16-bit grey conversion.
    let pixels = u128::from(w) * u128::from(h);
    let decode_bytes = 2 * u128::from(largest) + 2 * pixels;
    budget::check(
        format!(
            "{}: a stack of {} slices of {w}×{h} pixels",
            dir.display(),
            files.len()
        ),
        (files.len() as u128)
            .checked_mul(pixels)
            .and_then(|n| n.checked_add(decode_bytes)),
    )?;
    // Within the budget, so these fit.
    let decode_bytes = decode_bytes as u64;
    let (w, h) = (w as usize, h as usize);
    let mut out = Array3::<u8>::zeros((files.len(), h, w));
    for (k, f) in files.iter().enumerate() {
        let mut reader = ImageReader::open(f).map_err(|error| GeometryError::Io {
            path: f.to_path_buf(),
            error,
        })?;
        reader.limits(decoder_limits(Some((w as u32, h as u32)), decode_bytes));
        let img = reader.decode().map_err(|e| unreadable(f, e))?;
        if (img.width() as usize, img.height() as usize) != (w, h) {
            return Err(GeometryError::input(f, "slice changed while it was read"));
        }
        let g = img.to_luma16();
        for (o, &v) in out
            .index_axis_mut(ndarray::Axis(0), k)
            .iter_mut()
            .zip(g.as_raw())
        {
            *o = u8::from(v >= 1 << 15);
        }
    }
    Ok(out)
}

/// Whether `path` is read as a TIFF (the image crate goes by the extension).
fn is_tiff(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("tif") || e.eq_ignore_ascii_case("tiff"))
}

/// Checks that every value the first directory of a TIFF declares fits in the file. The
/// `tiff` crate reserves room for a tag's declared number of values before reading them,
/// under its own 256 MiB limit that the image crate lowers only after the header is read,
/// so a few lying bytes would otherwise cost up to that much per tag. A file too short to
/// hold its directory is left to the decoder, which reports it before reading any value.
fn check_tiff_directory(path: &Path) -> Result<(), GeometryError> {
    let io = |error| GeometryError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut file = BufReader::new(file);
    let mut read = |offset: u64, n: usize| -> Option<[u8; 8]> {
        let mut buf = [0u8; 8];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut buf[..n]).ok()?;
        Some(buf)
    };
    let Some(head) = read(0, 8) else {
        return Ok(());
    };
    let little = match &head[..2] {
        b"II" => true,
        b"MM" => false,
        _ => return Ok(()),
    };
    let uint = |b: &[u8]| {
        let fold = |acc: u64, &x: &u8| acc << 8 | u64::from(x);
        if little {
            b.iter().rev().fold(0, fold)
        } else {
            b.iter().fold(0, fold)
        }
    };
    // Classic TIFF: 2-byte entry count, 12-byte entries with a 4-byte value count;
    // BigTIFF: 8, 20 and 8.
    let (big, ifd) = match uint(&head[2..4]) {
        42 => (false, uint(&head[4..8])),
        43 => match read(8, 8) {
            Some(b) => (true, uint(&b)),
            None => return Ok(()),
        },
        _ => return Ok(()),
    };
    let (count_bytes, entry_bytes) = if big { (8, 20) } else { (2, 12) };
    let Some(entries) = read(ifd, count_bytes).map(|b| uint(&b[..count_bytes])) else {
        return Ok(());
    };
    // The directory was readable, so it starts inside the file, and the loop ends at the
    // first entry past the file's end: no offset here overflows.
    for k in 0..entries {
        let at = ifd + count_bytes as u64 + k * entry_bytes;
        let Some(entry) = read(at, 8) else {
            return Ok(());
        };
        let values = if big {
            match read(at + 4, 8) {
                Some(b) => uint(&b),
                None => return Ok(()),
            }
        } else {
            uint(&entry[4..8])
        };
        let value_bytes: u64 = match uint(&entry[2..4]) {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16..=18 => 8,
            // Entries of unknown types are skipped by the decoder.
            _ => continue,
        };
        if values.checked_mul(value_bytes).is_none_or(|n| n > file_len) {
            return Err(GeometryError::input(
                path,
                format!(
                    "corrupt TIFF: tag {} declares {values} values, more than the file's {file_len} bytes hold",
                    uint(&entry[..2])
                ),
            ));
        }
    }
    Ok(())
}

/// Decoder limits: at most `dims` pixels (when known) and `max_alloc` bytes, plus a
/// little for the decoders' tables and row buffers, so a header that lies about the
/// image's size ends in a limit error instead of an unbounded allocation.
fn decoder_limits(dims: Option<(u32, u32)>, max_alloc: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = dims.map(|d| d.0);
    limits.max_image_height = dims.map(|d| d.1);
    limits.max_alloc = Some(max_alloc.saturating_add(1 << 20));
    limits
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};
    use ndarray_npy::WriteNpyExt;

    fn write<T: ndarray_npy::WritableElement, D: ndarray::Dimension>(
        dir: &Path,
        name: &str,
        a: &ndarray::Array<T, D>,
    ) -> PathBuf {
        let p = dir.join(name);
        a.write_npy(File::create(&p).unwrap()).unwrap();
        p
    }

    #[test]
    fn reads_every_dtype_and_flips_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let m = array![[1u8, 0], [1, 1]];
        let expect = m.clone().into_shape_with_order((1, 2, 2)).unwrap();
        for p in [
            write(dir.path(), "u8.npy", &m),
            write(dir.path(), "b.npy", &m.mapv(|v| v == 1)),
            write(dir.path(), "f32.npy", &m.mapv(f32::from)),
            write(dir.path(), "f64.npy", &m.mapv(f64::from)),
            write(dir.path(), "i64.npy", &m.mapv(i64::from)),
        ] {
            assert_eq!(load_mask(&p, SolidValue::Low).unwrap(), expect, "{p:?}");
            assert_eq!(
                load_mask(&p, SolidValue::High).unwrap(),
                expect.mapv(|v| 1 - v)
            );
        }
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                write(dir.path(), "nan.npy", &array![[1.0f32, f32::NAN]]),
                "NaN",
            ),
            (
                write(dir.path(), "two.npy", &array![[1.0f64, 2.0]]),
                "only 0 and 1",
            ),
            (
                write(dir.path(), "solid.npy", &Array2::<u8>::zeros((3, 3))),
                "all fibre",
            ),
            (
                write(dir.path(), "fluid.npy", &Array2::<u8>::ones((3, 3))),
                "all fluid",
            ),
            (write(dir.path(), "1d.npy", &array![1u8, 0]), "2-D"),
            (write(dir.path(), "u16.npy", &array![[1u16, 0]]), "dtype"),
        ];
        for (p, needle) in cases {
            let e = load_mask(&p, SolidValue::Low).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains(p.file_name().unwrap().to_str().unwrap()),
                "{e}"
            );
        }
        let trunc = dir.path().join("trunc.npy");
        let full = std::fs::read(write(dir.path(), "ok.npy", &array![[1u8, 0]])).unwrap();
        std::fs::write(&trunc, &full[..full.len() - 1]).unwrap();
        assert!(load_mask(&trunc, SolidValue::Low).is_err());
        assert!(
            load_mask(&dir.path().join("missing.npy"), SolidValue::Low)
                .unwrap_err()
                .to_string()
                .contains("no such")
        );
    }

    #[test]
    fn png_stack_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let m = Array3::from_shape_fn((3, 5, 7), |(s, y, x)| u8::from((s + y * x) % 3 != 0));
        for (name, bytes) in png_slices(&m).unwrap() {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        assert_eq!(load_mask(dir.path(), SolidValue::Low).unwrap(), m);
    }

    #[test]
    fn reads_png_and_tiff_stacks_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |v: u8| {
            image::GrayImage::from_fn(4, 3, |x, _| image::Luma([if x == 1 { 255 - v } else { v }]))
        };
        mk(255).save(dir.path().join("s01.png")).unwrap();
        mk(0).save(dir.path().join("s00.tif")).unwrap();
        let m = load_mask(dir.path(), SolidValue::Low).unwrap();
        assert_eq!(m.dim(), (2, 3, 4));
        assert_eq!(m.slice(ndarray::s![0, 0, ..]).to_vec(), vec![0, 1, 0, 0]);
        assert_eq!(m.slice(ndarray::s![1, 0, ..]).to_vec(), vec![1, 0, 1, 1]);
        image::GrayImage::new(5, 3)
            .save(dir.path().join("s02.png"))
            .unwrap();
        assert!(
            load_mask(dir.path(), SolidValue::Low)
                .unwrap_err()
                .to_string()
                .contains("first slice")
        );
    }
}
