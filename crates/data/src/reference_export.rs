//! Export of a dataset to the reference PyTorch project's layout, so its scripts can train
//! on fiberflow's data: `OUT/x/{domain,U_2d,U,p,dxyz}.pt`, each one tensor of all samples
//! as `torch.save` writes it (`domain`, `p`: `(N, S, 1, H, W)`; `U_2d`, `U`:
//! `(N, S, 3, H, W)`; `dxyz`: `(N, 3)` in metres), plus `OUT/statistics.json` in the
//! schema the reference's scripts read and `OUT/fiberflow_export.json` with the order.
//!
//! **Order.** The reference splits by position: it shuffles `0..N` with Python's
//! `random.Random(2024)` and takes 70 / 15 / 15 %. Its split counts are fiberflow's, so
//! the export places fiberflow's k-th training sample at the reference's k-th training
//! position (likewise validation and test): the reference then trains, validates and tests
//! on exactly fiberflow's samples, whichever split mode the dataset was made with. For a
//! dataset made with `--split-mode reference` (or imported from the reference) that order
//! is the identity, so import → export → import gives back the same files.
//!
//! **Element types.** Velocities and pressure are float32 (the reference's loaders call
//! `.float()`), `domain` bool, `dxyz` float64. A dataset imported from the reference
//! records each source file's dtype and shape, and the export writes those again.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};

use crate::atomic::{AtomicFile, write_atomic};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::origin::Origin;
use crate::progress::Progress;
use crate::sample::{DXYZ, Field};
use crate::split::{SPLIT_SEED, SplitMode, Splits, Subset};
use crate::statistics::{ComponentStats, Statistics, VelocityStats};
use crate::torch_save::{TorchDType, TorchWriter};

/// What [`export_reference`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferenceExport {
    /// The dataset index stored at each position of the `.pt` files.
    pub order: Vec<usize>,
    /// Whether the order is the identity (a dataset split the reference's way).
    pub identity: bool,
    pub files: Vec<PathBuf>,
}

/// Writes `dataset` to `out` in the reference's layout (see the module documentation).
pub fn export_reference(
    dataset: &Dataset,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<ReferenceExport> {
    let n = dataset.len();
    let ours = Splits::load(&dataset.dir, n)?;
    let theirs = Splits::with_seed(n, SplitMode::Reference, SPLIT_SEED);
    for subset in [Subset::Train, Subset::Val, Subset::Test] {
        let (a, b) = (ours.indices(subset).len(), theirs.indices(subset).len());
        if a != b {
            return Err(DataError::invalid(
                &dataset.dir,
                format!(
                    "its {subset:?} split has {a} samples where the reference's 70/15/15 split \
                     of {n} has {b}, so no order makes the reference see this split; rewrite \
                     it with `fiberflow dataset split`"
                ),
            ));
        }
    }
    let order = reference_order(&ours, &theirs);
    let stats = Statistics::load(dataset)?;
    let x = out.join("x");
    std::fs::create_dir_all(&x).map_err(DataError::io(&x, "create directory"))?;

    let shape = dataset.manifest.header.shape;
    let origin = dataset.manifest.header.origin(&dataset.dir)?;
    let mut outputs = Vec::new();
    for field in [Field::Domain, Field::U2d, Field::U, Field::P] {
        let [s, c, h, w] = shape.dims(field);
        let default = if field == Field::Domain {
            TorchDType::Bool
        } else {
            TorchDType::F32
        };
        let (dtype, squeeze) =
            source_layout(&origin, field.name(), n, c).unwrap_or((default, false));
        let dims = if squeeze {
            vec![n, s, h, w]
        } else {
            vec![n, s, c, h, w]
        };
        let path = x.join(format!("{}.pt", field.name()));
        outputs.push((field, dtype, Output::create(&path, dtype, &dims)?));
    }
    let mut dxyz = Output::create(&x.join(format!("{DXYZ}.pt")), TorchDType::F64, &[n, 3])?;

    progress.start("export", n as u64);
    for &index in &order {
        let file = dataset.open_sample(index)?;
        for (field, dtype, output) in &mut outputs {
            let values = file.read(*field)?;
            output.write(&encode(values.iter().copied(), *dtype))?;
        }
        let d = file.dxyz();
        dxyz.write(&d.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())?;
        progress.step();
    }
    progress.finish();
    let mut files: Vec<PathBuf> = Vec::new();
    for (_, _, output) in outputs {
        files.push(output.commit()?);
    }
    files.push(dxyz.commit()?);

    let statistics = out.join("statistics.json");
    write_json_file(&statistics, &reference_statistics(&stats))?;
    files.push(statistics);
    let identity = order.iter().enumerate().all(|(k, &i)| k == i);
    let record = out.join("fiberflow_export.json");
    write_json_file(
        &record,
        &json!({
            "source": dataset.dir,
            "split_mode": ours.mode,
            "order": order,
            "note": "position k of every .pt file holds dataset sample order[k]; the reference's \
                     random.Random(2024) 70/15/15 split of the positions selects exactly this \
                     dataset's train, validation and test samples",
        }),
    )?;
    files.push(record);
    Ok(ReferenceExport {
        order,
        identity,
        files,
    })
}

/// The dataset index to store at each position so the reference's split of positions
/// selects `ours`' samples: its k-th position of each subset gets our k-th sample.
fn reference_order(ours: &Splits, theirs: &Splits) -> Vec<usize> {
    let mut order = vec![0; ours.n];
    for subset in [Subset::Train, Subset::Val, Subset::Test] {
        for (&position, &index) in theirs.indices(subset).iter().zip(ours.indices(subset)) {
            order[position] = index;
        }
    }
    order
}

/// The dtype and rank a dataset imported from the reference recorded for `name`
/// (`(dtype, true)` when a one-channel field had no channel axis); `None` for others.
fn source_layout(
    origin: &Origin,
    name: &str,
    n: usize,
    channels: usize,
) -> Option<(TorchDType, bool)> {
    let Origin::Imported(imported) = origin else {
        return None;
    };
    let file = imported
        .files
        .iter()
        .find(|f| f.file == format!("{name}.pt"))?;
    let dtype = match file.dtype.as_str() {
        "Bool" => TorchDType::Bool,
        "U8" => TorchDType::U8,
        "F64" => TorchDType::F64,
        _ => TorchDType::F32,
    };
    let squeeze = file.shape.len() == 4 && channels == 1 && file.shape[0] == n;
    Some((dtype, squeeze))
}

/// Little-endian bytes of `values` as `dtype` (masks hold 0 or 1).
fn encode(values: impl Iterator<Item = f32>, dtype: TorchDType) -> Vec<u8> {
    match dtype {
        TorchDType::Bool | TorchDType::U8 => values.map(|v| u8::from(v != 0.0)).collect(),
        TorchDType::F32 => values.flat_map(f32::to_le_bytes).collect(),
        TorchDType::F64 => values.flat_map(|v| f64::from(v).to_le_bytes()).collect(),
    }
}

/// `statistics.json` as the reference's train-only statistics script writes it, for the
/// fields its scripts read: `U.max` and `U_2d.max` (max |component|), per component
/// `max_c` (max |c|), `mean_c` (mean |c| over the fluid), `std_c` and percentiles over the
/// fluid, `p.max/mean/std` and `dxyz.max/mean`, from fiberflow's training-split statistics.
fn reference_statistics(s: &Statistics) -> Value {
    let per_component = |v: &VelocityStats| {
        let mut m = serde_json::Map::new();
        for (c, k) in [(&v.vx, "u"), (&v.vy, "v"), (&v.vz, "w")] {
            let ComponentStats {
                max_abs,
                mean_abs,
                std,
                p1,
                p5,
                p50,
                p95,
                p99,
                ..
            } = *c;
            for (name, value) in [
                ("max", max_abs),
                ("mean", mean_abs),
                ("std", std),
                ("p1", p1),
                ("p5", p5),
                ("p50", p50),
                ("median", p50),
                ("p95", p95),
                ("p99", p99),
            ] {
                m.insert(format!("{name}_{k}"), json!(value));
            }
        }
        Value::Object(m)
    };
    let max = |v: &VelocityStats| v.vx.max_abs.max(v.vy.max_abs).max(v.vz.max_abs);
    json!({
        "U": {"max": max(&s.u)},
        "U_per_component": per_component(&s.u),
        "U_2d": {"max": max(&s.u2d)},
        "U_2d_per_component": per_component(&s.u2d),
        "p": {"max": s.p.max_abs, "mean": s.p.mean, "std": s.p.std},
        "dxyz": {
            "max": s.dxyz.max.iter().copied().fold(f64::MIN, f64::max),
            "mean": s.dxyz.mean.iter().sum::<f64>() / 3.0,
        },
        "metadata": {
            "source": "fiberflow dataset export",
            "split": "train",
            "n_train": s.fingerprint.n_train,
            "n_fluid_voxels": s.n_fluid_voxels,
            "units": "m/s, Pa, m",
        },
    })
}

fn write_json_file(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| DataError::invalid(path, format!("JSON: {e}")))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// One `.pt` file under a temporary name until committed.
struct Output {
    path: PathBuf,
    file: AtomicFile,
    writer: Option<TorchWriter<std::fs::File>>,
}

impl Output {
    fn create(path: &Path, dtype: TorchDType, dims: &[usize]) -> Result<Self> {
        let file = AtomicFile::create(path)?;
        let handle = file
            .file()
            .try_clone()
            .map_err(DataError::io(file.path(), "open"))?;
        let writer = TorchWriter::new(handle, path, dtype, dims)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            writer: Some(writer),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .as_mut()
            .expect("open until commit")
            .write(bytes)
    }

    fn commit(mut self) -> Result<PathBuf> {
        self.writer.take().expect("open until commit").finish()?;
        self.file.commit()?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_split_of_the_export_is_ours() {
        for n in [1, 7, 20, 100] {
            let ours = Splits::new(n, SplitMode::Fiberflow);
            let theirs = Splits::new(n, SplitMode::Reference);
            let order = reference_order(&ours, &theirs);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
            // What the reference does with the positions, mapped through the order.
            for subset in [Subset::Train, Subset::Val, Subset::Test] {
                let seen: Vec<usize> = theirs.indices(subset).iter().map(|&p| order[p]).collect();
                assert_eq!(seen, ours.indices(subset), "{n} samples, {subset:?}");
            }
            // A dataset split the reference's way keeps its order.
            let reference = reference_order(&theirs, &theirs);
            assert_eq!(reference, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn masks_and_floats_are_encoded_little_endian() {
        let v = [0.0f32, 1.0, -2.5];
        assert_eq!(encode(v.iter().copied(), TorchDType::Bool), [0, 1, 1]);
        assert_eq!(
            encode(v.iter().copied(), TorchDType::F32)[8..],
            (-2.5f32).to_le_bytes()
        );
        assert_eq!(
            encode(v.iter().copied(), TorchDType::F64)[8..16],
            1.0f64.to_le_bytes()
        );
    }
}
