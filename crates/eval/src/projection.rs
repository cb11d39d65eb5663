//! Exact post-projection of a velocity field onto zero discrete divergence in the fluid
//! with no-slip in the fibres: an exact alternative to gradient-based physics guidance
//! during sampling, at the cost of one Poisson solve.
//!
//! For a field u, the result u' minimises ‖u' − u‖₂ subject to u' = 0 in fibres and
//! `D u' = 0` at every fluid voxel, with `D` the central-difference divergence of
//! [`crate::physics::divergence`]. With `A = D M` (M zeroes fibre voxels) the Lagrange
//! conditions give u' = M(u − Dᵀλ) where `(D M Dᵀ) λ = D M u`: a discrete Poisson
//! problem on the fluid (Chorin's projection, here exact for the metric's own operator
//! rather than for a compact Laplacian). It is solved matrix-free by conjugate gradients
//! with a Jacobi preconditioner, f64 throughout; the system is singular (constants and
//! checkerboards are in the null space of a central difference) but consistent, which CG
//! handles from λ = 0.

use fiberflow_geometry::layout::VoxelSize;
use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use crate::error::{EvalError, Result};
use crate::input::Flow;
use crate::stencil::Stencil;

/// When the conjugate-gradient solve stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProjectionConfig {
    rel_tol: f64,
    max_iterations: usize,
}

impl ProjectionConfig {
    /// Stop once ‖residual‖ ≤ `rel_tol`·‖D M u‖ (0 < rel_tol < 1); fail after
    /// `max_iterations` (≥ 1).
    pub fn new(rel_tol: f64, max_iterations: usize) -> Result<Self> {
        if !(rel_tol > 0.0 && rel_tol < 1.0) {
            return Err(EvalError::Parameter {
                name: "projection rel_tol",
                value: rel_tol,
                reason: "must lie in (0, 1)",
            });
        }
        if max_iterations == 0 {
            return Err(EvalError::Parameter {
                name: "projection max_iterations",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        Ok(Self {
            rel_tol,
            max_iterations,
        })
    }

    pub fn rel_tol(&self) -> f64 {
        self.rel_tol
    }

    pub fn max_iterations(&self) -> usize {
        self.max_iterations
    }
}

impl Default for ProjectionConfig {
    /// 1e-8: below the f32 rounding of the stored result (~6e-8 relative), so the
    /// projected f32 field is as divergence-free as f32 allows.
    fn default() -> Self {
        Self {
            rel_tol: 1e-8,
            max_iterations: 10_000,
        }
    }
}

/// A projected field and how the solve went.
#[derive(Debug, Clone)]
pub struct Projection {
    /// The projected field `(S, 3, H, W)`, m/s; exactly 0 in fibres.
    pub velocity: Array4<f32>,
    /// Conjugate-gradient iterations (0 when the input was already divergence-free).
    pub iterations: usize,
    /// ‖D u'‖ / ‖D M u‖ of the f64 result before rounding to f32 (0 when D M u = 0).
    pub relative_residual: f64,
}

/// The least-squares closest field to `velocity` that is zero in fibres and has zero
/// discrete divergence at every fluid voxel; `mask` is `(S, 1, H, W)`, 1 = fluid.
pub fn project_divergence_free(
    velocity: ArrayView4<f32>,
    mask: ArrayView4<f32>,
    voxel: &VoxelSize,
    config: &ProjectionConfig,
) -> Result<Projection> {
    let flow = Flow::new(velocity, mask)?;
    let dims = flow.dims();
    let stencil = Stencil::new(dims, voxel)?;
    let fluid = flow.fluid();
    let n = dims.voxels();
    let masked = flow.masked();

    let mut b = vec![0.0; n];
    stencil.divergence(refs(&masked), fluid, &mut b);
    let b_norm = dot(&b, &b).sqrt();
    let mut lambda = vec![0.0; n];
    let mut grad = [0, 1, 2].map(|_| vec![0.0; n]);
    let mut iterations = 0;
    if b_norm > 0.0 {
        let inv_diag: Vec<f64> = stencil
            .normal_diagonal(fluid)
            .into_iter()
            .map(|d| if d > 0.0 { 1.0 / d } else { 0.0 })
            .collect();
        let mut r = b;
        let mut z: Vec<f64> = r.iter().zip(&inv_diag).map(|(r, d)| r * d).collect();
        let mut p = z.clone();
        let mut ap = vec![0.0; n];
        let mut rz = dot(&r, &z);
        loop {
            let relative = dot(&r, &r).sqrt() / b_norm;
            if relative <= config.rel_tol {
                break;
            }
            let p_ap = if iterations < config.max_iterations {
                stencil.adjoint(&p, fluid, &mut grad);
                stencil.divergence(refs(&grad), fluid, &mut ap);
                dot(&p, &ap)
            } else {
                0.0
            };
            // p·Ap ≤ 0 only at the iteration limit or when rounding has stalled the solve.
            if p_ap <= 0.0 {
                return Err(EvalError::NotConverged {
                    iterations,
                    relative_residual: relative,
                    tolerance: config.rel_tol,
                });
            }
            let alpha = rz / p_ap;
            axpy(alpha, &p, &mut lambda);
            axpy(-alpha, &ap, &mut r);
            z.par_iter_mut()
                .zip(&r)
                .zip(&inv_diag)
                .for_each(|((z, r), d)| *z = r * d);
            let rz_next = dot(&r, &z);
            let beta = rz_next / rz;
            rz = rz_next;
            p.par_iter_mut()
                .zip(&z)
                .for_each(|(p, z)| *p = z + beta * *p);
            iterations += 1;
        }
    }

    stencil.adjoint(&lambda, fluid, &mut grad);
    let projected: [Vec<f64>; 3] =
        std::array::from_fn(|c| masked[c].iter().zip(&grad[c]).map(|(u, g)| u - g).collect());
    let mut residual = vec![0.0; n];
    stencil.divergence(refs(&projected), fluid, &mut residual);
    let relative_residual = if b_norm > 0.0 {
        dot(&residual, &residual).sqrt() / b_norm
    } else {
        0.0
    };
    let (h, w) = (dims.height, dims.width);
    let velocity = Array4::from_shape_fn((dims.slices, 3, h, w), |(s, c, y, x)| {
        projected[c][(s * h + y) * w + x] as f32
    });
    Ok(Projection {
        velocity,
        iterations,
        relative_residual,
    })
}

fn refs(u: &[Vec<f64>; 3]) -> [&[f64]; 3] {
    [&u[0], &u[1], &u[2]]
}

/// Fixed-size chunks summed in order: parallel, yet the same result on every run.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    const CHUNK: usize = 4096;
    let partial: Vec<f64> = a
        .par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum())
        .collect();
    partial.iter().sum()
}

/// `y += a·x`.
fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    y.par_iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

#[cfg(test)]
mod tests {
    use std::f64::consts::PI;

    use ndarray::Array4;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::physics::{divergence, mean_speed};

    const SHAPE: (usize, usize, usize) = (4, 6, 8);
    const VOXEL: VoxelSize = VoxelSize {
        dx_m: 0.2e-6,
        dy_m: 0.2e-6,
        dz_m: 5e-6,
    };

    /// A random field of ~1e-3 m/s, nonzero in fibres too, and a mask with ~25 % fibre.
    fn random_case(seed: u64) -> (Array4<f32>, Array4<f32>) {
        let (s, h, w) = SHAPE;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let u = Array4::from_shape_fn((s, 3, h, w), |_| rng.random_range(-1e-3..1e-3f32));
        let mask =
            Array4::from_shape_fn((s, 1, h, w), |_| f32::from(u8::from(rng.random_bool(0.75))));
        (u, mask)
    }

    fn project(u: &Array4<f32>, mask: &Array4<f32>) -> Projection {
        project_divergence_free(u.view(), mask.view(), &VOXEL, &ProjectionConfig::default())
            .unwrap()
    }

    fn sq_dist(a: &Array4<f32>, b: &Array4<f32>) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum()
    }

    fn max_abs_diff(a: &Array4<f32>, b: &Array4<f32>) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn result_is_divergence_free_in_fluid_and_zero_in_fibres() {
        let (u, mask) = random_case(1);
        let p = project(&u, &mask);
        assert!(p.iterations > 0 && p.relative_residual <= 1e-7, "{p:?}");
        let flow = Flow::new(p.velocity.view(), mask.view()).unwrap();
        let scale = mean_speed(&flow) / VOXEL.dx_m;
        let div = divergence(&flow, &VOXEL).unwrap();
        let worst = div.iter().fold(0.0f64, |m, d| m.max(d.abs()));
        assert!(
            worst < 1e-5 * scale,
            "max |div| {worst:.3e} vs scale {scale:.3e}"
        );
        for ((s, c, y, x), &v) in p.velocity.indexed_iter() {
            if mask[[s, 0, y, x]] == 0.0 {
                assert_eq!(v, 0.0, "fibre voxel ({s},{c},{y},{x})");
            }
        }
        // The input itself was far from divergence-free.
        let input = divergence(&Flow::new(u.view(), mask.view()).unwrap(), &VOXEL).unwrap();
        assert!(input.iter().fold(0.0f64, |m, d| m.max(d.abs())) > 0.1 * scale);
    }

    #[test]
    fn projection_is_idempotent() {
        let (u, mask) = random_case(2);
        let once = project(&u, &mask).velocity;
        let twice = project(&once, &mask).velocity;
        let size = once.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
        assert!(max_abs_diff(&once, &twice) < 1e-5 * size);
    }

    /// Orthogonality u − P u ⟂ w and a larger distance from u for P u + εw, for w any
    /// admissible (divergence-free, zero in fibres) direction: P u is the closest point.
    #[test]
    fn projection_is_the_least_squares_closest_field() {
        let (u, mask) = random_case(3);
        let pu = project(&u, &mask).velocity;
        let (other, _) = random_case(4);
        let w = project(&other, &mask).velocity;
        let residual = &u - &pu;
        let inner: f64 = residual
            .iter()
            .zip(&w)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        let norms =
            sq_dist(&u, &pu).sqrt() * w.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        assert!(inner.abs() < 1e-5 * norms, "{inner:.3e} vs {norms:.3e}");
        let best = sq_dist(&u, &pu);
        for eps in [-0.1f32, -1e-3, 1e-3, 0.1] {
            let moved = &pu + &w.mapv(|v| eps * v);
            assert!(sq_dist(&u, &moved) > best, "eps {eps}");
        }
    }

    /// Flow along a channel (fibre walls along x and z): vx = f(y, z), vz = g(x, y) is
    /// exactly divergence-free, so nothing changes and no iteration runs.
    #[test]
    fn divergence_free_field_is_unchanged() {
        let (s, h, w) = SHAPE;
        let mask = Array4::from_shape_fn((s, 1, h, w), |(_, _, y, _)| f32::from(u8::from(y != 0)));
        let u = Array4::from_shape_fn((s, 3, h, w), |(z, c, y, x)| {
            let v = match c {
                0 => (y * (h - y) + z) as f32 * 1e-4,
                2 => ((x * y) as f32).sin() * 1e-4,
                _ => 0.0,
            };
            v * mask[[z, 0, y, x]]
        });
        let p = project(&u, &mask);
        assert_eq!(p.iterations, 0);
        assert_eq!(p.velocity, u);

        // All fluid, u = (∂ψ/∂y, −∂ψ/∂x, 0) with central differences: D u = 0 up to the
        // f32 rounding of u.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let psi = Array4::from_shape_fn((s, 1, h, w), |_| rng.random_range(-1.0..1.0f64));
        let fluid = Array4::ones((s, 1, h, w));
        let u = Array4::from_shape_fn((s, 3, h, w), |(z, c, y, x)| {
            let at = |y: usize, x: usize| psi[[z, 0, y % h, x % w]];
            let v = match c {
                0 => (at(y + 1, x) - at(y + h - 1, x)) / (2.0 * VOXEL.dy_m),
                1 => -(at(y, x + 1) - at(y, x + w - 1)) / (2.0 * VOXEL.dx_m),
                _ => 0.0,
            };
            (v * 1e-10) as f32
        });
        let p = project(&u, &fluid);
        let size = u.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
        assert!(max_abs_diff(&p.velocity, &u) < 1e-5 * size);
    }

    /// vx = a·sin(2πx/Lx) + c (all fluid) projects to its mean c: the sine is a discrete
    /// gradient (in the range of Dᵀ), the constant lies in the null space of D.
    #[test]
    fn gradient_field_projects_to_its_mean() {
        let (s, h, w) = SHAPE;
        let (a, c) = (1e-3, 2e-4);
        let u = Array4::from_shape_fn((s, 3, h, w), |(_, comp, _, x)| {
            if comp == 0 {
                (a * (2.0 * PI * x as f64 / w as f64).sin() + c) as f32
            } else {
                0.0
            }
        });
        let p = project(&u, &Array4::ones((s, 1, h, w)));
        let want = Array4::from_shape_fn(
            (s, 3, h, w),
            |(_, comp, _, _)| {
                if comp == 0 { c as f32 } else { 0.0 }
            },
        );
        assert!(max_abs_diff(&p.velocity, &want) < 1e-6 * a);
    }

    #[test]
    fn errors_are_reported() {
        let (u, mask) = random_case(6);
        let tight = ProjectionConfig::new(1e-12, 1).unwrap();
        assert!(matches!(
            project_divergence_free(u.view(), mask.view(), &VOXEL, &tight),
            Err(EvalError::NotConverged { iterations: 1, .. })
        ));
        assert!(ProjectionConfig::new(0.0, 10).is_err());
        assert!(ProjectionConfig::new(1.0, 10).is_err());
        assert!(ProjectionConfig::new(f64::NAN, 10).is_err());
        assert!(ProjectionConfig::new(1e-6, 0).is_err());
        let bad = VoxelSize {
            dz_m: -1.0,
            ..VOXEL
        };
        assert!(matches!(
            project_divergence_free(u.view(), mask.view(), &bad, &ProjectionConfig::default()),
            Err(EvalError::Parameter { .. })
        ));
    }
}
