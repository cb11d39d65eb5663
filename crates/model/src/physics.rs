//! Physics of a decoded flow as differentiable, dimensionless tensors, shared by the
//! sampling-time guidance, the optional training losses of the latent predictor and its
//! validation log. Derivatives are periodic differences with the true dx, dy and slice
//! pitch dz (the reference's physics losses used index spacing, ignoring dz/dx ≈ 6–26),
//! and each term is scaled by a detached norm of the flow so that its weight does not
//! depend on units or flow speed, and the network cannot lower it by shrinking the flow.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Keeps a detached normaliser away from zero.
const TINY: f64 = 1e-30;

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

/// Mean |u| over the fluid divided by dx, detached: the velocity-gradient scale that the
/// divergence and smoothness terms are measured against.
fn gradient_scale(u: &Tensor<5>, mask: &Tensor<5>, dx: f64) -> Tensor<1> {
    let speed = u.clone().square().sum_dim(1).sqrt();
    ((speed * mask.clone()).sum() / mask.clone().sum().clamp_min(1.0))
        .detach()
        .div_scalar(dx)
}

/// Mean of (∇·u)² over the fluid relative to (mean |u| / dx)², for raw velocities `u`
/// (m/s) masked to zero in fibres before differencing, as the evaluation does.
pub fn divergence_term(u: Tensor<5>, mask: Tensor<5>, dxyz: [f64; 3]) -> Tensor<1> {
    let scale = gradient_scale(&u, &mask, dxyz[0]);
    let div = divergence(u * mask.clone(), dxyz);
    (div.square() * mask.clone()).sum()
        / mask.sum().clamp_min(1.0)
        / scale.square().add_scalar(TINY)
}

/// Mean |u|² in fibres relative to the mean |u|² in the fluid: zero for no-slip solids.
pub fn fibre_term(u: Tensor<5>, mask: Tensor<5>) -> Tensor<1> {
    let solid = mask.ones_like() - mask.clone();
    let speed2 = u.square().sum_dim(1);
    let fluid_speed2 = ((speed2.clone() * mask.clone()).sum() / mask.sum().clamp_min(1.0)).detach();
    (speed2 * solid.clone()).sum() / solid.sum().clamp_min(1.0) / fluid_speed2.add_scalar(TINY)
}

/// Squared coefficient of variation along x of the flow rate Q(x) = Σ over slices and
/// rows of vx in the fluid, averaged over the batch: an incompressible flow has the same
/// Q through every x plane, so this is 0 for it (the reference's flow-rate loss, with the
/// mean flux detached).
pub fn flow_rate_term(u: Tensor<5>, mask: Tensor<5>) -> Tensor<1> {
    let [b, _, _, _, w] = u.dims();
    let q = (u.narrow(1, 0, 1) * mask)
        .sum_dim(2)
        .sum_dim(3)
        .reshape([b, w]);
    let mean = q.clone().mean_dim(1);
    let var = (q - mean.clone()).square().mean_dim(1);
    (var / mean.detach().square().add_scalar(TINY))
        .mean()
        .reshape([1])
}

/// Mean squared forward difference of every component along x, y and z (each over the
/// pairs of fluid cells, with its own spacing), summed over the axes, relative to
/// (mean |u| / dx)²: a regulariser against high-frequency decoder noise. Unlike the other
/// terms it is not zero for the true flow, which has steep gradients at fibre walls.
pub fn smoothness_term(u: Tensor<5>, mask: Tensor<5>, dxyz: [f64; 3]) -> Tensor<1> {
    let scale = gradient_scale(&u, &mask, dxyz[0]);
    let total = [(4, dxyz[0]), (3, dxyz[1]), (2, dxyz[2])]
        .into_iter()
        .map(|(dim, h)| {
            let pairs = mask.clone() * roll(mask.clone(), dim, 1);
            let d = (roll(u.clone(), dim, 1) - u.clone()).div_scalar(h);
            (d.square().sum_dim(1) * pairs.clone()).sum() / pairs.sum().clamp_min(1.0)
        })
        .reduce(|a, b| a + b)
        .expect("three axes");
    total / scale.square().add_scalar(TINY)
}

/// The guidance residual of raw (unmasked) decoded velocities `u` in m/s under the fluid
/// `mask` `(B, 1, S, H, W)`: divergence plus fibre velocity, both zero for an exact
/// Stokes solution (up to discretisation).
pub fn residual(u: Tensor<5>, mask: Tensor<5>, dxyz: [f64; 3]) -> Tensor<1> {
    divergence_term(u.clone(), mask.clone(), dxyz) + fibre_term(u, mask)
}

/// Weights of the optional physics losses on the decoded x̂0 (all 0 = off, the default,
/// as in the reference's final model). The reference's documented starting points were
/// 0.01 for divergence, 0.001 for flow rate and 1e-4 for smoothness, on its own
/// (index-unit) scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhysicsLossConfig {
    /// Weight of [`divergence_term`].
    pub divergence: f64,
    /// Weight of [`fibre_term`] (on the decoder's raw output, before masking).
    pub fibre_velocity: f64,
    /// Weight of [`flow_rate_term`].
    pub flow_rate: f64,
    /// Weight of [`smoothness_term`].
    pub smoothness: f64,
    /// Add the physics loss every this many optimiser steps (it decodes x̂0 and differentiates
    /// through the frozen decoder, which costs more than the denoiser step).
    pub every: usize,
}

impl Default for PhysicsLossConfig {
    fn default() -> Self {
        Self {
            divergence: 0.0,
            fibre_velocity: 0.0,
            flow_rate: 0.0,
            smoothness: 0.0,
            every: 1,
        }
    }
}

impl PhysicsLossConfig {
    fn weights(&self) -> [f64; 4] {
        [
            self.divergence,
            self.fibre_velocity,
            self.flow_rate,
            self.smoothness,
        ]
    }

    /// Whether any weight is non-zero.
    pub fn enabled(&self) -> bool {
        self.weights().iter().any(|&w| w != 0.0)
    }

    /// The reason the config is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.weights().iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return Some(format!(
                "physics loss weights must be numbers ≥ 0, got {:?}",
                self.weights()
            ));
        }
        (self.every == 0).then(|| "physics.every must be ≥ 1".to_string())
    }

    /// The weighted sum of the enabled terms of raw decoded velocities `u` (m/s).
    pub fn loss(&self, u: Tensor<5>, mask: Tensor<5>, dxyz: [f64; 3]) -> Tensor<1> {
        let mut total = Tensor::<1>::zeros([1], &u.device());
        let terms: [(f64, &dyn Fn() -> Tensor<1>); 4] = [
            (self.divergence, &|| {
                divergence_term(u.clone(), mask.clone(), dxyz)
            }),
            (self.fibre_velocity, &|| fibre_term(u.clone(), mask.clone())),
            (self.flow_rate, &|| flow_rate_term(u.clone(), mask.clone())),
            (self.smoothness, &|| {
                smoothness_term(u.clone(), mask.clone(), dxyz)
            }),
        ];
        for (weight, term) in terms {
            if weight != 0.0 {
                total = total + term().mul_scalar(weight);
            }
        }
        total
    }
}

/// The four terms of a decoded flow as numbers, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PhysicsMetrics {
    pub divergence: f64,
    pub fibre_velocity: f64,
    pub flow_rate: f64,
    pub smoothness: f64,
}

impl PhysicsMetrics {
    /// The terms of raw velocities `u` (m/s) under `mask`.
    pub fn measure(u: Tensor<5>, mask: Tensor<5>, dxyz: [f64; 3]) -> Self {
        let v = |t: Tensor<1>| t.into_scalar::<f64>();
        Self {
            divergence: v(divergence_term(u.clone(), mask.clone(), dxyz)),
            fibre_velocity: v(fibre_term(u.clone(), mask.clone())),
            flow_rate: v(flow_rate_term(u.clone(), mask.clone())),
            smoothness: v(smoothness_term(u, mask, dxyz)),
        }
    }

    /// The mean of several measurements (zeros for none).
    pub fn mean(all: &[Self]) -> Self {
        let n = all.len().max(1) as f64;
        let sum = |f: fn(&Self) -> f64| all.iter().map(f).sum::<f64>() / n;
        Self {
            divergence: sum(|m| m.divergence),
            fibre_velocity: sum(|m| m.fibre_velocity),
            flow_rate: sum(|m| m.flow_rate),
            smoothness: sum(|m| m.smoothness),
        }
    }
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

    fn field(v: Vec<f32>, shape: [usize; 5]) -> Tensor<5> {
        Tensor::from_data(TensorData::new(v, shape), &Device::flex())
    }

    fn close(got: Tensor<1>, want: f64) {
        let got = got.into_scalar::<f64>();
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }

    #[test]
    fn flow_rate_term_is_the_squared_cv_of_the_column_fluxes() {
        // Q = [5, 1]: mean 3, variance 4, CV² = 4/9; an x-independent flux gives 0.
        let mut v = vec![0f32; 3 * 2];
        v[..2].copy_from_slice(&[5.0, 1.0]);
        let ones = field(vec![1.0; 2], [1, 1, 1, 1, 2]);
        close(flow_rate_term(field(v, [1, 3, 1, 1, 2]), ones), 4.0 / 9.0);
        // Two rows whose vx varies along x in opposite ways: every column carries 4.
        let mut v = vec![0f32; 3 * 4];
        v[..4].copy_from_slice(&[1.0, 3.0, 3.0, 1.0]);
        let ones = field(vec![1.0; 4], [1, 1, 1, 2, 2]);
        close(flow_rate_term(field(v, [1, 3, 1, 2, 2]), ones), 0.0);
    }

    #[test]
    fn smoothness_counts_fluid_pairs_with_their_own_spacing() {
        // vx = [0, 1, 2, 3] along x, last cell fibre: the pairs (0,1), (1,2) have
        // difference 1/dx; mean |u| in the fluid is 1, so the term is 1.
        let dx = 0.5;
        let mut v = vec![0f32; 3 * 4];
        v[..4].copy_from_slice(&[0.0, 1.0, 2.0, 3.0]);
        let mask = field(vec![1.0, 1.0, 1.0, 0.0], [1, 1, 1, 1, 4]);
        close(
            smoothness_term(field(v, [1, 3, 1, 1, 4]), mask, [dx, dx, 1.0]),
            1.0,
        );
        // vx = [0, 1] over two slices dz apart: differences ±1/dz, mean |u| = 1/2, so
        // the term is (1/dz²) / (1/(2 dx))² = 4 dx²/dz².
        let (dx, dz) = (1.0, 5.0);
        let mut v = vec![0f32; 3 * 2];
        v[..2].copy_from_slice(&[0.0, 1.0]);
        let ones = field(vec![1.0; 2], [1, 1, 2, 1, 1]);
        let want = 4.0 * dx * dx / (dz * dz);
        close(
            smoothness_term(field(v, [1, 3, 2, 1, 1]), ones, [dx, dx, dz]),
            want,
        );
    }

    #[test]
    fn the_loss_sums_only_the_weighted_terms() {
        let u = field(
            (0..48).map(|i| (i as f32 * 0.37).sin()).collect(),
            [1, 3, 2, 2, 4],
        );
        let mut m = vec![1f32; 16];
        m[5] = 0.0;
        let mask = field(m, [1, 1, 2, 2, 4]);
        let dxyz = [1.0, 1.0, 3.0];
        let cfg = PhysicsLossConfig {
            divergence: 2.0,
            flow_rate: 0.5,
            ..PhysicsLossConfig::default()
        };
        assert!(cfg.enabled() && cfg.problem().is_none());
        let want = 2.0 * divergence_term(u.clone(), mask.clone(), dxyz).into_scalar::<f64>()
            + 0.5 * flow_rate_term(u.clone(), mask.clone()).into_scalar::<f64>();
        close(cfg.loss(u, mask, dxyz), want);
        assert!(!PhysicsLossConfig::default().enabled());
        let bad = PhysicsLossConfig {
            smoothness: -1.0,
            ..PhysicsLossConfig::default()
        };
        assert!(bad.problem().is_some());
        let never = PhysicsLossConfig {
            every: 0,
            ..PhysicsLossConfig::default()
        };
        assert!(never.problem().is_some());
    }
}
