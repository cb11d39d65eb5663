//! `fiberflow bench solver`: lattice updates per second next to the memory bandwidth
//! measured in the same run, and the time to converge one sample with and without warm
//! start.

use super::{BenchArgs, default_sample};
use anyhow::Result;
use fiberflow_geometry::layout::SliceGrid;
use fiberflow_solver::FlowConfig;
use fiberflow_solver::bench::{KernelThroughput, kernel_throughput, memory_bandwidth_gbs};
use fiberflow_solver::sample::solve_sample;
use fiberflow_solver::solve::Dim;
use serde::Serialize;
use std::time::Instant;

#[derive(Serialize)]
struct Convergence {
    warm_start: bool,
    iterations_3d: usize,
    wall_3d_s: f64,
    wall_2d_s: f64,
    wall_total_s: f64,
    converged: bool,
    k_3d_m2: f64,
}

#[derive(Serialize)]
pub struct SolverBench {
    threads: usize,
    memory_bandwidth_gbs: f64,
    kernels: Vec<KernelRow>,
    sample: SliceGrid,
    convergence: Vec<Convergence>,
}

#[derive(Serialize)]
struct KernelRow {
    #[serde(flatten)]
    t: KernelThroughput,
    /// Fraction of the bandwidth bound reached.
    bandwidth_ratio: f64,
}

pub(super) fn run(a: &BenchArgs) -> Result<SolverBench> {
    let bw = memory_bandwidth_gbs(512, 5);
    println!(
        "memory bandwidth (read + write-allocate + write): {bw:.2} GB/s on {} threads",
        rayon::current_num_threads()
    );
    let grid = a.grid();
    let (ms, slices, planes) = default_sample(&grid)?;
    let mut kernels = Vec::new();
    let mut add = |t: KernelThroughput| {
        let ratio = t.effective_gbs / bw;
        println!(
            "{:6} {:>15}: {:8.1} MLUPS = {:6.2} GB/s at {} B/update -> {:5.1} % of the bandwidth bound{}",
            t.lattice,
            format!("{:?}", t.shape),
            t.mlups,
            t.effective_gbs,
            t.bytes_per_update,
            100.0 * ratio,
            if ratio > 1.0 {
                " (above it: part of the traffic stays in cache)"
            } else {
                ""
            }
        );
        kernels.push(KernelRow {
            t,
            bandwidth_ratio: ratio,
        });
    };
    // 2D: all slices of the sample side by side, as a sample's 2D solve runs them.
    add(kernel_throughput(slices.view(), Dim::Two, 1000));
    add(kernel_throughput(planes.view(), Dim::Three, 40));
    if a.reference {
        let (_, s, p) = default_sample(&SliceGrid::default())?;
        add(kernel_throughput(s.view(), Dim::Two, 50));
        add(kernel_throughput(p.view(), Dim::Three, 5));
    }
    let mut convergence = Vec::new();
    for warm in [true, false] {
        let mut flow = FlowConfig::default();
        flow.lbm.warm_start = warm;
        let t = Instant::now();
        let out = solve_sample(
            slices.view(),
            Some(planes.view()),
            grid.voxel(ms.window_um),
            &flow,
            None,
        )?;
        let total = t.elapsed().as_secs_f64();
        let s3 = out.report.solve_3d.clone().expect("3D solve ran");
        let c = Convergence {
            warm_start: warm,
            iterations_3d: s3.iterations,
            wall_3d_s: s3.wall_s,
            wall_2d_s: out.report.wall_2d_s,
            wall_total_s: total,
            converged: out.report.converged(),
            k_3d_m2: out.report.k_3d_m2.unwrap_or(f64::NAN),
        };
        println!(
            "default sample {}x{}x{} ({} planes), warm start {:5}: 3D {} steps in {:.2} s, total {:.2} s, K = {:.4e} m²",
            grid.size,
            grid.size,
            grid.slices,
            planes.dim().0,
            warm,
            c.iterations_3d,
            c.wall_3d_s,
            c.wall_total_s,
            c.k_3d_m2
        );
        convergence.push(c);
    }
    println!(
        "warm start saves {:.2}x in 3D wall time",
        convergence[1].wall_3d_s / convergence[0].wall_3d_s
    );
    Ok(SolverBench {
        threads: rayon::current_num_threads(),
        memory_bandwidth_gbs: bw,
        kernels,
        sample: grid,
        convergence,
    })
}
