//! The fused pull-stream / TRT-collide step and the moment pass.
//!
//! Populations live in one `Vec<f32>` ordered by direction, `f[q·cells + (z·ny + y)·nx + x]`,
//! so each direction is one long contiguous stream that hardware prefetchers follow across
//! consecutive rows. A step hands blocks of consecutive rows to threads; each block writes
//! only its own cells of every direction, so the output splits into disjoint slices.
//! Every inner loop runs over contiguous x, which the compiler vectorises.
//! Bytes per fluid-cell update: Q reads + Q writes (+ Q write-allocate reads) of f32.

use crate::lattice::{VelocitySet, opposite};
use multiversion::multiversion;
use rayon::prelude::*;

/// Cells processed together in the collision, a multiple of the widest SIMD lane count.
const LANES: usize = 16;

/// Lattice extent; 2D problems have nz = 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub nx: usize,
    pub ny: usize,
    pub nz: usize,
}

impl Grid {
    pub fn rows(&self) -> usize {
        self.ny * self.nz
    }

    pub fn cells(&self) -> usize {
        self.nx * self.rows()
    }

    /// Distance between direction arrays: the cells plus 128 bytes, so that the Q streams
    /// of a step never all map to the same L1 cache sets (lattices are often a multiple
    /// of 4 KiB per direction, which would make every access conflict).
    pub fn stride(&self) -> usize {
        self.cells() + 32
    }

    /// Row holding the cells (·, y, z).
    fn row(&self, y: usize, z: usize) -> usize {
        z * self.ny + y
    }

    /// Row reached from row (y, z) by moving (dy, dz) ∈ {−1, 0, 1}², periodically.
    #[inline(always)]
    fn shifted_row(&self, y: usize, z: usize, dy: i32, dz: i32) -> usize {
        let wrap = |v: usize, d: i32, n: usize| match d {
            1 if v + 1 == n => 0,
            1 => v + 1,
            -1 if v == 0 => n - 1,
            -1 => v - 1,
            _ => v,
        };
        self.row(wrap(y, dy, self.ny), wrap(z, dz, self.nz))
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
}

/// Half-way bounce-back links: for every fluid cell and direction whose upwind neighbour
/// is fibre, where the cell must take its own opposite population instead. Listed per row
/// once per solve, so streaming itself is a plain shifted copy with no mask test.
pub struct Links {
    /// Entries of row r are `entries[row_start[r]..row_start[r + 1]]`.
    row_start: Vec<usize>,
    /// `(q << 16) | x`.
    entries: Vec<u32>,
}

impl Links {
    /// Largest row length the packed entries can address.
    pub const MAX_NX: usize = 1 << 16;

    pub fn new<const Q: usize, V: VelocitySet<Q>>(grid: &Grid, fluid: &[u8]) -> Self {
        let nx = grid.nx;
        assert!(
            nx < Self::MAX_NX && Q < 32,
            "lattice row too long for packed links"
        );
        let mut row_start = Vec::with_capacity(grid.rows() + 1);
        let mut entries = Vec::new();
        for r in 0..grid.rows() {
            row_start.push(entries.len());
            let (y, z) = (r % grid.ny, r / grid.ny);
            for q in 1..Q {
                let [cx, cy, cz] = V::C[q];
                let src_row = grid.shifted_row(y, z, -cy, -cz);
                for x in 0..nx {
                    let sx = (x as i64 - i64::from(cx)).rem_euclid(nx as i64) as usize;
                    if fluid[r * nx + x] != 0 && fluid[src_row * nx + sx] == 0 {
                        entries.push(((q as u32) << 16) | x as u32);
                    }
                }
            }
        }
        row_start.push(entries.len());
        Self { row_start, entries }
    }

    fn row(&self, r: usize) -> &[u32] {
        &self.entries[self.row_start[r]..self.row_start[r + 1]]
    }
}

/// Post-streaming populations of row `r` into `buf` (Q·nx): pulled from the upwind
/// neighbour, then, on the bounce-back links, replaced by the cell's own opposite
/// population (half-way bounce-back).
#[inline(always)]
fn gather_row<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    f: &[f32],
    links: &Links,
    r: usize,
    buf: &mut [f32],
) {
    let (nx, stride) = (grid.nx, grid.stride());
    let (y, z) = (r % grid.ny, r / grid.ny);
    for q in 0..Q {
        let [cx, cy, cz] = V::C[q];
        let src_row = grid.shifted_row(y, z, -cy, -cz);
        let src = &f[q * stride + src_row * nx..][..nx];
        let dst = &mut buf[q * nx..][..nx];
        // Cell x pulls from x − cx, wrapping at the row ends.
        match cx {
            0 => dst.copy_from_slice(src),
            1 => {
                dst[1..].copy_from_slice(&src[..nx - 1]);
                dst[0] = src[nx - 1];
            }
            _ => {
                dst[..nx - 1].copy_from_slice(&src[1..]);
                dst[nx - 1] = src[0];
            }
        }
    }
    let own = r * nx;
    for &e in links.row(r) {
        let (q, x) = ((e >> 16) as usize, (e & 0xffff) as usize);
        buf[q * nx + x] = f[opposite(q) * stride + own + x];
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
            let c = V::C[q][a] as f32;
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
    let mut keep = [0.0f32; L];
    for l in 0..L {
        keep[l] = f32::from(fluid[x0 + l]);
    }
    let (wp, wm) = (trt.omega_plus, trt.omega_minus);
    let src_scale = 1.0 - 0.5 * wm;
    {
        let g = &buf[x0..][..L];
        let out = &mut outs[0][at + x0..][..L];
        for l in 0..L {
            out[l] = keep[l] * (g[l] - wp * (g[l] - V::W[0] * rho[l]));
        }
    }
    for a in (1..Q).step_by(2) {
        let b = a + 1;
        let w = V::W[a];
        let c = V::C[a].map(|v| v as f32);
        let cf = c[0] * trt.force[0] + c[1] * trt.force[1] + c[2] * trt.force[2];
        let source = 3.0 * w * cf * src_scale;
        let ga = &buf[a * nx + x0..][..L];
        let gb = &buf[b * nx + x0..][..L];
        let mut pa = [0.0f32; L];
        let mut pb = [0.0f32; L];
        for l in 0..L {
            let cu = c[0] * u[0][l] + c[1] * u[1][l] + c[2] * u[2][l];
            let plus = wp * (0.5 * (ga[l] + gb[l]) - w * rho[l]);
            let minus = wm * (0.5 * (ga[l] - gb[l]) - 3.0 * w * cu);
            pa[l] = keep[l] * (ga[l] - plus - minus + source);
            pb[l] = keep[l] * (gb[l] - plus + minus - source);
        }
        outs[a][at + x0..][..L].copy_from_slice(&pa);
        outs[b][at + x0..][..L].copy_from_slice(&pb);
    }
}

/// Streams and collides row `r` into `outs[q][at..at + nx]`, compiled for AVX-512, AVX2+FMA
/// and the baseline, chosen at run time so one binary is fast on any x86-64 machine.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
#[allow(clippy::too_many_arguments)]
fn update_row<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    trt: &Trt,
    f: &[f32],
    fluid: &[u8],
    links: &Links,
    r: usize,
    buf: &mut [f32],
    outs: &mut [&mut [f32]],
    at: usize,
) {
    let nx = grid.nx;
    gather_row::<Q, V>(grid, f, links, r, buf);
    let row_fluid = &fluid[r * nx..][..nx];
    // Whole SIMD-width chunks, then the remainder cell by cell.
    let wide = nx - nx % LANES;
    for x0 in (0..wide).step_by(LANES) {
        collide::<Q, V, LANES>(trt, buf, row_fluid, x0, outs, at);
    }
    for x0 in wide..nx {
        collide::<Q, V, 1>(trt, buf, row_fluid, x0, outs, at);
    }
}

/// Rows per parallel task: enough tasks to balance the threads, long enough streams.
fn rows_per_task(grid: &Grid) -> usize {
    (grid.rows() / (8 * rayon::current_num_threads())).max(1)
}

/// One lattice time step: stream from `f` and collide into `f_new`.
pub fn step<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    trt: &Trt,
    f: &[f32],
    fluid: &[u8],
    links: &Links,
    f_new: &mut [f32],
) {
    let (nx, cells) = (grid.nx, grid.cells());
    let block = rows_per_task(grid) * nx;
    // tasks[t][q]: the cells of direction q that task t writes.
    let mut tasks: Vec<Vec<&mut [f32]>> = Vec::new();
    for dir in f_new.chunks_mut(grid.stride()) {
        for (t, part) in dir[..cells].chunks_mut(block).enumerate() {
            if tasks.len() <= t {
                tasks.push(Vec::with_capacity(Q));
            }
            tasks[t].push(part);
        }
    }
    tasks.into_par_iter().enumerate().for_each(|(t, mut outs)| {
        let mut buf = vec![0.0f32; Q * nx];
        let first_row = t * block / nx;
        for (i, r) in (first_row..grid.rows().min(first_row + block / nx)).enumerate() {
            update_row::<Q, V>(grid, trt, f, fluid, links, r, &mut buf, &mut outs, i * nx);
        }
    });
}

/// Density deviation δρ and velocity (ux, uy, uz) of every cell, zero in fibre.
pub fn macroscopic<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    force: [f32; 3],
    f: &[f32],
    fluid: &[u8],
    links: &Links,
) -> (Vec<f32>, Vec<[f32; 3]>) {
    let nx = grid.nx;
    let mut rho = vec![0.0f32; grid.cells()];
    let mut vel = vec![[0.0f32; 3]; grid.cells()];
    rho.par_chunks_mut(nx)
        .zip(vel.par_chunks_mut(nx))
        .enumerate()
        .for_each_init(
            || vec![0.0f32; Q * nx],
            |buf, (r, (rho_row, vel_row))| {
                gather_row::<Q, V>(grid, f, links, r, buf);
                let row_fluid = &fluid[r * nx..][..nx];
                for x in 0..nx {
                    if row_fluid[x] == 0 {
                        continue;
                    }
                    let (d, u) = moments::<Q, V, 1>(buf, nx, x, force);
                    rho_row[x] = d[0];
                    vel_row[x] = [u[0][0], u[1][0], u[2][0]];
                }
            },
        );
    (rho, vel)
}

/// Populations at equilibrium with δρ = 0 and the given velocities (zero in fibre).
pub fn equilibrium<const Q: usize, V: VelocitySet<Q>>(
    grid: &Grid,
    fluid: &[u8],
    vel: Option<&[[f32; 3]]>,
) -> Vec<f32> {
    let mut f = vec![0.0f32; grid.stride() * Q];
    if let Some(vel) = vel {
        f.par_chunks_mut(grid.stride())
            .enumerate()
            .for_each(|(q, dir)| {
                let c = V::C[q].map(|v| v as f32);
                for ((o, u), &m) in dir.iter_mut().zip(vel).zip(fluid) {
                    if m != 0 {
                        *o = 3.0 * V::W[q] * (c[0] * u[0] + c[1] * u[1] + c[2] * u[2]);
                    }
                }
            });
    }
    f
}
