//! What the denoiser predicts, and the conversions between its output, x0 and ε. With
//! α = √ᾱ_t and σ = √(1 − ᾱ_t), the forward process is x_t = α x0 + σ ε (Ho et al. 2020,
//! eq. 4) and the velocity is v = α ε − σ x0 (Salimans & Ho 2022, "Progressive
//! Distillation for Fast Sampling of Diffusion Models", §4), so that x0 = α x_t − σ v and
//! ε = σ x_t + α v. Every function takes one timestep per sample, broadcast over
//! `(C, S, H, W)`.

use super::NoiseSchedule;
use crate::error::ModelError;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// The denoiser's output parameterisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise ε (Ho et al. 2020; the reference).
    Epsilon,
    /// The velocity v = √ᾱ ε − √(1 − ᾱ) x0 (Salimans & Ho 2022): its scale does not blow
    /// up as ᾱ → 0, where x̂0 from an ε-model amplifies errors by 1/√ᾱ.
    V,
}

impl NoiseSchedule {
    /// x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε, sample b at timestep `t[b]`.
    pub fn add_noise(
        &self,
        x0: Tensor<5>,
        noise: Tensor<5>,
        t: &[usize],
    ) -> Result<Tensor<5>, ModelError> {
        self.check("add_noise", &x0, &noise, t)?;
        let (a, s) = self.coefficients(t, &x0);
        Ok(x0 * a + noise * s)
    }

    /// What the network is trained to output for (x0, ε, t): ε itself, or v.
    pub fn target(
        &self,
        x0: Tensor<5>,
        noise: Tensor<5>,
        t: &[usize],
    ) -> Result<Tensor<5>, ModelError> {
        self.check("target", &x0, &noise, t)?;
        Ok(match self.prediction() {
            Prediction::Epsilon => noise,
            Prediction::V => {
                let (a, s) = self.coefficients(t, &x0);
                noise * a - x0 * s
            }
        })
    }

    /// x̂0 from the network output at (x_t, t); not clamped.
    pub fn x0_from(
        &self,
        output: Tensor<5>,
        x_t: Tensor<5>,
        t: &[usize],
    ) -> Result<Tensor<5>, ModelError> {
        self.check("x0_from", &output, &x_t, t)?;
        let (a, s) = self.coefficients(t, &x_t);
        Ok(match self.prediction() {
            Prediction::Epsilon => (x_t - output * s) / a,
            Prediction::V => x_t * a - output * s,
        })
    }

    /// ε̂ from the network output at (x_t, t).
    pub fn eps_from(
        &self,
        output: Tensor<5>,
        x_t: Tensor<5>,
        t: &[usize],
    ) -> Result<Tensor<5>, ModelError> {
        self.check("eps_from", &output, &x_t, t)?;
        Ok(match self.prediction() {
            Prediction::Epsilon => output,
            Prediction::V => {
                let (a, s) = self.coefficients(t, &x_t);
                x_t * s + output * a
            }
        })
    }

    /// x̂0 clamped to ±`clip_x0`, as the samplers use it.
    pub fn clip(&self, x0: Tensor<5>) -> Tensor<5> {
        match self.clip_x0() {
            Some(c) => x0.clamp(-c, c),
            None => x0,
        }
    }

    /// (√ᾱ_t, √(1 − ᾱ_t)) per sample as `(B, 1, 1, 1, 1)` tensors on `like`'s device.
    fn coefficients(&self, t: &[usize], like: &Tensor<5>) -> (Tensor<5>, Tensor<5>) {
        let column = |f: &dyn Fn(f64) -> f64| {
            let v: Vec<f32> = t
                .iter()
                .map(|&t| f(self.alphas_cumprod()[t]) as f32)
                .collect();
            Tensor::from_data(TensorData::new(v, [t.len(), 1, 1, 1, 1]), &like.device())
        };
        (column(&|ab| ab.sqrt()), column(&|ab| (1.0 - ab).sqrt()))
    }

    fn check(
        &self,
        what: &str,
        a: &Tensor<5>,
        b: &Tensor<5>,
        t: &[usize],
    ) -> Result<(), ModelError> {
        same_shape(what, a, b)?;
        self.check_timesteps(t, a.dims()[0])
    }
}

/// Refuses two tensors of different shapes, which Burn would broadcast or reject with a panic.
pub(super) fn same_shape(what: &str, a: &Tensor<5>, b: &Tensor<5>) -> Result<(), ModelError> {
    if a.dims() == b.dims() {
        Ok(())
    } else {
        Err(ModelError::Input(format!(
            "{what}: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::DiffusionConfig;
    use super::super::testing::{close, normal, values};
    use super::*;

    fn schedule(p: Prediction) -> NoiseSchedule {
        DiffusionConfig::new().with_prediction(p).init().unwrap()
    }

    #[test]
    fn add_noise_uses_each_samples_own_timestep() {
        let s = schedule(Prediction::Epsilon);
        let (x0, eps) = (normal([2, 3, 2, 4, 4], 1), normal([2, 3, 2, 4, 4], 2));
        let t = [0, 499];
        let xt = values(s.add_noise(x0.clone(), eps.clone(), &t).unwrap());
        let (x0, eps) = (values(x0), values(eps));
        let per = 3 * 2 * 4 * 4;
        for (i, got) in xt.iter().enumerate() {
            let ab = [0.9999, s.alphas_cumprod()[499]][i / per];
            let want = ab.sqrt() * x0[i] as f64 + (1.0 - ab).sqrt() * eps[i] as f64;
            assert!((*got as f64 - want).abs() < 1e-6, "{i}: {got} vs {want}");
        }
    }

    #[test]
    fn the_true_prediction_recovers_x0_and_eps_at_any_t() {
        for p in [Prediction::Epsilon, Prediction::V] {
            let s = schedule(p);
            let (x0, eps) = (normal([4, 3, 2, 4, 4], 3), normal([4, 3, 2, 4, 4], 4));
            for t in [[0, 1, 2, 3], [250, 499, 750, 998], [999, 999, 0, 999]] {
                let xt = s.add_noise(x0.clone(), eps.clone(), &t).unwrap();
                let out = s.target(x0.clone(), eps.clone(), &t).unwrap();
                let x0_hat = s.x0_from(out.clone(), xt.clone(), &t).unwrap();
                let eps_hat = s.eps_from(out, xt, &t).unwrap();
                // ε-models divide by √ᾱ (≈ 6.4e-3 at t = 999), amplifying f32 rounding.
                let tol = if p == Prediction::Epsilon { 2e-4 } else { 2e-6 };
                close(&values(x0_hat), &values(x0.clone()), tol);
                close(&values(eps_hat), &values(eps.clone()), 2e-6);
            }
        }
    }

    #[test]
    fn v_target_is_the_velocity_of_a_hand_example() {
        let s = schedule(Prediction::V);
        let dev = Device::flex();
        let one = |x: f32| Tensor::<5>::from_data(TensorData::new(vec![x], [1, 1, 1, 1, 1]), &dev);
        // ᾱ_0 = 0.9999: v = √0.9999 · 2 − √0.0001 · 1 = 1.99990 − 0.01.
        let v = values(s.target(one(1.0), one(2.0), &[0]).unwrap())[0];
        assert!(
            (v as f64 - (2.0 * 0.9999f64.sqrt() - 0.01)).abs() < 1e-6,
            "{v}"
        );
        // ε-prediction trains on ε itself.
        let e = schedule(Prediction::Epsilon);
        assert_eq!(
            values(e.target(one(1.0), one(2.0), &[0]).unwrap()),
            vec![2.0]
        );
    }

    #[test]
    fn clipping_bounds_x0_only_when_configured() {
        let s = schedule(Prediction::Epsilon);
        let x = normal([1, 1, 1, 4, 4], 5).mul_scalar(100.0);
        assert!(values(s.clip(x.clone())).iter().all(|v| v.abs() <= 30.0));
        let open = DiffusionConfig::new().with_clip_x0(None).init().unwrap();
        assert_eq!(values(open.clip(x.clone())), values(x));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let s = schedule(Prediction::V);
        let (a, b) = (normal([2, 3, 2, 4, 4], 1), normal([2, 3, 2, 4, 2], 2));
        let e = s.add_noise(a.clone(), b, &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("add_noise") && e.contains("differ"), "{e}");
        assert!(s.x0_from(a.clone(), a.clone(), &[0]).is_err());
        assert!(s.eps_from(a.clone(), a.clone(), &[0, 1000]).is_err());
        assert!(s.target(a.clone(), a, &[0, 1, 2]).is_err());
    }
}
