//! The fused pull-stream / TRT-collide step and the moment pass.
//!
//! Populations live in one `Vec<f32>` ordered by direction, `f[q·stride + cell]` with
//! cell = (z·ny + y)·nx + x, so each direction is one long contiguous stream. Streaming works
//! on chunks of up to `CHUNK` consecutive cells of one z plane's fluid runs (long fibre
//! runs are never written, see `fluid_runs`): for every direction the chunk's pulled values
//! are one contiguous run of the upwind plane (the flat in-plane index shifted by
//! cx + cy·nx), copied at once so hardware prefetchers see long streams. The cells where
//! that flat shift is wrong are patched from tables computed once per solve: upwind fibre
//! (half-way bounce-back) as masked vector copies (`bounce`), a pull across the periodic x
//! or y boundary from a list. Threads take runs of whole chunks, i.e. disjoint cell ranges
//! of every direction.
//! Bytes per stepped cell: Q reads + Q writes (+ Q write-allocate reads) of f32.

use crate::bounce::{self, Links, WORD};
use crate::coarse::Start;
use crate::lattice::{VelocitySet, opposite};
use multiversion::multiversion;
use rayon::prelude::*;

/// Cells processed together in the collision on AVX-512, two vectors per quantity.
const LANES: usize = 32;

/// Cells collided together on machines without AVX-512 (see `update_chunk`).
const AVX2_LANES: usize = 16;

/// Cells collided together after a chunk's last whole group: one AVX2 vector.
const TAIL_LANES: usize = 8;

/// Cells streamed and collided together: long enough for prefetching, small enough that
/// a chunk's Q gathered arrays stay in L2.
pub const CHUNK: usize = 1024;

/// Lattice extent; 2D problems have nz = 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub nx: usize,
    pub ny: usize,
    pub nz: usize,
}

impl Grid {
    pub fn plane(&self) -> usize {
        self.nx * self.ny
    }

    pub fn cells(&self) -> usize {
        self.plane() * self.nz
    }

    /// Distance between direction arrays: the cells plus 128 bytes, so that the Q streams
    /// of a step never all map to the same L1 cache sets (lattices are often a multiple
    /// of 4 KiB per direction, which would make every access conflict).
    pub fn stride(&self) -> usize {
        self.cells() + 32
    }
}

/// Relaxation rates and body force of the TRT collision, in lattice units.
#[derive(Debug, Clone, Copy)]
pub struct Trt {
    /// Symmetric rate 1/τ⁺ (sets the viscosity ν = (τ⁺ − ½)/3).
    pub omega_plus: f32,
    /// Antisymmetric rate 1/τ⁻ with (τ⁺ − ½)(τ⁻ − ½) = Λ.
    pub omega_minus: f32,
    /// Body force per unit volume.
    pub force: [f32; 3],
    /// Equilibrium weight of the density deviation in each moving direction, relative to
    /// the standard lattice weight: 3·c_s², so the lattice pressure is c_s²·δρ (1 for the
    /// standard c_s² = ⅓). See `LbmConfig::sound_speed_sq`.
    pub density_weight: f32,
}

impl Trt {
    /// The collision of a solve with these settings on a geometry `in_plane` cells across,
    /// driven along lattice axis `flow_axis` (the geometry's x; see `layout`).
    pub fn new(cfg: &crate::config::LbmConfig, in_plane: usize, flow_axis: usize) -> Self {
        let mut force = [0.0; 3];
        force[flow_axis] = cfg.force as f32;
        Self {
            omega_plus: (1.0 / cfg.tau_at(in_plane)) as f32,
            omega_minus: (1.0 / cfg.tau_minus_at(in_plane)) as f32,
            force,
            density_weight: (3.0 * cfg.sound_speed_sq) as f32,
        }
    }

    /// Equilibrium density weight of direction `q` (the rest direction takes the rest, so
    /// that the populations still sum to δρ).
    #[inline(always)]
    pub(crate) fn rho_weight<const Q: usize, V: VelocitySet<Q>>(&self, q: usize) -> f32 {
        if q == 0 {
            1.0 - self.density_weight * (1.0 - V::W[0])
        } else {
            self.density_weight * V::W[q]
        }
    }
}

/// A run of consecutive cells of one z plane.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// First cell (global index).
    start: usize,
    len: usize,
}

/// Fibre runs between fluid cells at least this long (in flat in-plane order) split a
/// plane's chunks and are never written; shorter ones are stepped with the fluid (as
/// zeros), because each chunk costs Q run copies and a partial SIMD group whatever its
/// length (16 made the 2D step at 128² 2× slower; 32 and 64 measured alike).
const MIN_SKIPPED_GAP: usize = 32;

/// The chunks of one plane (`fluid` is the plane, `base` its first global cell): its fluid
/// runs in flat in-plane order with gaps shorter than `MIN_SKIPPED_GAP` bridged, each cut
/// into pieces of at most `CHUNK` cells. Fibre before the first fluid cell, after the last
/// one and in the long gaps is never written and keeps the zeros both lattices start with.
/// No fluid cell takes a value from there: the flat shifted copies in `gather` read over
/// it, but every fluid cell whose upwind neighbour is fibre is patched (bounce-back), and
/// the bridged fibre cells are zeroed by the collision. So a step costs what the fluid
/// costs where fibres form long runs (volumes, in the order of `layout`).
fn fluid_runs(fluid: &[u8], base: usize) -> Vec<Chunk> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (p, _) in fluid.iter().enumerate().filter(|(_, m)| **m != 0) {
        match runs.last_mut() {
            Some((_, end)) if p - *end < MIN_SKIPPED_GAP => *end = p + 1,
            _ => runs.push((p, p + 1)),
        }
    }
    runs.into_iter()
        .flat_map(|(a, b)| {
            (a..b).step_by(CHUNK).map(move |s| Chunk {
                start: base + s,
                len: CHUNK.min(b - s),
            })
        })
        .collect()
}

/// Chunk layout and the pulls that the flat shifted copy gets wrong, computed once per solve.
pub struct Streaming {
    chunks: Vec<Chunk>,
    /// Single pulls of chunk k are `exceptions[exc_start[k]..exc_start[k + 1]]`: across a
    /// periodic boundary, and bounce-back in a chunk's last partial `WORD`.
    exc_start: Vec<usize>,
    /// (index into the chunk's gather buffer q·len + offset, index into f to pull from).
    exceptions: Vec<(u32, u32)>,
    /// Bounce-back links of direction q of chunk k by whole words:
    /// `bounce[bounce_start[k·Q + q]..bounce_start[k·Q + q + 1]]`.
    bounce_start: Vec<usize>,
    bounce: Vec<Links>,
}

impl Streaming {
    /// Largest number of populations (Q·stride) the packed indices can address.
    pub const MAX_POPULATIONS: usize = u32::MAX as usize;

    pub fn new<const Q: usize, V: VelocitySet<Q>>(grid: &Grid, fluid: &[u8]) -> Self {
        assert!(
            Q * grid.stride() <= Self::MAX_POPULATIONS,
            "lattice too large for u32 indices"
        );
        let (nx, ny, nz, plane) = (grid.nx, grid.ny, grid.nz, grid.plane());
        let stride = grid.stride();
        let chunks: Vec<Chunk> = (0..nz)
            .flat_map(|z| fluid_runs(&fluid[z * plane..][..plane], z * plane))
            .collect();
        let wrap =
            |v: usize, d: i32, n: usize| (v as i64 - i64::from(d)).rem_euclid(n as i64) as usize;
        let mut exc_start = Vec::with_capacity(chunks.len() + 1);
        let mut exceptions = Vec::new();
        let mut bounce_start = Vec::with_capacity(chunks.len() * Q + 1);
        let mut bounce = Vec::new();
        for ch in &chunks {
            exc_start.push(exceptions.len());
            // Direction 0 (rest) has no links.
            bounce_start.push(bounce.len());
            let whole = ch.len - ch.len % WORD;
            for q in 1..Q {
                bounce_start.push(bounce.len());
                // The word of links starting at chunk offset `w0`.
                let word = |w0: usize, mask: u16| Links {
                    dst: (q * ch.len + w0) as u32,
                    src: (opposite(q) * stride + ch.start + w0) as u32,
                    mask,
                };
                let mut mask = 0u16;
                let [cx, cy, cz] = V::C[q];
                let shift =
                    (i64::from(cx) + i64::from(cy) * nx as i64).rem_euclid(plane as i64) as usize;
                for off in 0..ch.len {
                    let cell = ch.start + off;
                    if off % WORD == 0 && mask != 0 {
                        bounce.push(word(off - WORD, mask));
                        mask = 0;
                    }
                    if fluid[cell] == 0 {
                        continue;
                    }
                    let (z, p) = (cell / plane, cell % plane);
                    let (y, x) = (p / nx, p % nx);
                    let zs = wrap(z, cz, nz);
                    let src = zs * plane + wrap(y, cy, ny) * nx + wrap(x, cx, nx);
                    let flat = zs * plane + (p + plane - shift) % plane;
                    let dst = (q * ch.len + off) as u32;
                    if fluid[src] == 0 && off < whole {
                        mask |= 1 << (off % WORD);
                    } else if fluid[src] == 0 {
                        exceptions.push((dst, (opposite(q) * stride + cell) as u32));
                    } else if src != flat {
                        exceptions.push((dst, (q * stride + src) as u32));
                    }
                }
                if mask != 0 {
                    bounce.push(word(whole - WORD, mask));
                }
            }
        }
        exc_start.push(exceptions.len());
        bounce_start.push(bounce.len());
        exceptions.shrink_to_fit();
        bounce.shrink_to_fit();
        Self {
            chunks,
            exc_start,
            exceptions,
            bounce_start,
            bounce,
        }
    }

    /// Cells a step reads and writes: the lattice less the skipped fibre runs.
    pub fn stepped_cells(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }

    /// Post-streaming populations of chunk `k` into `buf` (Q·len, direction-major).
    #[inline(always)]
    fn gather<const Q: usize, V: VelocitySet<Q>>(
        &self,
        grid: &Grid,
        f: &[f32],
        k: usize,
        buf: &mut [f32],
    ) {
        let Chunk { start, len } = self.chunks[k];
        let (nx, nz, plane, stride) = (grid.nx, grid.nz, grid.plane(), grid.stride());
        let (z, p0) = (start / plane, start % plane);
        for q in 0..Q {
            let [cx, cy, cz] = V::C[q];
            let zs = (z as i64 - i64::from(cz)).rem_euclid(nz as i64) as usize;
            let shift =
                (i64::from(cx) + i64::from(cy) * nx as i64).rem_euclid(plane as i64) as usize;
            let src_plane = &f[q * stride + zs * plane..][..plane];
            let dst = &mut buf[q * len..][..len];
            // Flat source of the chunk: [p0 − shift, p0 − shift + len) modulo the plane.
            let s0 = (p0 + plane - shift) % plane;
            let first = len.min(plane - s0);
            dst[..first].copy_from_slice(&src_plane[s0..s0 + first]);
            dst[first..].copy_from_slice(&src_plane[..len - first]);
            // While the run is still in L1.
            let links =
                &self.bounce[self.bounce_start[k * Q + q]..self.bounce_start[k * Q + q + 1]];
            bounce::apply(buf, f, links);
        }
        for &(d, s) in &self.exceptions[self.exc_start[k]..self.exc_start[k + 1]] {
            buf[d as usize] = f[s as usize];
        }
    }
}

/// Density deviation and velocity u = j + F/2 of `L` cells starting at `x0` of a gathered row.
#[inline(always)]
fn moments<const Q: usize, V: VelocitySet<Q>, const L: usize>(
    buf: &[f32],
    nx: usize,
    x0: usize,
    force: [f32; 3],
) -> ([f32; L], [[f32; L]; 3]) {
    let mut rho = [0.0f32; L];
    let mut u = [[0.0f32; L]; 3];
    for q in 0..Q {
        let g = &buf[q * nx + x0..][..L];
        for l in 0..L {
            rho[l] += g[l];
        }
        for (a, ua) in u.iter_mut().enumerate() {
            let c = V::CF[q][a];
            for l in 0..L {
                ua[l] += c * g[l];
            }
        }
    }
    for (ua, fa) in u.iter_mut().zip(force) {
        for v in ua.iter_mut() {
            *v += 0.5 * fa;
        }
    }
    (rho, u)
}

/// TRT collision of `L` cells with the linear Stokes equilibrium and Guo forcing, written
/// to `outs[q][at..]` (the row's cells of each direction in the new lattice). Fibre cells
/// get zeros. Each opposite pair is loaded, relaxed and stored in turn, so only the
/// moments stay in registers.
#[inline(always)]
fn collide<const Q: usize, V: VelocitySet<Q>, const L: usize>(
    trt: &Trt,
    buf: &[f32],
    fluid: &[u8],
    x0: usize,
    outs: &mut [&mut [f32]],
    at: usize,
) {
    let nx = fluid.len();
    let (rho, u) = moments::<Q, V, L>(buf, nx, x0, trt.force);
    // One slice, so the conversion vectorises (per-element indexing keeps it scalar).
    let mut keep = [0.0f32; L];
    for (k, &m) in keep.iter_mut().zip(&fluid[x0..x0 + L]) {
        *k = f32::from(m);
    }
    let (wp, wm) = (trt.omega_plus, trt.omega_minus);
    let src_scale = 1.0 - 0.5 * wm;
    let w0r = trt.rho_weight::<Q, V>(0);
    {
        let g = &buf[x0..][..L];
        let out = &mut outs[0][at + x0..][..L];
        for l in 0..L {
            out[l] = keep[l] * (g[l] - wp * (g[l] - w0r * rho[l]));
        }
    }
    for pair in 0..Q / 2 {
        let (a, b) = (2 * pair + 1, 2 * pair + 2);
        let w = V::W[a];
        let wr = trt.rho_weight::<Q, V>(a);
        let c = V::CF[a];
        let cf = c[0] * trt.force[0] + c[1] * trt.force[1] + c[2] * trt.force[2];
        let source = 3.0 * w * cf * src_scale;
        let ga = &buf[a * nx + x0..][..L];
        let gb = &buf[b * nx + x0..][..L];
        let mut pa = [0.0f32; L];
        let mut pb = [0.0f32; L];
        for l in 0..L {
            let cu = c[0] * u[0][l] + c[1] * u[1][l] + c[2] * u[2][l];
            let plus = wp * (0.5 * (ga[l] + gb[l]) - wr * rho[l]);
            let minus = wm * (0.5 * (ga[l] - gb[l]) - 3.0 * w * cu);
            pa[l] = keep[l] * (ga[l] - plus - minus + source);
            pb[l] = keep[l] * (gb[l] - plus + minus - source);
        }
        outs[a][at + x0..][..L].copy_from_slice(&pa);
        outs[b][at + x0..][..L].copy_from_slice(&pb);
    }
}

/// Streams and collides chunk `k` into `outs[q][at..at + len]`, compiled for AVX-512,
/// AVX2+FMA and the baseline, chosen at run time so one binary is fast on any x86-64 machine.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
#[allow(clippy::too_many_arguments)] // the hot loop's slices, passed apart so they stay borrowed disjointly
fn update_chunk<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    trt: &Trt,
    f: &[f32],
    fluid: &[u8],
    streaming: &Streaming,
    k: usize,
    buf: &mut [f32],
    outs: &mut [&mut [f32]],
    at: usize,
) {
    let Chunk { start, len } = streaming.chunks[k];
    streaming.gather::<Q, V>(grid, f, k, buf);
    let chunk_fluid = &fluid[start..][..len];
    // AVX2 has 16 vector registers, which 32 cells' moments (ρ, u: 4 vectors each) fill
    // alone; the spills cost more than shorter groups (a 64² sample's solve took 8–10 %
    // less CPU time with 16 than with 32 on a Zen 3 machine; 8 took 30 % more than 16).
    if multiversion::target::target_cfg_f!(target_feature = "avx512f") {
        collide_chunk::<Q, V, LANES>(trt, buf, chunk_fluid, outs, at);
    } else {
        collide_chunk::<Q, V, AVX2_LANES>(trt, buf, chunk_fluid, outs, at);
    }
}

/// Collides the `len` gathered cells of a chunk: whole groups of `L` cells, then one-vector
/// groups (fluid runs are often short), then the remainder cell by cell.
#[inline(always)]
fn collide_chunk<const Q: usize, V: VelocitySet<Q>, const L: usize>(
    trt: &Trt,
    buf: &[f32],
    chunk_fluid: &[u8],
    outs: &mut [&mut [f32]],
    at: usize,
) {
    let len = chunk_fluid.len();
    let wide = len - len % L;
    for x0 in (0..wide).step_by(L) {
        prefetch_for_write::<L>(outs, at + x0 + PREFETCH_AHEAD);
        collide::<Q, V, L>(trt, buf, chunk_fluid, x0, outs, at);
    }
    let narrow = len - len % TAIL_LANES;
    for x0 in (wide..narrow).step_by(TAIL_LANES) {
        collide::<Q, V, TAIL_LANES>(trt, buf, chunk_fluid, x0, outs, at);
    }
    for x0 in narrow..len {
        collide::<Q, V, 1>(trt, buf, chunk_fluid, x0, outs, at);
    }
}

/// How many cells ahead of a collision group its output lines are requested.
const PREFETCH_AHEAD: usize = 64;

/// Prefetches the `L` output cells from `at` of every direction (with the write hint;
/// these builds emit `prefetcht0`), so that the read-for-ownership misses of a group's
/// 2·Q output lines overlap the arithmetic of the groups before it instead of stalling its
/// stores (+5–10 % at 64² and 96²).
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn prefetch_for_write<const L: usize>(outs: &[&mut [f32]], at: usize) {
    #[cfg(target_arch = "x86_64")]
    for run in outs.iter().filter_map(|o| o.get(at..at + L)) {
        for line in run.chunks(16) {
            use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
            // SAFETY: SSE is part of x86-64; a prefetch reads nothing and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_ET0>(line.as_ptr().cast()) };
        }
    }
}

/// Chunks per parallel task: enough tasks to balance the threads.
fn chunks_per_task(n_chunks: usize) -> usize {
    (n_chunks / (8 * rayon::current_num_threads())).max(1)
}

/// One lattice time step: stream from `f` and collide into `f_new`.
pub fn step<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    trt: &Trt,
    f: &[f32],
    fluid: &[u8],
    streaming: &Streaming,
    f_new: &mut [f32],
) {
    let per_task = chunks_per_task(streaming.chunks.len());
    let groups: Vec<&[Chunk]> = streaming.chunks.chunks(per_task).collect();
    // tasks[t][q]: the cells of direction q from task t's first chunk to the end of its
    // last (consecutive chunks, with the skipped fibre gaps between them).
    let mut tasks: Vec<Vec<&mut [f32]>> =
        (0..groups.len()).map(|_| Vec::with_capacity(Q)).collect();
    for dir in f_new.chunks_mut(grid.stride()) {
        let (mut rest, mut pos) = (&mut dir[..grid.cells()], 0);
        for (task, group) in tasks.iter_mut().zip(&groups) {
            let (first, last) = (group[0], group[group.len() - 1]);
            let (_, from) = rest.split_at_mut(first.start - pos);
            let (mine, tail) = from.split_at_mut(last.start + last.len - first.start);
            task.push(mine);
            (rest, pos) = (tail, last.start + last.len);
        }
    }
    tasks.into_par_iter().enumerate().for_each(|(t, mut outs)| {
        let mut buf = vec![0.0f32; Q * CHUNK];
        let base = groups[t][0].start;
        for k in t * per_task..(t * per_task + groups[t].len()) {
            let Chunk { start, len } = streaming.chunks[k];
            update_chunk::<Q, V>(
                grid,
                trt,
                f,
                fluid,
                streaming,
                k,
                &mut buf[..Q * len],
                &mut outs,
                start - base,
            );
        }
    });
}

/// Density deviation δρ and velocity (ux, uy, uz) of every cell, zero in fibre.
pub fn macroscopic<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    force: [f32; 3],
    f: &[f32],
    fluid: &[u8],
    streaming: &Streaming,
) -> (Vec<f32>, Vec<[f32; 3]>) {
    let mut rho = vec![0.0f32; grid.cells()];
    let mut vel = vec![[0.0f32; 3]; grid.cells()];
    macroscopic_into::<Q, V>((grid, force, f, fluid, streaming), &mut rho, &mut vel);
    (rho, vel)
}

/// [`macroscopic`] into fields of `grid.cells()` cells that are already zero in fibre
/// (fluid cells only are written): a solve's checks reuse two, where fresh ones cost page
/// faults on every check (≈ 3 steps' time per check at 64²).
pub fn macroscopic_into<const Q: usize, V: VelocitySet<Q>>(
    (grid, force, f, fluid, streaming): (&Grid, [f32; 3], &[f32], &[u8], &Streaming),
    rho: &mut [f32],
    vel: &mut [[f32; 3]],
) {
    assert!(rho.len() == grid.cells() && vel.len() == grid.cells());
    let mut rho_parts = Vec::new();
    let mut vel_parts = Vec::new();
    let (mut r_rest, mut v_rest, mut pos) = (rho, vel, 0);
    for c in &streaming.chunks {
        let (_, r) = r_rest.split_at_mut(c.start - pos);
        let (_, v) = v_rest.split_at_mut(c.start - pos);
        let (r, rt) = r.split_at_mut(c.len);
        let (v, vt) = v.split_at_mut(c.len);
        rho_parts.push(r);
        vel_parts.push(v);
        (r_rest, v_rest, pos) = (rt, vt, c.start + c.len);
    }
    rho_parts
        .into_par_iter()
        .zip(vel_parts)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; Q * CHUNK],
            |buf, (k, (rho_c, vel_c))| {
                let Chunk { start, len } = streaming.chunks[k];
                let buf = &mut buf[..Q * len];
                streaming.gather::<Q, V>(grid, f, k, buf);
                let fluid = &fluid[start..][..len];
                // `LANES` cells at a time (a check costs a step's moments, not Q scalar
                // passes), then the rest one by one.
                let wide = len - len % LANES;
                for x0 in (0..wide).step_by(LANES) {
                    let (d, u) = moments::<Q, V, LANES>(buf, len, x0, force);
                    for l in (0..LANES).filter(|&l| fluid[x0 + l] != 0) {
                        rho_c[x0 + l] = d[l];
                        vel_c[x0 + l] = [u[0][l], u[1][l], u[2][l]];
                    }
                }
                for off in (wide..len).filter(|&off| fluid[off] != 0) {
                    let (d, u) = moments::<Q, V, 1>(buf, len, off, force);
                    rho_c[off] = d[0];
                    vel_c[off] = [u[0][0], u[1][0], u[2][0]];
                }
            },
        );
}

/// Populations at equilibrium with the start's velocity and pressure (rest where there is
/// no start; zero in fibre).
pub fn equilibrium<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    trt: &Trt,
    fluid: &[u8],
    start: Option<&Start>,
) -> Vec<f32> {
    let mut f = vec![0.0f32; grid.stride() * Q];
    if let Some(start) = start {
        f.par_chunks_mut(grid.stride())
            .enumerate()
            .for_each(|(q, dir)| {
                let c = V::CF[q];
                // p = c_s²·δρ, and density_weight = 3·c_s².
                let per_pressure = 3.0 * trt.rho_weight::<Q, V>(q) / trt.density_weight;
                let cells = start.velocity.iter().zip(&start.pressure).zip(fluid);
                for (o, ((u, &p), &m)) in dir.iter_mut().zip(cells) {
                    if m != 0 {
                        let cu = c[0] * u[0] + c[1] * u[1] + c[2] * u[2];
                        *o = per_pressure * p + 3.0 * V::W[q] * cu;
                    }
                }
            });
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lattice::{D2Q9, D3Q19};

    /// The population of direction q that fluid cell `cell` pulls: from the periodic upwind
    /// cell, or, where that is fibre, the cell's own opposite population (bounce-back), and
    /// whether it was a bounce-back link.
    fn direct_pull<const Q: usize, V: VelocitySet<Q>>(
        grid: &Grid,
        fluid: &[u8],
        f: &[f32],
        (cell, q): (usize, usize),
    ) -> (f32, bool) {
        let (nx, ny, nz, plane, stride) = (grid.nx, grid.ny, grid.nz, grid.plane(), grid.stride());
        let wrap =
            |v: usize, d: i32, n: usize| (v as i64 - i64::from(d)).rem_euclid(n as i64) as usize;
        let (z, y, x) = (cell / plane, cell % plane / nx, cell % nx);
        let [cx, cy, cz] = V::C[q];
        let src = (wrap(z, cz, nz) * ny + wrap(y, cy, ny)) * nx + wrap(x, cx, nx);
        if fluid[src] == 0 {
            (f[opposite(q) * stride + cell], true)
        } else {
            (f[q * stride + src], false)
        }
    }

    /// Every fluid cell's gathered populations equal a direct pull: from the periodic
    /// upwind cell, or, where that is fibre, the cell's own opposite population. Odd plane
    /// sizes give partial 16-cell words, chunks shorter than `CHUNK` and wraps in x and y.
    fn gather_matches_direct_pull<const Q: usize, V: VelocitySet<Q>>(grid: Grid, fluid: &[u8]) {
        let plane = grid.plane();
        let streaming = Streaming::new::<Q, V>(&grid, fluid);
        // Distinct exact values, so any wrong source shows.
        let f: Vec<f32> = (0..Q * grid.stride()).map(|i| i as f32).collect();
        let mut links = 0;
        for (k, ch) in streaming.chunks.iter().enumerate() {
            let mut buf = vec![f32::NAN; Q * ch.len];
            streaming.gather::<Q, V>(&grid, &f, k, &mut buf);
            for off in (0..ch.len).filter(|&off| fluid[ch.start + off] == 1) {
                let cell = ch.start + off;
                for q in 0..Q {
                    let (want, link) = direct_pull::<Q, V>(&grid, fluid, &f, (cell, q));
                    links += usize::from(link);
                    assert_eq!(
                        buf[q * ch.len + off],
                        want,
                        "{} chunk {k} cell {cell} q {q}",
                        V::NAME
                    );
                }
            }
        }
        assert!(links > 0);
        // The chunks are ordered, disjoint, within one plane each, and cover every fluid cell.
        let mut covered = vec![0u8; grid.cells()];
        for w in streaming.chunks.windows(2) {
            assert!(w[0].start + w[0].len <= w[1].start);
        }
        for c in &streaming.chunks {
            assert_eq!(c.start / plane, (c.start + c.len - 1) / plane);
            covered[c.start..c.start + c.len].fill(1);
        }
        assert!(fluid.iter().zip(&covered).all(|(&m, &c)| c >= m));
    }

    /// Scattered fibre (every run short, so every fibre cell is stepped).
    fn scattered(grid: Grid) -> Vec<u8> {
        (0..grid.cells())
            .map(|i| u8::from((i * 7919 + i / 13) % 20 >= 7))
            .collect()
    }

    /// Scattered fibre plus long fibre runs that the step skips: rows y ≡ 2 (mod 5) from
    /// x = 3 on, and the whole plane z = 1.
    fn with_long_runs(grid: Grid) -> Vec<u8> {
        let mut fluid = scattered(grid);
        for (i, m) in fluid.iter_mut().enumerate() {
            let (z, y, x) = (i / grid.plane(), i % grid.plane() / grid.nx, i % grid.nx);
            if (y % 5 == 2 && x >= 3) || (z == 1 && grid.nz > 1) {
                *m = 0;
            }
        }
        fluid
    }

    #[test]
    fn gather_is_the_periodic_pull_with_bounce_back() {
        let grid = |nx, ny, nz| Grid { nx, ny, nz };
        for g in [grid(13, 7, 1), grid(40, 37, 1)] {
            gather_matches_direct_pull::<9, D2Q9>(g, &scattered(g));
        }
        // Fast axes of 1 to 3 cells: a volume in fibre-axis-fastest order with few planes.
        for g in [
            grid(11, 5, 4),
            grid(33, 34, 3),
            grid(1, 5, 4),
            grid(2, 7, 3),
        ] {
            gather_matches_direct_pull::<19, D3Q19>(g, &scattered(g));
        }
        // Long fibre runs: the skipped cells are never pulled.
        let g = grid(40, 37, 1);
        let fluid = with_long_runs(g);
        assert!(Streaming::new::<9, D2Q9>(&g, &fluid).stepped_cells() < g.cells() * 9 / 10);
        gather_matches_direct_pull::<9, D2Q9>(g, &fluid);
        for g in [grid(40, 11, 3), grid(3, 20, 12)] {
            let fluid = with_long_runs(g);
            let stepped = Streaming::new::<19, D3Q19>(&g, &fluid).stepped_cells();
            assert!(stepped < g.cells() * 9 / 10, "{stepped} of {}", g.cells());
            gather_matches_direct_pull::<19, D3Q19>(g, &fluid);
        }
    }

    /// The collision groups of AVX-512 (32 cells) and AVX2 (16) write the same bits as
    /// colliding cell by cell, for a chunk whose length leaves a tail in both (8-cell groups
    /// and single cells), with fibre cells zeroed. Whichever group this CPU's dispatch
    /// picks, the other is checked here too.
    #[test]
    fn collision_groups_of_any_width_equal_cell_by_cell() {
        fn collided<const Q: usize, V: VelocitySet<Q>, const L: usize>(
            buf: &[f32],
            fluid: &[u8],
        ) -> Vec<Vec<f32>> {
            let trt = Trt {
                omega_plus: 1.0 / 0.7,
                omega_minus: 1.0 / 0.9,
                force: [1e-4, -2e-4, 3e-4],
                density_weight: 1.0,
            };
            let mut outs = vec![vec![f32::NAN; fluid.len()]; Q];
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
            collide_chunk::<Q, V, L>(&trt, buf, fluid, &mut views, 0);
            outs
        }
        fn check<const Q: usize, V: VelocitySet<Q>>() {
            let len = 1013; // 31·32 + 21 = 63·16 + 5
            let fluid: Vec<u8> = (0..len).map(|i| u8::from(i % 11 != 3)).collect();
            let buf: Vec<f32> = (0..Q * len)
                .map(|i| 1e-3 * ((i * 37 % 101) as f32 - 50.0))
                .collect();
            let one = collided::<Q, V, 1>(&buf, &fluid);
            assert!(one.iter().flatten().all(|v| v.is_finite()));
            for (q, out) in one.iter().enumerate() {
                let mut fibre = fluid.iter().zip(out).filter(|(m, _)| **m == 0).peekable();
                assert!(
                    fibre.peek().is_some() && fibre.all(|(_, v)| *v == 0.0),
                    "q {q}"
                );
            }
            assert_eq!(collided::<Q, V, LANES>(&buf, &fluid), one, "{}", V::NAME);
            assert_eq!(
                collided::<Q, V, AVX2_LANES>(&buf, &fluid),
                one,
                "{}",
                V::NAME
            );
        }
        check::<9, D2Q9>();
        check::<19, D3Q19>();
    }

    /// The check's moments (`LANES` cells at a time, then one by one) equal ρ = Σ f and
    /// u = Σ c f + F/2 summed in f64 from a direct pull, cell by cell, on chunks whose
    /// lengths are not multiples of `LANES`; fibre cells stay zero.
    #[test]
    fn moments_are_the_sums_of_the_pulled_populations() {
        fn check<const Q: usize, V: VelocitySet<Q>>(grid: Grid, fluid: &[u8]) {
            let streaming = Streaming::new::<Q, V>(&grid, fluid);
            assert!(
                streaming
                    .chunks
                    .iter()
                    .any(|c| c.len % LANES != 0 && c.len > LANES)
            );
            let f: Vec<f32> = (0..Q * grid.stride())
                .map(|i| 1e-3 * ((i * 37 % 101) as f32 - 50.0))
                .collect();
            let force = [1e-4, -2e-4, 3e-4];
            let (mut rho, mut vel) = (vec![0.0; grid.cells()], vec![[0.0; 3]; grid.cells()]);
            macroscopic_into::<Q, V>((&grid, force, &f, fluid, &streaming), &mut rho, &mut vel);
            for cell in 0..grid.cells() {
                if fluid[cell] == 0 {
                    assert_eq!((rho[cell], vel[cell]), (0.0, [0.0; 3]), "fibre {cell}");
                    continue;
                }
                let (mut r, mut u) = (0.0f64, [0.0f64; 3]);
                for q in 0..Q {
                    let g = f64::from(direct_pull::<Q, V>(&grid, fluid, &f, (cell, q)).0);
                    r += g;
                    for (ua, c) in u.iter_mut().zip(V::C[q]) {
                        *ua += f64::from(c) * g;
                    }
                }
                assert!(
                    (f64::from(rho[cell]) - r).abs() < 1e-6,
                    "{} ρ at {cell}",
                    V::NAME
                );
                for a in 0..3 {
                    let want = u[a] + 0.5 * f64::from(force[a]);
                    let got = f64::from(vel[cell][a]);
                    assert!((got - want).abs() < 1e-6, "{} u{a} at {cell}", V::NAME);
                }
            }
        }
        let grid = |nx, ny, nz| Grid { nx, ny, nz };
        for g in [grid(77, 9, 1), grid(40, 37, 1)] {
            check::<9, D2Q9>(g, &with_long_runs(g));
        }
        for g in [grid(70, 11, 3), grid(45, 20, 4)] {
            check::<19, D3Q19>(g, &with_long_runs(g));
        }
    }
}
