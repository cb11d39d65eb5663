//! `fiberflow bench solver`: lattice updates per second next to the memory bandwidth
//! measured in the same run (a two-array scale, and the kernel's own stream pattern
//! without its arithmetic), and the time to converge one sample with today's solver
//! settings, the previous ones and a cold start.

use super::{BenchArgs, default_sample};
use anyhow::Result;
use fiberflow_geometry::layout::SliceGrid;
use fiberflow_solver::bench::{
    KernelThroughput, bytes_per_update, kernel_throughput, memory_bandwidth_gbs, stream_pattern_gbs,
};
use fiberflow_solver::config::Tau;
use fiberflow_solver::kernel::CHUNK;
use fiberflow_solver::sample::solve_sample;
use fiberflow_solver::solve::Dim;
use fiberflow_solver::{FlowConfig, LbmConfig};
use ndarray::ArrayView3;
use serde::Serialize;
use std::time::Instant;

#[derive(Serialize)]
struct Convergence {
    settings: &'static str,
    iterations_3d: usize,
    /// Steps of each coarser lattice solved for the start, next coarser first.
    coarse_iterations_3d: Vec<usize>,
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
    /// Bandwidth of the kernel's stream pattern alone (Q arrays in, Q out, in runs of a
    /// chunk), GB/s, and the fraction of it the kernel reached.
    stream_pattern_gbs: f64,
    stream_pattern_ratio: f64,
}

/// The solver settings timed on the sample: today's defaults first, then those before
/// 2026-12-06 (τ 0.7, standard sound speed ⅓, no coarse start, checks every 50 steps),
/// then a cold start.
fn compared_settings() -> [(&'static str, LbmConfig); 3] {
    let before = LbmConfig {
        tau: Tau::Fixed(0.7),
        sound_speed_sq: 1.0 / 3.0,
        tol: 1e-5,
        field_tol: 1e-4,
        check_every: 50,
        coarse_levels: 0,
        coarse_correction_every: 0,
        ..LbmConfig::default()
    };
    let cold = LbmConfig {
        warm_start: false,
        coarse_levels: 0,
        ..LbmConfig::default()
    };
    [
        ("defaults", LbmConfig::default()),
        ("before 2026-12-06", before),
        ("cold start", cold),
    ]
}

/// Kernel throughputs on the sample's slices and volume (and at 256² with `reference`),
/// each against the bandwidth `bw` and against its own stream pattern.
fn measure_kernels(
    reference: bool,
    bw: f64,
    slices: ArrayView3<u8>,
    planes: ArrayView3<u8>,
) -> Result<Vec<KernelRow>> {
    // The bandwidth of each lattice's stream pattern alone, D2Q9 then D3Q19: a second
    // ceiling, for Q arrays read and written run by run.
    let pattern = [9, 19].map(|q| {
        let gbs = stream_pattern_gbs(q, CHUNK, 512, 5);
        println!(
            "stream pattern of a Q = {q:2} step alone ({q} arrays in, {q} out, runs of {CHUNK} cells): {gbs:.2} GB/s = {:.1} % of the bandwidth",
            100.0 * gbs / bw
        );
        (q, gbs)
    });
    let mut kernels = Vec::new();
    let mut add = |t: KernelThroughput| {
        let ratio = t.effective_gbs / bw;
        let pattern_gbs = pattern
            .iter()
            .find(|(q, _)| t.bytes_per_update == bytes_per_update(*q))
            .map_or(f64::NAN, |(_, g)| *g);
        println!(
            "{:6} {:>15}: {:8.1} MLUPS, {:4.1} % of the cells stepped = {:6.2} GB/s at {} B/update -> {:5.1} % of the bandwidth bound, {:5.1} % of its stream pattern{}",
            t.lattice,
            format!("{:?}", t.shape),
            t.mlups,
            100.0 * t.stepped_fraction,
            t.effective_gbs,
            t.bytes_per_update,
            100.0 * ratio,
            100.0 * t.effective_gbs / pattern_gbs,
            if ratio > 1.0 || t.effective_gbs > pattern_gbs {
                " (above 100 %: part of the traffic stays in cache)"
            } else {
                ""
            }
        );
        kernels.push(KernelRow {
            stream_pattern_ratio: t.effective_gbs / pattern_gbs,
            t,
            bandwidth_ratio: ratio,
            stream_pattern_gbs: pattern_gbs,
        });
    };
    // 2D: all slices of the sample side by side, as a sample's 2D solve runs them.
    add(kernel_throughput(slices, Dim::Two, 1000));
    add(kernel_throughput(planes, Dim::Three, 40));
    if reference {
        let (_, s, p) = default_sample(&SliceGrid::default())?;
        add(kernel_throughput(s.view(), Dim::Two, 50));
        add(kernel_throughput(p.view(), Dim::Three, 5));
    }
    Ok(kernels)
}

pub(super) fn run(a: &BenchArgs) -> Result<SolverBench> {
    let bw = memory_bandwidth_gbs(512, 5);
    println!(
        "memory bandwidth (read + write-allocate + write): {bw:.2} GB/s on {} threads",
        rayon::current_num_threads()
    );
    let grid = a.grid();
    let (ms, slices, planes) = default_sample(&grid)?;
    let kernels = measure_kernels(a.reference, bw, slices.view(), planes.view())?;
    let mut convergence = Vec::new();
    for (settings, lbm) in compared_settings() {
        let flow = FlowConfig {
            lbm,
            ..FlowConfig::default()
        };
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
            settings,
            iterations_3d: s3.iterations,
            coarse_iterations_3d: s3.coarse_iterations,
            wall_3d_s: s3.wall_s,
            wall_2d_s: out.report.wall_2d_s,
            wall_total_s: total,
            converged: out.report.converged(),
            k_3d_m2: out.report.k_3d_m2.unwrap_or(f64::NAN),
        };
        println!(
            "sample {}x{}x{} ({} planes), {settings}: 3D {} steps (coarser levels {:?}) in {:.2} s, total {:.2} s, K = {:.4e} m²",
            grid.size,
            grid.size,
            grid.slices,
            planes.dim().0,
            c.iterations_3d,
            c.coarse_iterations_3d,
            c.wall_3d_s,
            c.wall_total_s,
            c.k_3d_m2
        );
        convergence.push(c);
    }
    let (new, old) = (&convergence[0], &convergence[1]);
    println!(
        "the defaults solve the sample {:.2}x as fast as the settings before 2026-12-06 (K differs by {:+.3} %)",
        old.wall_total_s / new.wall_total_s,
        100.0 * (new.k_3d_m2 / old.k_3d_m2 - 1.0)
    );
    Ok(SolverBench {
        threads: rayon::current_num_threads(),
        memory_bandwidth_gbs: bw,
        kernels,
        sample: grid,
        convergence,
    })
}
