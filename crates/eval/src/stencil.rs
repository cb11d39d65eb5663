//! The discrete divergence `D` that both the divergence metric and the divergence-free
//! projection use, so a projected field scores exactly zero on the metric.
//!
//! Central differences on the periodic grid with the true spacing of each axis
//! (dx, dy in-plane pixel pitch; dz the slice pitch, ~25× dx in the reference data):
//!
//! `(D u)_i = (ux[i+x̂] − ux[i−x̂])/(2dx) + (uy[i+ŷ] − uy[i−ŷ])/(2dy) + (uz[i+ẑ] − uz[i−ẑ])/(2dz)`
//!
//! with one row per fluid voxel, applied to the field with fibre voxels at zero (no-slip,
//! the mask `M`). Along an axis of one or two voxels both neighbours are the same voxel
//! and the difference vanishes, which the index arithmetic gives without a special case.

use fiberflow_geometry::layout::VoxelSize;
use rayon::prelude::*;

use crate::error::Result;
use crate::input::{Dims, check_voxel};

/// `D` and its adjoint on flat C-order `(S, H, W)` arrays, parallel over rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stencil {
    dims: Dims,
    /// `1/(2dx), 1/(2dy), 1/(2dz)` in 1/m.
    half_inv: [f64; 3],
}

/// Flat offsets of one row's neighbours.
struct Row {
    /// Start of this row, of the rows at y ± 1 and of the rows at z ± 1.
    here: usize,
    y_plus: usize,
    y_minus: usize,
    z_plus: usize,
    z_minus: usize,
}

impl Stencil {
    pub(crate) fn new(dims: Dims, voxel: &VoxelSize) -> Result<Self> {
        check_voxel(voxel)?;
        Ok(Self {
            dims,
            half_inv: [voxel.dx_m, voxel.dy_m, voxel.dz_m].map(|d| 0.5 / d),
        })
    }

    /// Neighbour row offsets of row `r = s·H + y` (periodic in y and z).
    fn row(&self, r: usize) -> Row {
        let Dims {
            slices,
            height,
            width,
        } = self.dims;
        let (s, y) = (r / height, r % height);
        let start = |s: usize, y: usize| (s * height + y) * width;
        Row {
            here: start(s, y),
            y_plus: start(s, (y + 1) % height),
            y_minus: start(s, (y + height - 1) % height),
            z_plus: start((s + 1) % slices, y),
            z_minus: start((s + slices - 1) % slices, y),
        }
    }

    /// Columns x + 1 and x − 1 (periodic; branches, not `%`, in the innermost loop).
    fn columns(&self, x: usize) -> (usize, usize) {
        let w = self.dims.width;
        let xp = if x + 1 == w { 0 } else { x + 1 };
        let xm = if x == 0 { w - 1 } else { x - 1 };
        (xp, xm)
    }

    /// `out = D u` at fluid voxels and 0 in fibres; `u` must be zero in fibres (`M u`).
    pub(crate) fn divergence(&self, u: [&[f64]; 3], fluid: &[bool], out: &mut [f64]) {
        let [ix, iy, iz] = self.half_inv;
        out.par_chunks_mut(self.dims.width)
            .enumerate()
            .for_each(|(r, out_row)| {
                let n = self.row(r);
                for (x, o) in out_row.iter_mut().enumerate() {
                    *o = if fluid[n.here + x] {
                        let (xp, xm) = self.columns(x);
                        (u[0][n.here + xp] - u[0][n.here + xm]) * ix
                            + (u[1][n.y_plus + x] - u[1][n.y_minus + x]) * iy
                            + (u[2][n.z_plus + x] - u[2][n.z_minus + x]) * iz
                    } else {
                        0.0
                    };
                }
            });
    }

    /// `out = M Dᵀ λ`: the adjoint of `D M`, zero in fibres; `λ` must be zero in fibres
    /// (it has one entry per fluid row of `D`).
    pub(crate) fn adjoint(&self, lambda: &[f64], fluid: &[bool], out: &mut [Vec<f64>; 3]) {
        let [ix, iy, iz] = self.half_inv;
        let w = self.dims.width;
        let [ox, oy, oz] = out;
        ox.par_chunks_mut(w)
            .zip(oy.par_chunks_mut(w))
            .zip(oz.par_chunks_mut(w))
            .enumerate()
            .for_each(|(r, ((ox, oy), oz))| {
                let n = self.row(r);
                for x in 0..w {
                    let (xp, xm) = self.columns(x);
                    let (gx, gy, gz) = if fluid[n.here + x] {
                        (
                            (lambda[n.here + xm] - lambda[n.here + xp]) * ix,
                            (lambda[n.y_minus + x] - lambda[n.y_plus + x]) * iy,
                            (lambda[n.z_minus + x] - lambda[n.z_plus + x]) * iz,
                        )
                    } else {
                        (0.0, 0.0, 0.0)
                    };
                    (ox[x], oy[x], oz[x]) = (gx, gy, gz);
                }
            });
    }

    /// Diagonal of `D M Dᵀ` (0 for fibre voxels and for fluid voxels whose row of `D M`
    /// is empty): Σ over axes of (fluid neighbours) / (2 d)², for axes longer than two.
    pub(crate) fn normal_diagonal(&self, fluid: &[bool]) -> Vec<f64> {
        let Dims {
            slices,
            height,
            width,
        } = self.dims;
        let sq = self.half_inv.map(|h| h * h);
        let mut diag = vec![0.0; self.dims.voxels()];
        diag.par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, d_row)| {
                let n = self.row(r);
                for (x, d) in d_row.iter_mut().enumerate() {
                    if !fluid[n.here + x] {
                        continue;
                    }
                    let count =
                        |a: usize, b: usize| f64::from(u8::from(fluid[a]) + u8::from(fluid[b]));
                    let (xp, xm) = self.columns(x);
                    let axes = [
                        (width, count(n.here + xp, n.here + xm)),
                        (height, count(n.y_plus + x, n.y_minus + x)),
                        (slices, count(n.z_plus + x, n.z_minus + x)),
                    ];
                    *d = axes
                        .iter()
                        .zip(sq)
                        .filter(|((len, _), _)| *len > 2)
                        .map(|((_, c), s)| c * s)
                        .sum();
                }
            });
        diag
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn random_case(dims: Dims, seed: u64) -> (Vec<bool>, [Vec<f64>; 3], Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = dims.voxels();
        let fluid: Vec<bool> = (0..n).map(|_| rng.random_bool(0.7)).collect();
        let masked = |rng: &mut ChaCha8Rng| -> Vec<f64> {
            fluid
                .iter()
                .map(|&f| if f { rng.random_range(-1.0..1.0) } else { 0.0 })
                .collect()
        };
        let u = [masked(&mut rng), masked(&mut rng), masked(&mut rng)];
        let lambda = masked(&mut rng);
        (fluid, u, lambda)
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// ⟨D M u, λ⟩ = ⟨M u, M Dᵀ λ⟩ for any u, λ: the adjoint is the transpose, on grids
    /// with axes of 1, 2 and more voxels.
    #[test]
    fn adjoint_is_the_transpose() {
        let voxel = VoxelSize {
            dx_m: 0.2e-6,
            dy_m: 0.3e-6,
            dz_m: 5e-6,
        };
        for (k, dims) in [(3, 4, 5), (1, 2, 6), (4, 1, 3), (2, 5, 2)]
            .into_iter()
            .enumerate()
        {
            let dims = Dims {
                slices: dims.0,
                height: dims.1,
                width: dims.2,
            };
            let st = Stencil::new(dims, &voxel).unwrap();
            let (fluid, u, lambda) = random_case(dims, k as u64);
            let mut div = vec![0.0; dims.voxels()];
            st.divergence([&u[0], &u[1], &u[2]], &fluid, &mut div);
            let mut g = [0, 1, 2].map(|_| vec![0.0; dims.voxels()]);
            st.adjoint(&lambda, &fluid, &mut g);
            let lhs = dot(&div, &lambda);
            let rhs: f64 = (0..3).map(|c| dot(&u[c], &g[c])).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-9 * lhs.abs().max(1e6),
                "{dims:?}: {lhs} vs {rhs}"
            );
        }
    }

    /// The diagonal equals `e_iᵀ (D M Dᵀ) e_i` computed with the operators themselves.
    #[test]
    fn diagonal_matches_the_operator() {
        let voxel = VoxelSize {
            dx_m: 1.0,
            dy_m: 2.0,
            dz_m: 0.5,
        };
        let dims = Dims {
            slices: 3,
            height: 2,
            width: 4,
        };
        let st = Stencil::new(dims, &voxel).unwrap();
        let (fluid, _, _) = random_case(dims, 7);
        let diag = st.normal_diagonal(&fluid);
        let n = dims.voxels();
        for i in 0..n {
            let mut e = vec![0.0; n];
            if fluid[i] {
                e[i] = 1.0;
            }
            let mut g = [0, 1, 2].map(|_| vec![0.0; n]);
            st.adjoint(&e, &fluid, &mut g);
            let mut col = vec![0.0; n];
            st.divergence([&g[0], &g[1], &g[2]], &fluid, &mut col);
            assert!(
                (col[i] - diag[i]).abs() < 1e-12,
                "voxel {i}: {} vs {}",
                col[i],
                diag[i]
            );
        }
    }
}
