//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
//! Diffusion Probabilistic Models", Algorithm 2): a second-order multistep solver of the
//! probability-flow ODE in data-prediction form, exact in the linear part. With
//! α = √ᾱ, σ = √(1 − ᾱ), λ = ln(α/σ) and h = λ_{t'} − λ_t, one step is
//! x_{t'} = (σ_{t'}/σ_t) x_t + α_{t'} (1 − e^{−h}) D, where D = x̂0_t on the first step
//! (first order, i.e. DDIM) and D = (1 + 1/2r) x̂0_t − (1/2r) x̂0_{prev} after it, with
//! r = h_prev/h. The last step goes to ᾱ = 1 (λ = ∞), where only the first-order update is
//! defined and returns x̂0: Lu et al.'s lower-order final step. Works with any
//! parameterisation, since x̂0 is derived from the network output.

use super::scheduler::check_step;
use super::{NoiseSchedule, Scheduler};
use crate::error::ModelError;
use burn::prelude::*;
use rand_chacha::ChaCha8Rng;

/// The DPM-Solver++(2M) sampler; built by [`SamplerConfig::init`](super::SamplerConfig::init).
pub(super) struct DpmSolver {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    /// The step index and x̂0 of the previous step, the multistep history.
    previous: Option<(usize, Tensor<5>)>,
}

impl DpmSolver {
    /// `timesteps` are distinct, decreasing and below T.
    pub(super) fn new(schedule: NoiseSchedule, timesteps: Vec<usize>) -> Self {
        Self {
            schedule,
            timesteps,
            previous: None,
        }
    }

    /// λ = ln(α/σ), half the log signal-to-noise ratio, at timestep `t`.
    fn lambda(&self, t: usize) -> f64 {
        let ab = self.schedule.alphas_cumprod()[t];
        0.5 * (ab / (1.0 - ab)).ln()
    }
}

impl Scheduler for DpmSolver {
    fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: Tensor<5>,
        step_index: usize,
        sample: Tensor<5>,
        _rng: &mut ChaCha8Rng,
    ) -> Result<Tensor<5>, ModelError> {
        check_step(&self.timesteps, step_index, &model_output, &sample)?;
        let previous = match self.previous.take() {
            _ if step_index == 0 => None,
            Some((j, x0)) if j + 1 == step_index => Some(x0),
            _ => {
                return Err(ModelError::Input(format!(
                    "DPM-Solver++ step {step_index} does not follow the previous step; steps must run in order from 0"
                )));
            }
        };
        let t = self.timesteps[step_index];
        let x0 = self.schedule.clip(self.schedule.x0_from(
            model_output,
            sample.clone(),
            &vec![t; sample.dims()[0]],
        )?);
        let Some(&next) = self.timesteps.get(step_index + 1) else {
            return Ok(x0);
        };
        let ab = self.schedule.alphas_cumprod();
        let (lambda_t, lambda_next) = (self.lambda(t), self.lambda(next));
        let h = lambda_next - lambda_t;
        let d = match previous {
            Some(x0_prev) => {
                let r = (lambda_t - self.lambda(self.timesteps[step_index - 1])) / h;
                x0.clone().mul_scalar(1.0 + 0.5 / r) - x0_prev.mul_scalar(0.5 / r)
            }
            None => x0.clone(),
        };
        self.previous = Some((step_index, x0));
        let sigma_ratio = ((1.0 - ab[next]) / (1.0 - ab[t])).sqrt();
        Ok(sample.mul_scalar(sigma_ratio) + d.mul_scalar(ab[next].sqrt() * -(-h).exp_m1()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{close, normal, values};
    use super::super::{DiffusionConfig, seeded_rng};
    use super::*;

    /// The first step is first order, which in data-prediction form is DDIM (η = 0):
    /// √ᾱ' x̂0 + √(1 − ᾱ') ε̂ with ε̂ = (x_t − √ᾱ x̂0)/√(1 − ᾱ).
    #[test]
    fn the_first_step_is_ddim() {
        let s = DiffusionConfig::new().with_clip_x0(None).init().unwrap();
        let mut solver = DpmSolver::new(s.clone(), vec![800, 300, 0]);
        let (x, out) = (normal([1, 2, 1, 2, 2], 1), normal([1, 2, 1, 2, 2], 2));
        let got = solver
            .step(out.clone(), 0, x.clone(), &mut seeded_rng(0))
            .unwrap();
        let ab = s.alphas_cumprod();
        let (x, eps) = (values(x), values(out));
        let want: Vec<f32> = x
            .iter()
            .zip(&eps)
            .map(|(&x, &e)| {
                let x0 = (x as f64 - (1.0 - ab[800]).sqrt() * e as f64) / ab[800].sqrt();
                (ab[300].sqrt() * x0 + (1.0 - ab[300]).sqrt() * e as f64) as f32
            })
            .collect();
        close(&values(got), &want, 1e-5);
    }

    #[test]
    fn steps_out_of_order_are_refused() {
        let s = DiffusionConfig::new().init().unwrap();
        let mut solver = DpmSolver::new(s, vec![800, 300, 0]);
        let (x, mut rng) = (normal([1, 1, 1, 2, 2], 1), seeded_rng(0));
        let e = solver.step(x.clone(), 1, x.clone(), &mut rng).unwrap_err();
        assert!(e.to_string().contains("in order from 0"), "{e}");
        solver.step(x.clone(), 0, x.clone(), &mut rng).unwrap();
        assert!(solver.step(x.clone(), 2, x.clone(), &mut rng).is_err());
        // Starting again at 0 clears the history.
        solver.step(x.clone(), 0, x.clone(), &mut rng).unwrap();
        solver.step(x.clone(), 1, x.clone(), &mut rng).unwrap();
    }
}
