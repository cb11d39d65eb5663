//! Export of a dataset (or one subset) to NumPy `.npy` files with a leading sample axis,
//! for users outside Rust: `domain.npy`, `U_2d.npy`, `U.npy`, `p.npy` and, when every
//! sample has it, `p_2d.npy` (f32, `(N, S, C, H, W)`), `dxyz.npy` (f64, `(N, 3)`) and
//! `indices.npy` (u64, `(N,)`, the dataset index of each row). Each output is created at full size and filled through a
//! memory map one sample at a time, so memory use is one sample whatever the size.

use std::path::{Path, PathBuf};

use memmap2::MmapMut;
use ndarray::{ArrayViewMut1, ArrayViewMut2, ArrayViewMut5, Axis};
use ndarray_npy::{ViewMutNpyExt, WritableElement, write_zeroed_npy};

use crate::atomic::AtomicFile;
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::progress::Progress;
use crate::sample::{DXYZ, Field};
use crate::split::Subset;

/// Writes the samples of `subset` (all for `None`, in split order otherwise) to `out`;
/// returns the files written.
pub fn export_npy(
    dataset: &Dataset,
    out: &Path,
    subset: Option<Subset>,
    progress: &mut dyn Progress,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(DataError::io(out, "create directory"))?;
    let indices = dataset.indices(subset);
    let n = indices.len();
    let shape = dataset.manifest.header.shape;

    // p_2d is exported when every sample has it (datasets generated here).
    let mut with_p2d = true;
    for &i in &indices {
        with_p2d &= dataset.open_sample(i)?.has(Field::P2d);
    }
    let mut fields = Vec::with_capacity(Field::EVERY.len());
    for field in Field::EVERY {
        if field == Field::P2d && !with_p2d {
            continue;
        }
        let [s, c, h, w] = shape.dims(field);
        fields.push((
            field,
            NpyOutput::create::<f32>(&out.join(format!("{}.npy", field.name())), [n, s, c, h, w])?,
        ));
    }
    let mut dxyz = NpyOutput::create::<f64>(&out.join(format!("{DXYZ}.npy")), [n, 3])?;
    let mut rows = NpyOutput::create::<u64>(&out.join("indices.npy"), [n])?;

    {
        let mut views = Vec::with_capacity(fields.len());
        for (field, output) in &mut fields {
            views.push((*field, output.view::<ArrayViewMut5<f32>>()?));
        }
        let mut dxyz_view = dxyz.view::<ArrayViewMut2<f64>>()?;
        let mut rows_view = rows.view::<ArrayViewMut1<u64>>()?;
        progress.start("export", n as u64);
        for (row, &index) in indices.iter().enumerate() {
            let file = dataset.open_sample(index)?;
            for (field, view) in &mut views {
                view.index_axis_mut(Axis(0), row)
                    .assign(&file.read(*field)?);
            }
            dxyz_view
                .row_mut(row)
                .assign(&ndarray::aview1(&file.dxyz()));
            rows_view[row] = index as u64;
            progress.step();
        }
        progress.finish();
    }

    if !with_p2d {
        // A p_2d.npy left by an earlier export into `out` would not match these rows.
        let stale = out.join(format!("{}.npy", Field::P2d.name()));
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DataError::io(&stale, "remove stale file")(e));
            }
            _ => {}
        }
    }
    let mut written = Vec::new();
    for output in fields.into_iter().map(|(_, o)| o).chain([dxyz, rows]) {
        written.push(output.commit()?);
    }
    Ok(written)
}

/// A `.npy` file created zeroed at its final size under a temporary name, filled
/// through a memory map, then renamed into place.
struct NpyOutput {
    file: AtomicFile,
    target: PathBuf,
    map: MmapMut,
}

impl NpyOutput {
    fn create<A: WritableElement>(
        target: &Path,
        shape: impl ndarray::IntoDimension,
    ) -> Result<Self> {
        let file = AtomicFile::create(target)?;
        write_zeroed_npy::<A, _>(file.file(), shape)
            .map_err(|e| DataError::invalid(file.path(), e.to_string()))?;
        // SAFETY: the temporary file is private to this process until it is renamed, and
        // nothing else maps or writes it.
        let map = unsafe { MmapMut::map_mut(file.file()) }
            .map_err(DataError::io(file.path(), "memory-map"))?;
        Ok(Self {
            file,
            target: target.to_path_buf(),
            map,
        })
    }

    fn view<'a, V: ViewMutNpyExt<'a>>(&'a mut self) -> Result<V> {
        V::view_mut_npy(&mut self.map)
            .map_err(|e| DataError::invalid(self.file.path(), e.to_string()))
    }

    fn commit(self) -> Result<PathBuf> {
        self.map
            .flush()
            .map_err(DataError::io(self.file.path(), "flush"))?;
        drop(self.map);
        self.file.commit()?;
        Ok(self.target)
    }
}
