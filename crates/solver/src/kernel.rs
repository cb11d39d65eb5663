//! The fused pull-stream / TRT-collide step and the moment pass.
//!
//! Populations live in one `Vec<f32>` blocked by lattice row: row r = z·ny + y holds its Q
//! direction arrays of nx cells one after the other, `f[(r·Q + q)·nx + x]`. A step writes
//! whole rows of the second lattice, so rayon can hand rows to threads without sharing,
//! and every inner loop runs over contiguous x, which the compiler vectorises.
//! Bytes per fluid-cell update: Q reads + Q writes (+ Q write-allocate reads) of f32.

use crate::lattice::VelocitySet;
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

    /// Row holding the cells (·, y, z).
    fn row(&self, y: usize, z: usize) -> usize {
        z * self.ny + y
    }

    /// Row reached from row (y, z) by moving (dy, dz), periodically.
    fn shifted_row(&self, r: usize, dy: i32, dz: i32) -> usize {
        let (y, z) = (r % self.ny, r / self.ny);
        let y = (y as i64 + i64::from(dy)).rem_euclid(self.ny as i64) as usize;
        let z = (z as i64 + i64::from(dz)).rem_euclid(self.nz as i64) as usize;
        self.row(y, z)
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

/// Post-streaming populations of row `r` into `buf` (Q·nx): pulled from the upwind
/// neighbour, or bounced back from the cell's own opposite population when that
/// neighbour is fibre (half-way bounce-back).
fn gather_row<const Q: usize>(
    set: &VelocitySet<Q>,
    grid: &Grid,
    f: &[f32],
    fluid: &[u8],
    r: usize,
    buf: &mut [f32],
) {
    let nx = grid.nx;
    for q in 0..Q {
        let [cx, cy, cz] = set.c[q];
        let src_row = grid.shifted_row(r, -cy, -cz);
        let src = &f[(src_row * Q + q) * nx..][..nx];
        let src_fluid = &fluid[src_row * nx..][..nx];
        let own_opp = &f[(r * Q + VelocitySet::<Q>::opposite(q)) * nx..][..nx];
        let dst = &mut buf[q * nx..][..nx];
        let pick = |s: f32, is_fluid: u8, bb: f32| if is_fluid != 0 { s } else { bb };
        match cx {
            0 => {
                for x in 0..nx {
                    dst[x] = pick(src[x], src_fluid[x], own_opp[x]);
                }
            }
            1 => {
                dst[0] = pick(src[nx - 1], src_fluid[nx - 1], own_opp[0]);
                for x in 1..nx {
                    dst[x] = pick(src[x - 1], src_fluid[x - 1], own_opp[x]);
                }
            }
            _ => {
                for x in 0..nx - 1 {
                    dst[x] = pick(src[x + 1], src_fluid[x + 1], own_opp[x]);
                }
                dst[nx - 1] = pick(src[0], src_fluid[0], own_opp[nx - 1]);
            }
        }
    }
}

/// Density deviation and velocity u = j + F/2 of `L` cells starting at `x0` of a gathered row.
#[inline(always)]
fn moments<const Q: usize, const L: usize>(
    set: &VelocitySet<Q>,
    buf: &[f32],
    nx: usize,
    x0: usize,
    force: [f32; 3],
) -> ([[f32; L]; Q], [f32; L], [[f32; L]; 3]) {
    let mut g = [[0.0f32; L]; Q];
    for (q, gq) in g.iter_mut().enumerate() {
        gq.copy_from_slice(&buf[q * nx + x0..][..L]);
    }
    let mut rho = [0.0f32; L];
    let mut u = [[0.0f32; L]; 3];
    for (q, gq) in g.iter().enumerate() {
        for l in 0..L {
            rho[l] += gq[l];
        }
        for (a, ua) in u.iter_mut().enumerate() {
            let c = set.c[q][a] as f32;
            if c != 0.0 {
                for l in 0..L {
                    ua[l] += c * gq[l];
                }
            }
        }
    }
    for (ua, fa) in u.iter_mut().zip(force) {
        for v in ua.iter_mut() {
            *v += 0.5 * fa;
        }
    }
    (g, rho, u)
}

/// TRT collision of `L` cells with the linear Stokes equilibrium and Guo forcing,
/// written to `out` (the row's slot in the new lattice). Fibre cells get zeros.
#[inline(always)]
fn collide<const Q: usize, const L: usize>(
    set: &VelocitySet<Q>,
    trt: &Trt,
    buf: &[f32],
    fluid: &[u8],
    x0: usize,
    out: &mut [f32],
) {
    let nx = fluid.len();
    let (g, rho, u) = moments::<Q, L>(set, buf, nx, x0, trt.force);
    let mut keep = [0.0f32; L];
    for l in 0..L {
        keep[l] = f32::from(fluid[x0 + l]);
    }
    let (wp, wm) = (trt.omega_plus, trt.omega_minus);
    let src_scale = 1.0 - 0.5 * wm;
    let mut post = [[0.0f32; L]; Q];
    for l in 0..L {
        post[0][l] = keep[l] * (g[0][l] - wp * (g[0][l] - set.w[0] * rho[l]));
    }
    for a in (1..Q).step_by(2) {
        let b = a + 1;
        let w = set.w[a];
        let c = set.c[a].map(|v| v as f32);
        let cf = c[0] * trt.force[0] + c[1] * trt.force[1] + c[2] * trt.force[2];
        let source = 3.0 * w * cf * src_scale;
        for l in 0..L {
            let cu = c[0] * u[0][l] + c[1] * u[1][l] + c[2] * u[2][l];
            let plus = wp * (0.5 * (g[a][l] + g[b][l]) - w * rho[l]);
            let minus = wm * (0.5 * (g[a][l] - g[b][l]) - 3.0 * w * cu);
            post[a][l] = keep[l] * (g[a][l] - plus - minus + source);
            post[b][l] = keep[l] * (g[b][l] - plus + minus - source);
        }
    }
    for (q, pq) in post.iter().enumerate() {
        out[q * nx + x0..][..L].copy_from_slice(pq);
    }
}

/// One lattice time step: stream from `f` and collide into `f_new`.
pub fn step<const Q: usize>(
    set: &VelocitySet<Q>,
    grid: &Grid,
    trt: &Trt,
    f: &[f32],
    fluid: &[u8],
    f_new: &mut [f32],
) {
    let nx = grid.nx;
    f_new
        .par_chunks_mut(Q * nx)
        .enumerate()
        .with_min_len(4)
        .for_each_init(
            || vec![0.0f32; Q * nx],
            |buf, (r, out)| {
                gather_row(set, grid, f, fluid, r, buf);
                let row_fluid = &fluid[r * nx..][..nx];
                // Whole SIMD-width chunks, then the remainder cell by cell.
                let wide = nx - nx % LANES;
                for x0 in (0..wide).step_by(LANES) {
                    collide::<Q, LANES>(set, trt, buf, row_fluid, x0, out);
                }
                for x0 in wide..nx {
                    collide::<Q, 1>(set, trt, buf, row_fluid, x0, out);
                }
            },
        );
}

/// Density deviation δρ and velocity (ux, uy, uz) of every cell, zero in fibre.
pub fn macroscopic<const Q: usize>(
    set: &VelocitySet<Q>,
    grid: &Grid,
    force: [f32; 3],
    f: &[f32],
    fluid: &[u8],
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
                gather_row(set, grid, f, fluid, r, buf);
                let row_fluid = &fluid[r * nx..][..nx];
                for x in 0..nx {
                    if row_fluid[x] == 0 {
                        continue;
                    }
                    let (_, d, u) = moments::<Q, 1>(set, buf, nx, x, force);
                    rho_row[x] = d[0];
                    vel_row[x] = [u[0][0], u[1][0], u[2][0]];
                }
            },
        );
    (rho, vel)
}

/// Populations at equilibrium with δρ = 0 and the given velocities (zero in fibre).
pub fn equilibrium<const Q: usize>(
    set: &VelocitySet<Q>,
    grid: &Grid,
    fluid: &[u8],
    vel: Option<&[[f32; 3]]>,
) -> Vec<f32> {
    let nx = grid.nx;
    let mut f = vec![0.0f32; grid.cells() * Q];
    if let Some(vel) = vel {
        f.par_chunks_mut(Q * nx).enumerate().for_each(|(r, row)| {
            for q in 0..Q {
                let c = set.c[q].map(|v| v as f32);
                for x in 0..nx {
                    let cell = r * nx + x;
                    if fluid[cell] != 0 {
                        let u = vel[cell];
                        row[q * nx + x] =
                            3.0 * set.w[q] * (c[0] * u[0] + c[1] * u[1] + c[2] * u[2]);
                    }
                }
            }
        });
    }
    f
}
