//! Physical consistency of a velocity field: mass conservation (divergence, flow rate
//! along the flow), no-slip (velocity inside fibres) and Darcy permeability.
//!
//! These replace the reference's physics metrics, which use index units (unit spacing in
//! every axis, ignoring dz/dx ≈ 25.6 of its data). Here derivatives use the true voxel
//! size, and fibres hold zero velocity (no-slip, the mask `M`) in every quantity except
//! [`fibre_rms`], which measures exactly what `M` removes.

use fiberflow_geometry::layout::VoxelSize;
use ndarray::Array3;

use crate::error::{EvalError, Result, positive};
use crate::input::Flow;
use crate::reference::norm;
use crate::stencil::Stencil;

/// Discrete divergence `D(M u)` (central differences, periodic, true spacing; the operator
/// the projection zeroes) at every fluid voxel, 0 in fibres; `(S, H, W)`, 1/s.
pub fn divergence(flow: &Flow, voxel: &VoxelSize) -> Result<Array3<f64>> {
    let d = flow.dims();
    let flat = divergence_flat(flow, voxel)?;
    Ok(Array3::from_shape_vec((d.slices, d.height, d.width), flat).expect("one value per voxel"))
}

/// Mean |∇·u| over fluid voxels, 1/s. Compare with `mean_speed / dx`, the size of one
/// velocity gradient over a pixel.
pub fn mean_abs_divergence(flow: &Flow, voxel: &VoxelSize) -> Result<f64> {
    let div = divergence_flat(flow, voxel)?;
    let sum: f64 = div
        .iter()
        .zip(flow.fluid())
        .filter(|&(_, &f)| f)
        .map(|(d, _)| d.abs())
        .sum();
    Ok(sum / flow.n_fluid() as f64)
}

pub(crate) fn divergence_flat(flow: &Flow, voxel: &VoxelSize) -> Result<Vec<f64>> {
    let stencil = Stencil::new(flow.dims(), voxel)?;
    let u = flow.masked();
    let mut div = vec![0.0; flow.dims().voxels()];
    stencil.divergence([&u[0], &u[1], &u[2]], flow.fluid(), &mut div);
    Ok(div)
}

/// Mean speed |u| over fluid voxels, m/s.
pub fn mean_speed(flow: &Flow) -> f64 {
    let sum: f64 = (0..flow.fluid().len())
        .filter(|&i| flow.fluid()[i])
        .map(|i| norm(flow.at(i)))
        .sum();
    sum / flow.n_fluid() as f64
}

/// Root-mean-square speed over fibre voxels, m/s: the no-slip violation of an unmasked
/// prediction. 0 when there is no fibre voxel (nothing can violate no-slip).
pub fn fibre_rms(flow: &Flow) -> f64 {
    let n_fibre = flow.fluid().len() - flow.n_fluid();
    if n_fibre == 0 {
        return 0.0;
    }
    let sum: f64 = (0..flow.fluid().len())
        .filter(|&i| !flow.fluid()[i])
        .map(|i| {
            let u = flow.at(i);
            u[0] * u[0] + u[1] * u[1] + u[2] * u[2]
        })
        .sum();
    (sum / n_fibre as f64).sqrt()
}

/// Flow rate through each x column: Q(x) = Σ over slices and rows of vx (fibres 0), in
/// m/s summed over `S·H` voxels (multiply by dy·dz for m³/s). Incompressible flow has the
/// same Q at every x.
pub fn flow_rate_x(flow: &Flow) -> Vec<f64> {
    let w = flow.dims().width;
    let mut q = vec![0.0; w];
    for (i, (&vx, &f)) in flow.component(0).iter().zip(flow.fluid()).enumerate() {
        if f {
            q[i % w] += vx;
        }
    }
    q
}

/// Population std of `q` over |mean_flux|. Pass the mean of `q` itself for the usual
/// coefficient of variation, or the true field's mean flux to score a prediction against
/// the true flow rate (finite even for a prediction with no net flow).
pub fn flow_rate_cv(q: &[f64], mean_flux: f64) -> Result<f64> {
    if q.is_empty() {
        return Err(EvalError::Parameter {
            name: "flow rate columns",
            value: 0.0,
            reason: "need at least one column",
        });
    }
    if !(mean_flux.is_finite() && mean_flux != 0.0) {
        return Err(EvalError::DegenerateTruth {
            metric: "flow-rate coefficient of variation",
            reason: "the mean flux is zero",
        });
    }
    let n = q.len() as f64;
    let mean = q.iter().sum::<f64>() / n;
    let var = q.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    Ok(var.sqrt() / mean_flux.abs())
}

/// Mean of `q`.
pub(crate) fn mean(q: &[f64]) -> f64 {
    q.iter().sum::<f64>() / q.len() as f64
}

/// Darcy permeability along x, K = μ⟨vx⟩/G in m², with ⟨⟩ the mean over the whole volume
/// (fibres count as 0: the superficial velocity), μ in Pa·s and G the driving pressure
/// gradient in Pa/m.
pub fn permeability(flow: &Flow, viscosity_pa_s: f64, gradient_pa_per_m: f64) -> Result<f64> {
    let mu = positive("viscosity_pa_s", viscosity_pa_s)?;
    let g = positive("pressure_gradient_pa_per_m", gradient_pa_per_m)?;
    let sum: f64 = flow
        .component(0)
        .iter()
        .zip(flow.fluid())
        .filter(|&(_, &f)| f)
        .map(|(v, _)| v)
        .sum();
    Ok(mu * sum / flow.dims().voxels() as f64 / g)
}

#[cfg(test)]
mod tests {
    use std::f64::consts::PI;

    use ndarray::Array4;

    use super::*;

    const VOXEL: VoxelSize = VoxelSize {
        dx_m: 0.2e-6,
        dy_m: 0.25e-6,
        dz_m: 5e-6,
    };

    fn flow(u: &Array4<f32>, mask: &Array4<f32>) -> Flow {
        Flow::new(u.view(), mask.view()).unwrap()
    }

    fn all_fluid(s: usize, h: usize, w: usize) -> Array4<f32> {
        Array4::ones([s, 1, h, w])
    }

    /// vx = sin(2πy/H) varies only across the flow: divergence-free.
    #[test]
    fn shear_flow_has_no_divergence() {
        let (s, h, w) = (3, 8, 6);
        let u = Array4::from_shape_fn([s, 3, h, w], |(_, c, y, _)| {
            if c == 0 {
                (2.0 * PI * y as f64 / h as f64).sin() as f32
            } else {
                0.0
            }
        });
        let f = flow(&u, &all_fluid(s, h, w));
        assert_eq!(mean_abs_divergence(&f, &VOXEL).unwrap(), 0.0);
    }

    /// vx = sin(2πx/Lx) and vz = sin(2πz/Lz): the central difference of sin(kx) is
    /// cos(kx)·sin(k d)/d, with d the true spacing of that axis.
    #[test]
    fn divergence_of_sines_is_the_central_difference_derivative() {
        let (s, h, w) = (5, 3, 8);
        let (kx, kz) = (
            2.0 * PI / (w as f64 * VOXEL.dx_m),
            2.0 * PI / (s as f64 * VOXEL.dz_m),
        );
        let (a, b) = (1e-3, 4e-4);
        let u = Array4::from_shape_fn([s, 3, h, w], |(z, c, _, x)| match c {
            0 => (a * (kx * x as f64 * VOXEL.dx_m).sin()) as f32,
            2 => (b * (kz * z as f64 * VOXEL.dz_m).sin()) as f32,
            _ => 0.0,
        });
        let div = divergence(&flow(&u, &all_fluid(s, h, w)), &VOXEL).unwrap();
        let (gx, gz) = (
            (kx * VOXEL.dx_m).sin() / VOXEL.dx_m,
            (kz * VOXEL.dz_m).sin() / VOXEL.dz_m,
        );
        let scale = a * gx;
        for ((z, y, x), &d) in div.indexed_iter() {
            let want = a * gx * (kx * x as f64 * VOXEL.dx_m).cos()
                + b * gz * (kz * z as f64 * VOXEL.dz_m).cos();
            assert!(
                (d - want).abs() < 1e-6 * scale,
                "({z},{y},{x}): {d} vs {want}"
            );
        }
    }

    /// In fibres the divergence is 0, and fibre velocities do not enter it (no-slip).
    #[test]
    fn fibres_are_no_slip_walls() {
        let (s, h, w) = (1, 1, 4);
        let u = Array4::from_shape_vec([s, 3, h, w], {
            let mut v = vec![0.0f32; 12];
            v[..4].copy_from_slice(&[1.0, 2.0, 50.0, 4.0]);
            v
        })
        .unwrap();
        let mask = Array4::from_shape_vec([s, 1, h, w], vec![1.0, 1.0, 0.0, 1.0]).unwrap();
        let div = divergence(
            &flow(&u, &mask),
            &VoxelSize {
                dx_m: 1.0,
                dy_m: 1.0,
                dz_m: 1.0,
            },
        )
        .unwrap();
        // Masked vx = [1, 2, 0, 4], periodic: x=0: (2−4)/2, x=1: (0−1)/2, x=3: (1−0)/2.
        assert_eq!(
            div.iter().copied().collect::<Vec<_>>(),
            [-1.0, -0.5, 0.0, 0.5]
        );
    }

    #[test]
    fn speeds_flow_rates_and_fibre_rms_by_hand() {
        // One slice, 2 rows × 2 columns; fibre at (y=1, x=1).
        let u = Array4::from_shape_vec(
            [1, 3, 2, 2],
            vec![
                3.0, 1.0, 2.0, 6.0, // vx
                4.0, 0.0, 0.0, 0.0, // vy
                0.0, 0.0, 0.0, 8.0, // vz
            ],
        )
        .unwrap();
        let mask = Array4::from_shape_vec([1, 1, 2, 2], vec![1.0, 1.0, 1.0, 0.0]).unwrap();
        let f = flow(&u, &mask);
        assert_eq!(mean_speed(&f), (5.0 + 1.0 + 2.0) / 3.0);
        assert_eq!(fibre_rms(&f), 10.0);
        assert_eq!(flow_rate_x(&f), [5.0, 1.0]);
        // Q = [5, 1]: mean 3, population std 2.
        assert_eq!(flow_rate_cv(&[5.0, 1.0], 3.0).unwrap(), 2.0 / 3.0);
        assert_eq!(flow_rate_cv(&[5.0, 1.0], -4.0).unwrap(), 0.5);
        assert!(flow_rate_cv(&[5.0, 1.0], 0.0).is_err());
        assert!(flow_rate_cv(&[], 1.0).is_err());
        assert_eq!(fibre_rms(&flow(&u, &Array4::ones([1, 1, 2, 2]))), 0.0);
    }

    /// Q(x) is the same at every x when vx depends on y and z only, whatever the profile.
    #[test]
    fn x_independent_flux_has_zero_cv() {
        let (s, h, w) = (3, 5, 7);
        let u = Array4::from_shape_fn([s, 3, h, w], |(z, c, y, _)| {
            [(1 + y * z) as f32, y as f32 - 2.0, z as f32][c]
        });
        let mask = Array4::from_shape_fn([s, 1, h, w], |(z, _, y, _)| f32::from(u8::from(y != z)));
        let q = flow_rate_x(&flow(&u, &mask));
        assert_eq!(flow_rate_cv(&q, mean(&q)).unwrap(), 0.0);
    }

    /// Uniform vx = U in the fluid: K = μ·U·φ/G with φ the fluid fraction.
    #[test]
    fn permeability_of_a_uniform_field() {
        let (s, h, w) = (2, 4, 5);
        let u = Array4::from_shape_fn([s, 3, h, w], |(_, c, _, _)| [2e-3, 0.0, 0.0][c]);
        // 3 fibre voxels out of 40: φ = 37/40.
        let mut mask = all_fluid(s, h, w);
        for (z, y, x) in [(0, 0, 0), (1, 2, 3), (1, 3, 4)] {
            mask[[z, 0, y, x]] = 0.0;
        }
        let k = permeability(&flow(&u, &mask), 0.1, 1e6).unwrap();
        let want = 0.1 * f64::from(2e-3f32) * 37.0 / 40.0 / 1e6;
        assert!((k - want).abs() < 1e-14 * want, "{k} vs {want}");
        assert!(permeability(&flow(&u, &mask), -0.1, 1e6).is_err());
        assert!(permeability(&flow(&u, &mask), 0.1, f64::INFINITY).is_err());
    }
}
