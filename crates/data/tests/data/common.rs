//! Tiny synthetic samples and datasets shared by the tests.

use std::path::Path;

use fiberflow_data::{
    Dataset, DatasetHeader, DatasetWriter, Sample, SampleRecord, Shape, Silent, SplitMode,
};
use fiberflow_geometry::layout::VoxelSize;
use ndarray::Array4;
use serde_json::json;

/// 1 slice of 2×2 pixels: three fluid voxels and a fibre at (h, w) = (1, 1).
pub const SHAPE: Shape = Shape {
    slices: 1,
    height: 2,
    width: 2,
};

pub fn header() -> DatasetHeader {
    DatasetHeader {
        shape: SHAPE,
        voxel_size: VoxelSize::from_um(1.0, 5.0),
        generator: json!({"fibres": 1, "seed": 7}),
        solver: json!({"tolerance": 1e-6}),
    }
}

/// Sample `i`, scaled by `a = i + 1`: vx = a·[[1, 2], [3, 100]] (100 sits in the fibre),
/// vy = a·[[-1, 1], [0, 0]], vz = 0; U_2d = U / 2; p = a·[[10, 20], [30, 0]];
/// p_2d = p / 4; dxyz = [a·1e-6, 1e-6, 5e-6].
pub fn sample(i: usize) -> Sample {
    let a = (i + 1) as f32;
    let vx = [[1.0, 2.0], [3.0, 100.0]];
    let vy = [[-1.0, 1.0], [0.0, 0.0]];
    let u = Array4::from_shape_fn((1, 3, 2, 2), |(_, c, h, w)| match c {
        0 => a * vx[h][w],
        1 => a * vy[h][w],
        _ => 0.0,
    });
    let p = Array4::from_shape_fn((1, 1, 2, 2), |(_, _, h, w)| {
        a * [[10.0, 20.0], [30.0, 0.0]][h][w]
    });
    Sample {
        domain: Array4::from_shape_fn(
            (1, 1, 2, 2),
            |(_, _, h, w)| if (h, w) == (1, 1) { 0.0 } else { 1.0 },
        ),
        u2d: u.mapv(|v| v / 2.0),
        u,
        p2d: Some(p.mapv(|v| v / 4.0)),
        p,
        dxyz: [f64::from(a) * 1e-6, 1e-6, 5e-6],
    }
}

pub fn record(i: usize) -> SampleRecord {
    SampleRecord {
        index: i,
        file: String::new(),
        seed: 1000 + i as u64,
        porosity: 0.75,
        k_3d_m2: 1e-12 * (i + 1) as f64,
        k_2d_m2: vec![2e-12],
        converged: i != 3,
        extra: serde_json::Value::Null,
    }
}

/// Writes samples `0..n` (those of `shard`: index % count == index_of_shard) into `dir`.
pub fn write_samples(dir: &Path, n: usize, keep: impl Fn(usize) -> bool) -> DatasetWriter {
    let writer = DatasetWriter::create_or_resume(dir, header()).unwrap();
    for i in (0..n).filter(|&i| keep(i)) {
        writer.write(i, &sample(i), record(i)).unwrap();
    }
    writer
}

/// A finished dataset of `n` samples, split in `mode`.
pub fn dataset(dir: &Path, n: usize, mode: SplitMode) -> Dataset {
    write_samples(dir, n, |_| true)
        .finalize(n, mode, &mut Silent)
        .unwrap()
}
