//! Import of user microstructure images as fluid masks `(S, H, W)`, 1 = fluid.
//!
//! Accepted: a `.npy` array of shape (H, W) or (S, H, W) with dtype bool, uint8, int32,
//! int64, float32 or float64 holding only 0 and 1; or a folder of PNG/TIFF slices read in
//! file-name order (zero-pad the numbers). By default 0 / dark marks fibre and 1 / bright
//! marks fluid; `SolidValue::High` flips that. Images are binarised at half their range.

use crate::error::GeometryError;
use ndarray::{Array3, ArrayD, Ix2, Ix3};
use ndarray_npy::{ReadNpyError, ReadNpyExt, ReadableElement};
use std::fs::File;
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
    let high = if path.is_dir() {
        read_image_folder(path)?
    } else if path.extension().and_then(|e| e.to_str()) == Some("npy") {
        read_npy_binary(path)?
    } else {
        return Err(GeometryError::input(
            path,
            "unsupported microstructure file; give a .npy array or a folder of PNG/TIFF slices",
        ));
    };
    let mask = match solid {
        SolidValue::Low => high,
        SolidValue::High => high.mapv(|v| 1 - v),
    };
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

/// Reads a `.npy` of any supported dtype as 0/1 values, shaped `(S, H, W)`.
fn read_npy_binary(path: &Path) -> Result<Array3<u8>, GeometryError> {
    fn try_read<T: ReadableElement>(path: &Path) -> Result<Option<ArrayD<T>>, GeometryError> {
        let file = File::open(path).map_err(|error| GeometryError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        match ArrayD::<T>::read_npy(file) {
            Ok(a) => Ok(Some(a)),
            Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
            Err(e) => Err(GeometryError::input(
                path,
                format!("not a readable .npy: {e}"),
            )),
        }
    }
    fn to_binary<T: Copy + Into<f64>>(
        path: &Path,
        a: ArrayD<T>,
    ) -> Result<ArrayD<u8>, GeometryError> {
        let mut out = ArrayD::<u8>::zeros(a.shape());
        for (o, &v) in out.iter_mut().zip(a.iter()) {
            let v: f64 = v.into();
            *o = match v {
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
    let any = if let Some(a) = try_read::<u8>(path)? {
        to_binary(path, a)?
    } else if let Some(a) = try_read::<bool>(path)? {
        a.mapv(u8::from)
    } else if let Some(a) = try_read::<f32>(path)? {
        to_binary(path, a)?
    } else if let Some(a) = try_read::<f64>(path)? {
        to_binary(path, a)?
    } else if let Some(a) = try_read::<i32>(path)? {
        to_binary(path, a)?
    } else if let Some(a) = try_read::<i64>(path)? {
        to_binary(path, a.mapv(|v| v as f64))?
    } else {
        return Err(GeometryError::input(
            path,
            "unsupported dtype; use bool, uint8, int32, int64, float32 or float64",
        ));
    };
    match any.ndim() {
        2 => {
            let a = any.into_dimensionality::<Ix2>().expect("checked ndim");
            let (h, w) = a.dim();
            Ok(a.into_shape_with_order((1, h, w)).expect("same size"))
        }
        3 => Ok(any.into_dimensionality::<Ix3>().expect("checked ndim")),
        n => Err(GeometryError::input(
            path,
            format!(
                "mask must be 2-D (H, W) or 3-D (S, H, W), got {n}-D shape {:?}",
                any.shape()
            ),
        )),
    }
}

/// Writes each slice of a `(S, H, W)` mask as `slice_000.png`, … (fluid white, fibre black),
/// the layout `load_mask` reads back.
pub fn save_png_stack(mask: &Array3<u8>, dir: &Path) -> Result<(), GeometryError> {
    std::fs::create_dir_all(dir).map_err(|error| GeometryError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    let (_, h, w) = mask.dim();
    for (k, slice) in mask.outer_iter().enumerate() {
        let path = dir.join(format!("slice_{k:03}.png"));
        let img = image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
            image::Luma([if slice[[y as usize, x as usize]] != 0 {
                255
            } else {
                0
            }])
        });
        img.save(&path)
            .map_err(|e| GeometryError::input(&path, format!("cannot write PNG: {e}")))?;
    }
    Ok(())
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
    let mut slices = Vec::with_capacity(files.len());
    for f in &files {
        let img = image::open(f)
            .map_err(|e| GeometryError::input(f, format!("cannot read image: {e}")))?;
        let g = img.to_luma16();
        slices.push((g.width() as usize, g.height() as usize, g.into_raw()));
    }
    let (w, h) = (slices[0].0, slices[0].1);
    let mut out = Array3::<u8>::zeros((slices.len(), h, w));
    for (k, ((sw, sh, px), f)) in slices.iter().zip(&files).enumerate() {
        if (*sw, *sh) != (w, h) {
            return Err(GeometryError::input(
                f,
                format!("slice is {sw}×{sh} but the first slice is {w}×{h}"),
            ));
        }
        for (o, &v) in out.index_axis_mut(ndarray::Axis(0), k).iter_mut().zip(px) {
            *o = u8::from(v >= 1 << 15);
        }
    }
    Ok(out)
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
        save_png_stack(&m, dir.path()).unwrap();
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
