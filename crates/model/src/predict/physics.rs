//! The physics residual that guides sampling: mean squared divergence of the decoded flow
//! in the fluid (periodic central differences with the true dx, dy and slice pitch dz —
//! the discretisation of `fiberflow_eval::physics`) relative to (mean |u| / dx)², plus the
//! mean squared velocity in fibres relative to the mean squared velocity in the fluid.
//! Both are dimensionless and zero for an exact Stokes solution (up to discretisation).

use burn::prelude::*;

/// `x` shifted by one cell along `dim`, periodically: element i holds x[i + shift].
fn roll(x: Tensor<5>, dim: usize, shift: isize) -> Tensor<5> {
    let n = x.dims()[dim];
    let k = shift.rem_euclid(n as isize) as usize;
    if k == 0 {
        return x;
    }
    Tensor::cat(
        vec![x.clone().narrow(dim, k, n - k), x.narrow(dim, 0, k)],
        dim,
    )
}

/// ∂x/∂(axis `dim`) by periodic central differences of spacing `h`.
fn central(x: Tensor<5>, dim: usize, h: f64) -> Tensor<5> {
    (roll(x.clone(), dim, 1) - roll(x, dim, -1)).div_scalar(2.0 * h)
}

/// ∇·u of `(B, 3, S, H, W)` velocities with spacing `[dx, dy, dz]`, `(B, 1, S, H, W)`.
pub fn divergence(u: Tensor<5>, dxyz: [f64; 3]) -> Tensor<5> {
    let c = |i: usize| u.clone().narrow(1, i, 1);
    central(c(0), 4, dxyz[0]) + central(c(1), 3, dxyz[1]) + central(c(2), 2, dxyz[2])
}

/// The guidance residual of raw (unmasked) decoded velocities `u` in m/s under the fluid
/// `mask` `(B, 1, S, H, W)`.
pub fn residual(u: Tensor<5>, mask: Tensor<5>, dxyz: [f64; 3]) -> Tensor<1> {
    let fluid = mask.clone().sum().clamp_min(1.0);
    let solid = mask.ones_like() - mask.clone();
    let fibre_cells = solid.clone().sum().clamp_min(1.0);
    let speed2 = u.clone().square().sum_dim(1);
    let fluid_speed2 = (speed2.clone() * mask.clone()).sum() / fluid.clone();
    let mean_speed = (speed2.clone().sqrt() * mask.clone()).sum() / fluid.clone();
    let div = divergence(u * mask.clone(), dxyz);
    let div_term = (div.square() * mask).sum()
        / fluid
        / (mean_speed
            .detach()
            .div_scalar(dxyz[0])
            .square()
            .add_scalar(1e-30));
    let fibre_term = (speed2 * solid).sum() / fibre_cells / fluid_speed2.detach().add_scalar(1e-30);
    div_term + fibre_term
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn divergence_of_a_sine_matches_the_central_difference_formula() {
        // vx = sin(2π x / W): ∂/∂x by central differences = cos(kx)·sin(k dx)/dx.
        let (w, dx) = (8usize, 0.5);
        let k = 2.0 * std::f64::consts::PI / (w as f64 * dx);
        let mut v = vec![0f32; 3 * w];
        for (x, vx) in v[..w].iter_mut().enumerate() {
            *vx = (k * x as f64 * dx).sin() as f32;
        }
        let u = Tensor::<5>::from_data(TensorData::new(v, [1, 3, 1, 1, w]), &Device::flex());
        let d: Vec<f32> = divergence(u, [dx, 1.0, 1.0])
            .into_data()
            .try_into_vec()
            .unwrap();
        for (x, got) in d.iter().enumerate() {
            let want = (k * x as f64 * dx).cos() * (k * dx).sin() / dx;
            assert!(
                (f64::from(*got) - want).abs() < 1e-5,
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn the_residual_is_zero_for_a_uniform_flow_and_counts_fibre_velocity() {
        let dev = Device::flex();
        let u = Tensor::<5>::ones([1, 3, 2, 4, 4], &dev);
        let fluid = Tensor::<5>::ones([1, 1, 2, 4, 4], &dev);
        let r = residual(u.clone(), fluid, [1.0, 1.0, 5.0]).into_scalar::<f32>();
        assert!(r.abs() < 1e-6, "{r}");
        // Half the cells are fibre: the flow there is as strong as in the fluid (term 1),
        // and the masked field has divergence at the fibre faces (positive term).
        let mut m = vec![1f32; 32];
        m[..16].fill(0.0);
        let mask = Tensor::<5>::from_data(TensorData::new(m, [1, 1, 2, 4, 4]), &dev);
        let r = residual(u, mask, [1.0, 1.0, 5.0]).into_scalar::<f32>();
        assert!(r >= 1.0 - 1e-6, "{r}");
    }
}
