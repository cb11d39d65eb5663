//! Throughput measurements for `fiberflow bench solver`: lattice updates per second next
//! to the machine's memory bandwidth, measured in the same run.
//!
//! Both numbers count the same traffic: each f32 read, each f32 written and the
//! write-allocate read that a normal store of a new cache line costs. One pull-scheme
//! update with two lattices therefore moves 3·Q·4 bytes (228 for D3Q19, 108 for D2Q9),
//! so memory bandwidth / bytes per update is the ceiling the kernel can reach.

use crate::config::LbmConfig;
use crate::kernel::{self, Grid, Streaming, Trt};
use crate::lattice::{D2Q9, D3Q19, VelocitySet};
use crate::layout;
use crate::solve::Dim;
use ndarray::{ArrayView3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Bytes moved per cell update by the two-lattice pull kernel with `q` directions.
pub fn bytes_per_update(q: usize) -> usize {
    3 * 4 * q
}

/// Best-of-`reps` bandwidth in GB/s of a parallel scale kernel b = s·a over `mib` MiB
/// arrays, counting read + write-allocate + write bytes.
pub fn memory_bandwidth_gbs(mib: usize, reps: usize) -> f64 {
    stream_pattern_gbs(1, 1 << 16, mib, reps)
}

/// Best-of-`reps` bandwidth in GB/s, counted as [`memory_bandwidth_gbs`], of the data
/// movement of a pull step alone: `q` arrays of `mib` MiB in all scaled into `q` others,
/// the threads taking runs of `run` cells of every array in turn, as the kernel takes a
/// chunk's Q runs (without its shifts, bounce-back or collision). Many arrays in short
/// runs can stream slower than two long ones (73–97 % of the two-array scale on a 2-core
/// Zen 3 VM). The kernel reads like this, one direction's run at a time, but writes its
/// Q outputs interleaved, a collision group at a time, which this does not model.
pub fn stream_pattern_gbs(q: usize, run: usize, mib: usize, reps: usize) -> f64 {
    assert!(q > 0 && run > 0, "a stream pattern needs arrays and runs");
    let len = (mib * (1 << 20) / 4 / q / run).max(1) * run;
    let mut a = vec![0.0f32; q * len];
    a.par_iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = i as f32);
    let mut b = vec![0.0f32; q * len];
    let mut best = f64::INFINITY;
    for rep in 0..reps.max(1) {
        let s = 1.0 + rep as f32 * 1e-3;
        let t = Instant::now();
        scale_runs(&a, &mut b, (q, run), s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&b);
    (3 * 4 * q * len) as f64 / best / 1e9
}

/// b = s·a for `q` arrays of equal length stored one after the other, in parallel tasks of
/// one `run` of every array.
fn scale_runs(a: &[f32], b: &mut [f32], (q, run): (usize, usize), s: f32) {
    let len = a.len() / q;
    let mut tasks: Vec<Vec<&mut [f32]>> = (0..len.div_ceil(run))
        .map(|_| Vec::with_capacity(q))
        .collect();
    for array in b.chunks_mut(len) {
        for (task, r) in tasks.iter_mut().zip(array.chunks_mut(run)) {
            task.push(r);
        }
    }
    tasks.into_par_iter().enumerate().for_each(|(t, outs)| {
        for (k, out) in outs.into_iter().enumerate() {
            let src = &a[k * len + t * run..][..out.len()];
            out.iter_mut().zip(src).for_each(|(o, &v)| *o = s * v);
        }
    });
}

/// Measured kernel throughput on one geometry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelThroughput {
    pub lattice: String,
    /// (nz, ny, nx); in 2D nz counts the slices stepped side by side.
    pub shape: [usize; 3],
    pub steps: usize,
    /// Million lattice (cell) updates per second, fibre cells included: what sets the
    /// time of a solve.
    pub mlups: f64,
    /// Fraction of the cells a step reads and writes (long fibre runs are skipped).
    pub stepped_fraction: f64,
    pub bytes_per_update: usize,
    /// Bandwidth the kernel used, GB/s (mlups · stepped fraction · bytes per update).
    pub effective_gbs: f64,
}

/// Times the best of five batches of `steps` kernel steps (after two untimed warm-up
/// steps) on the `(nz, ny, nx)` mask. In 2D every z plane is its own lattice and the
/// planes are stepped side by side, as `solve_sample` runs a sample's slices.
pub fn kernel_throughput(mask: ArrayView3<u8>, dim: Dim, steps: usize) -> KernelThroughput {
    let (nz, ny, nx) = mask.dim();
    let shape = [nz, ny, nx];
    match dim {
        Dim::Two => run::<9, D2Q9>(
            mask.axis_iter(Axis(0))
                .map(|p| p.insert_axis(Axis(0)))
                .collect(),
            steps,
            (shape, 0),
        ),
        // In the solver's memory order for volumes (see `layout`).
        Dim::Three => run::<19, D3Q19>(
            vec![layout::lattice_mask(mask)],
            steps,
            (shape, layout::FLOW_AXIS),
        ),
    }
}

/// One lattice's state for the timing loop.
struct Lattice {
    grid: Grid,
    fluid: Vec<u8>,
    streaming: Streaming,
    f: Vec<f32>,
    g: Vec<f32>,
}

fn run<const Q: usize, V: VelocitySet<Q>>(
    masks: Vec<ArrayView3<u8>>,
    steps: usize,
    (shape, flow_axis): ([usize; 3], usize),
) -> KernelThroughput {
    let cfg = LbmConfig::default();
    let trt = Trt::new(&cfg, shape[1].min(shape[2]), flow_axis);
    let mut lattices: Vec<Lattice> = masks
        .iter()
        .map(|mask| {
            let (nz, ny, nx) = mask.dim();
            let grid = Grid { nx, ny, nz };
            let fluid: Vec<u8> = mask.iter().map(|&v| u8::from(v != 0)).collect();
            let streaming = Streaming::new::<Q, V>(&grid, &fluid);
            let f = kernel::equilibrium::<Q, V>(&grid, &trt, &fluid, None);
            let g = vec![0.0f32; f.len()];
            Lattice {
                grid,
                fluid,
                streaming,
                f,
                g,
            }
        })
        .collect();
    let advance = |lattices: &mut [Lattice], n: usize| {
        lattices.par_iter_mut().for_each(|l| {
            for _ in 0..n {
                kernel::step::<Q, V>(&l.grid, &trt, &l.f, &l.fluid, &l.streaming, &mut l.g);
                std::mem::swap(&mut l.f, &mut l.g);
            }
        })
    };
    // Two untimed steps write both lattices once, so page faults are not timed.
    advance(&mut lattices, 2);
    // Best of five timed batches, the convention of the bandwidth measurement (STREAM).
    let mut secs = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        advance(&mut lattices, steps);
        secs = secs.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&lattices);
    let cells: usize = lattices.iter().map(|l| l.grid.cells()).sum();
    let stepped: usize = lattices.iter().map(|l| l.streaming.stepped_cells()).sum();
    let mlups = (cells * steps) as f64 / secs / 1e6;
    let stepped_fraction = stepped as f64 / cells as f64;
    let bytes = bytes_per_update(Q);
    KernelThroughput {
        lattice: V::NAME.to_string(),
        shape,
        steps,
        mlups,
        stepped_fraction,
        bytes_per_update: bytes,
        effective_gbs: mlups * stepped_fraction * 1e6 * bytes as f64 / 1e9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    /// Every element of every array is scaled once, including a last, shorter run.
    #[test]
    fn stream_pattern_moves_every_array() {
        let (q, len, run) = (3, 1000, 64);
        let a: Vec<f32> = (0..q * len).map(|i| i as f32).collect();
        let mut b = vec![f32::NAN; q * len];
        scale_runs(&a, &mut b, (q, run), 2.0);
        assert!(b.iter().zip(&a).all(|(o, v)| *o == 2.0 * v));
        assert!(stream_pattern_gbs(19, 1024, 8, 1) > 0.0);
    }

    /// 2D counts every slice (they are stepped side by side); 3D one lattice of all planes.
    #[test]
    fn throughput_counts_every_slice_and_its_traffic() {
        let mask = Array3::from_shape_fn((3, 8, 16), |(_, y, _)| u8::from(y != 4));
        // Fibre only in the rows y = 4. In a 2D plane that is a run of 16 cells, too short
        // to skip; in the volume's fibre-axis-fastest order all 3·16 cells of y = 4 are one
        // run, skipped.
        for (dim, q, stepped) in [(Dim::Two, 9, 1.0), (Dim::Three, 19, 7.0 / 8.0)] {
            let t = kernel_throughput(mask.view(), dim, 2);
            assert_eq!(t.shape, [3, 8, 16]);
            assert_eq!(t.bytes_per_update, 12 * q);
            assert!(t.mlups.is_finite() && t.mlups > 0.0);
            assert_eq!(t.stepped_fraction, stepped);
            let gbs = t.mlups * stepped * 1e6 * (12 * q) as f64 / 1e9;
            assert!((t.effective_gbs - gbs).abs() < 1e-9 * gbs);
        }
    }
}
