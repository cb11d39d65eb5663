//! Coarse-to-fine start: the lattice coarsened about 2× along every axis is solved first,
//! and its flow, prolonged, starts the fine solve.
//!
//! Why it saves steps: the slow parts of the approach to steady state are viscous
//! relaxation across a pore (∝ pore width² in cells) and the spreading of pressure through
//! the medium; a coarser lattice settles the first in a quarter of the steps, each an
//! eighth as dear. Its solution differs from the fine one by the coarse lattice's
//! discretisation error (a few percent), which is where the fine solve starts instead of
//! from rest. The error still decays at the slowest mode's rate, so the saving is the
//! logarithm of that closeness: 5–17 % of the fine steps at 128² (BENCHMARKS.md). As in
//! full multigrid (Brandt 1977), this recurses: a coarse level may itself start from a
//! coarser one.
//!
//! Stokes flow is linear and every level uses the same body force in lattice units, so a
//! lattice whose cells are r times larger carries velocities r² times smaller (u ∝
//! F·width²/ν with widths counted in cells; each level's own ν enters too) and pressures r
//! times smaller (pressure differences are F·distance).

use crate::config::LbmConfig;
use crate::kernel::Grid;
use ndarray::{Array3, ArrayView3};

/// Coarsening stops before a level's in-plane extent would fall below this many cells: a
/// fibre of the default packing is then about three cells across, and a start that coarse
/// is too far from the fine flow to save steps (BENCHMARKS.md, "Where the steps go").
pub const MIN_COARSE_CELLS: usize = 48;

/// A starting state: velocity and lattice pressure per cell, zero in fibre.
#[derive(Debug, Clone)]
pub struct Start {
    pub velocity: Vec<[f32; 3]>,
    pub pressure: Vec<f32>,
}

/// Extent of the next coarser lattice: each axis halved and rounded up; a 2D plane stays
/// one plane. `None` where `cfg.coarse_levels` is 0 or the in-plane extent would fall
/// below [`MIN_COARSE_CELLS`].
pub fn extent(
    (nz, ny, nx): (usize, usize, usize),
    cfg: &LbmConfig,
) -> Option<(usize, usize, usize)> {
    let half = |n: usize| n.div_ceil(2);
    let coarse = (if nz == 1 { 1 } else { half(nz) }, half(ny), half(nx));
    (cfg.coarse_levels > 0 && coarse.1.min(coarse.2) >= MIN_COARSE_CELLS).then_some(coarse)
}

/// Coarse cell of fine index `i` on an axis of `n` fine and `nc` coarse cells.
pub(crate) fn owner(i: usize, n: usize, nc: usize) -> usize {
    ((2 * i + 1) * nc / (2 * n)).min(nc - 1)
}

/// The mask on the coarse lattice: a coarse cell is fluid when at least half of the fine
/// cells it covers are, so axis-aligned one-cell gaps between fibres stay open. A diagonal
/// one-cell channel can still close; the solver then skips the coarse start.
pub fn restrict(mask: ArrayView3<u8>, (cz, cy, cx): (usize, usize, usize)) -> Array3<u8> {
    let (nz, ny, nx) = mask.dim();
    let mut fluid = Array3::<u32>::zeros((cz, cy, cx));
    let mut total = Array3::<u32>::zeros((cz, cy, cx));
    for ((z, y, x), &m) in mask.indexed_iter() {
        let at = (owner(z, nz, cz), owner(y, ny, cy), owner(x, nx, cx));
        total[at] += 1;
        fluid[at] += u32::from(m != 0);
    }
    ndarray::Zip::from(&fluid)
        .and(&total)
        .map_collect(|&f, &t| u8::from(2 * f >= t))
}

/// The coarse flow `(grid, velocity, pressure)` on the fine lattice: trilinear and periodic
/// between coarse cell centres (coarse fibre cells count as zero flow, so velocities fall
/// towards the walls), scaled by the cell-size ratio and `nu_ratio` = ν_coarse/ν_fine as
/// the module doc says, pressure shifted to zero mean over the fluid, zero in fine fibre.
pub fn prolong(
    (coarse, velocity, pressure): (&Grid, &[[f32; 3]], &[f32]),
    fine: &Grid,
    fluid: &[u8],
    nu_ratio: f32,
) -> Start {
    let ratio = fine.nx as f32 / coarse.nx as f32;
    let axes = [
        axis_weights(fine.nx, coarse.nx),
        axis_weights(fine.ny, coarse.ny),
        axis_weights(fine.nz, coarse.nz),
    ];
    let mut start = Start {
        velocity: vec![[0.0; 3]; fine.cells()],
        pressure: vec![0.0; fine.cells()],
    };
    let cplane = coarse.plane();
    for (cell, (&m, (u, d))) in fluid
        .iter()
        .zip(start.velocity.iter_mut().zip(start.pressure.iter_mut()))
        .enumerate()
    {
        if m == 0 {
            continue;
        }
        let (x, y, z) = (
            cell % fine.nx,
            (cell / fine.nx) % fine.ny,
            cell / fine.plane(),
        );
        let (wx, wy, wz) = (axes[0][x], axes[1][y], axes[2][z]);
        for (iz, tz) in wz {
            for (iy, ty) in wy {
                for (ix, tx) in wx {
                    let t = tx * ty * tz;
                    let c = iz * cplane + iy * coarse.nx + ix;
                    for a in 0..3 {
                        u[a] += t * velocity[c][a];
                    }
                    *d += t * pressure[c];
                }
            }
        }
        *u = u.map(|v| v * ratio * ratio * nu_ratio);
        *d *= ratio;
    }
    // The solve conserves mass, so the start's mean pressure over the fluid stays; a cold
    // start has zero there, and so must this one (interpolation and the changed fluid set
    // move the coarse mean).
    let cells = fluid.iter().filter(|&&m| m != 0).count().max(1);
    let mean = start.pressure.iter().map(|&p| f64::from(p)).sum::<f64>() / cells as f64;
    for (p, &m) in start.pressure.iter_mut().zip(fluid) {
        if m != 0 {
            *p -= mean as f32;
        }
    }
    start
}

/// For each fine index, the two coarse cells around its centre and their linear weights
/// (periodic; one cell with weight 1 on an axis of one coarse cell).
fn axis_weights(n: usize, nc: usize) -> Vec<[(usize, f32); 2]> {
    (0..n)
        .map(|i| {
            if nc == 1 {
                return [(0, 1.0), (0, 0.0)];
            }
            let pos = (i as f64 + 0.5) * nc as f64 / n as f64 - 0.5;
            let lo = pos.floor();
            let t = (pos - lo) as f32;
            let i0 = (lo as i64).rem_euclid(nc as i64) as usize;
            [(i0, 1.0 - t), ((i0 + 1) % nc, t)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn levels(coarse_levels: usize) -> LbmConfig {
        LbmConfig {
            coarse_levels,
            ..Default::default()
        }
    }

    #[test]
    fn extents_halve_every_axis_down_to_the_minimum() {
        let on = levels(1);
        assert_eq!(extent((282, 256, 256), &on), Some((141, 128, 128)));
        assert_eq!(extent((141, 128, 128), &on), Some((71, 64, 64)));
        assert_eq!(extent((1, 97, 120), &on), Some((1, 49, 60)));
        // The default 64² sample: its 32² coarse level would be under the minimum.
        assert_eq!(extent((70, 64, 64), &on), None);
        assert_eq!(extent((282, 256, 256), &levels(0)), None);
    }

    /// Each fine cell belongs to one coarse cell; on an odd axis of 5 the coarse cells
    /// cover 2, 1 and 2 fine cells, and a coarse cell is fluid from half its cells up.
    #[test]
    fn restriction_keeps_a_cell_fluid_from_half_its_fine_cells() {
        assert_eq!(
            (0..5).map(|i| owner(i, 5, 3)).collect::<Vec<_>>(),
            [0, 0, 1, 2, 2]
        );
        // One plane, 4 × 5: coarse 2 × 3 (rows of 2 fine cells, columns of 2, 1, 2).
        let fine = Array3::from_shape_vec(
            (1, 4, 5),
            vec![
                1, 0, 0, 1, 0, //
                0, 0, 1, 0, 0, //
                1, 1, 0, 1, 1, //
                1, 0, 0, 0, 0,
            ],
        )
        .unwrap();
        let coarse = restrict(fine.view(), (1, 2, 3));
        // Fluid counts: [1/4, 1/2, 1/4], [3/4, 0/2, 2/4].
        assert_eq!(coarse.into_raw_vec_and_offset().0, vec![0, 1, 0, 1, 0, 1]);
    }

    /// Hand-computed: on a periodic axis of 4 coarse cells holding 0, 1, 2, 3, fine cell 0
    /// (coarse position −¼) mixes cells 3 and 0 as ¼·3 + ¾·0, fine cell 1 (position ¼)
    /// ¾·0 + ¼·1; velocities scale by 2² times the viscosity ratio (½ here), pressures by
    /// 2, fibre stays at rest.
    #[test]
    fn prolongation_interpolates_periodically_and_rescales() {
        let plane = |nx, ny| Grid { nx, ny, nz: 1 };
        let (coarse, fine) = (plane(4, 2), plane(8, 4));
        let velocity: Vec<[f32; 3]> = (0..8).map(|c| [(c % 4) as f32, 1.0, -2.0]).collect();
        let pressure: Vec<f32> = (0..8).map(|c| (c % 4) as f32).collect();
        let mut fluid = vec![1u8; fine.cells()];
        fluid[9] = 0;
        let start = prolong((&coarse, &velocity, &pressure), &fine, &fluid, 0.5);
        assert_eq!(start.velocity[0], [2.0 * 0.75, 2.0, -4.0]);
        assert_eq!(start.velocity[1], [2.0 * 0.25, 2.0, -4.0]);
        // Each fine row interpolates to 2·(0.75, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 2.25)
        // (sum 2·12); the fibre cell (row 1, x = 1) would hold 2·0.25: fluid mean
        // 2·(4·12 − 0.25)/31, subtracted everywhere in the fluid.
        let mean = 2.0 * (4.0 * 12.0 - 0.25) / 31.0;
        assert!((start.pressure[0] - (2.0 * 0.75 - mean)).abs() < 1e-5);
        assert!((start.pressure[8 + 2] - (2.0 * 0.75 - mean)).abs() < 1e-5);
        assert_eq!(start.velocity[9], [0.0; 3]);
        assert_eq!(start.pressure[9], 0.0);
    }
}
