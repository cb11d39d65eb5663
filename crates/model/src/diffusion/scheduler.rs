//! The sampler interface (after candle's stable-diffusion `Scheduler` trait: timesteps,
//! add_noise, step), the choice of sampler, and the generic reverse-process loop that
//! callers drive with their network.

use super::ddim::Ddim;
use super::ddpm::Ddpm;
use super::dpm_solver::DpmSolver;
use super::prediction::same_shape;
use super::{NoiseSchedule, TimestepSpacing};
use crate::error::ModelError;
use burn::prelude::*;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A reverse-process sampler over a fixed list of timesteps.
pub trait Scheduler {
    /// The schedule it samples.
    fn schedule(&self) -> &NoiseSchedule;

    /// Timesteps at which the network is evaluated, noisiest first.
    fn timesteps(&self) -> &[usize];

    /// One reverse step: from `sample` at `timesteps()[step_index]` (where the network gave
    /// `model_output`) to the next timestep, or to x0 after the last one. Stochastic
    /// samplers draw their noise from `rng`. Steps must be taken in order from 0.
    fn step(
        &mut self,
        model_output: Tensor<5>,
        step_index: usize,
        sample: Tensor<5>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor<5>, ModelError>;

    /// Noises `x0` to timestep `t` (all samples), e.g. to start sampling from a partly
    /// noised input.
    fn add_noise(
        &self,
        x0: Tensor<5>,
        noise: Tensor<5>,
        t: usize,
    ) -> Result<Tensor<5>, ModelError> {
        let t = vec![t; x0.dims()[0]];
        self.schedule().add_noise(x0, noise, &t)
    }

    /// Number of network evaluations one sampling run costs.
    fn nfe(&self) -> usize {
        self.timesteps().len()
    }
}

/// Which sampler to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Ancestral DDPM (Ho et al. 2020); with `steps` = T it is the reference's `predict()`.
    Ddpm,
    /// DDIM with stochasticity η (Song et al. 2021); the reference's `predict_ddim()`.
    Ddim,
    /// DPM-Solver++(2M) (Lu et al. 2022), for ≲ 20 steps.
    #[cfg_attr(feature = "clap", value(name = "dpmpp"))]
    DpmSolver,
}

/// A sampler and its step plan; defaults are the reference's evaluation (DDIM, 50 steps,
/// η = 0, torch linspace).
#[derive(Config, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Which sampler.
    #[config(default = "SamplerKind::Ddim")]
    pub kind: SamplerKind,
    /// Network evaluations, 1 ..= T.
    #[config(default = 50)]
    pub steps: usize,
    /// DDIM's η ∈ [0, 1]: 0 is deterministic, 1 has DDPM's posterior variance. Must be 0
    /// for the other samplers (DDPM is always η = 1; DPM-Solver++ is deterministic).
    #[config(default = 0.0)]
    pub eta: f64,
    /// Which timesteps are visited.
    #[config(default = "TimestepSpacing::Linspace")]
    pub spacing: TimestepSpacing,
}

impl SamplerConfig {
    /// Checks the settings against `schedule` and builds the sampler.
    pub fn init(&self, schedule: &NoiseSchedule) -> Result<Box<dyn Scheduler>, ModelError> {
        let timesteps = self
            .spacing
            .timesteps(self.steps, schedule.train_timesteps())?;
        if !(self.eta.is_finite() && (0.0..=1.0).contains(&self.eta)) {
            return Err(ModelError::Config(format!(
                "eta = {} must be in [0, 1]",
                self.eta
            )));
        }
        if self.eta != 0.0 && self.kind != SamplerKind::Ddim {
            return Err(ModelError::Config(format!(
                "eta = {} applies to DDIM only, not {:?}",
                self.eta, self.kind
            )));
        }
        let schedule = schedule.clone();
        Ok(match self.kind {
            SamplerKind::Ddpm => Box::new(Ddpm::new(schedule, timesteps)),
            SamplerKind::Ddim => Box::new(Ddim::new(schedule, timesteps, self.eta)),
            SamplerKind::DpmSolver => Box::new(DpmSolver::new(schedule, timesteps)),
        })
    }
}

/// Runs the reverse process from `x_t` (pure noise N(0, I) for a full run) through every
/// timestep of `scheduler`. `denoise(x, t)` is the network (with any guidance folded in);
/// it gets one timestep per sample. Fails on a non-finite start or network output.
pub fn sample(
    scheduler: &mut dyn Scheduler,
    x_t: Tensor<5>,
    mut denoise: impl FnMut(Tensor<5>, &[usize]) -> Result<Tensor<5>, ModelError>,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor<5>, ModelError> {
    check_finite(&x_t, "the initial sample")?;
    let batch = x_t.dims()[0];
    let timesteps = scheduler.timesteps().to_vec();
    let mut x = x_t;
    for (i, &t) in timesteps.iter().enumerate() {
        let out = denoise(x.clone(), &vec![t; batch])?;
        same_shape("denoiser output vs sample", &out, &x)?;
        check_finite(&out, &format!("the denoiser output at t = {t}"))?;
        x = scheduler.step(out, i, x, rng)?;
    }
    Ok(x)
}

fn check_finite(x: &Tensor<5>, what: &str) -> Result<(), ModelError> {
    if x.clone().is_finite().all().into_scalar() {
        Ok(())
    } else {
        Err(ModelError::Input(format!(
            "{what} has NaN or infinite values"
        )))
    }
}

/// The checks every `step` makes: a valid index and matching shapes.
pub(super) fn check_step(
    timesteps: &[usize],
    step_index: usize,
    model_output: &Tensor<5>,
    sample: &Tensor<5>,
) -> Result<(), ModelError> {
    if step_index >= timesteps.len() {
        return Err(ModelError::Input(format!(
            "step index {step_index} is past the last of {} steps",
            timesteps.len()
        )));
    }
    same_shape("step (model output vs sample)", model_output, sample)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{close, gaussian_data, normal, oracle, values};
    use super::super::{DiffusionConfig, Prediction, seeded_rng};
    use super::*;

    const SHAPE: [usize; 5] = [2, 3, 2, 4, 4];

    fn schedule(p: Prediction) -> NoiseSchedule {
        DiffusionConfig::new().with_prediction(p).init().unwrap()
    }

    fn run(cfg: &SamplerConfig, s: &NoiseSchedule, x0: Tensor<5>, seed: u64) -> Vec<f32> {
        let mut sampler = cfg.init(s).unwrap();
        assert_eq!(sampler.nfe(), cfg.steps);
        let mut rng = seeded_rng(seed);
        let x_t = normal(SHAPE, seed + 100);
        values(sample(sampler.as_mut(), x_t, oracle(s, x0), &mut rng).unwrap())
    }

    /// With the exact ε of every x_t, each sampler lands on x0 (to f32 rounding).
    fn recovers_x0(kind: SamplerKind, eta: f64, steps: &[usize]) {
        for p in [Prediction::Epsilon, Prediction::V] {
            let s = schedule(p);
            let x0 = normal(SHAPE, 1);
            for spacing in [
                TimestepSpacing::Linspace,
                TimestepSpacing::Leading,
                TimestepSpacing::Trailing,
            ] {
                for &n in steps {
                    let cfg = SamplerConfig::new()
                        .with_kind(kind)
                        .with_eta(eta)
                        .with_steps(n)
                        .with_spacing(spacing);
                    close(&run(&cfg, &s, x0.clone(), 3), &values(x0.clone()), 1e-4);
                }
            }
        }
    }

    #[test]
    fn ddim_with_the_true_noise_returns_x0() {
        recovers_x0(SamplerKind::Ddim, 0.0, &[1, 2, 7, 50]);
        recovers_x0(SamplerKind::Ddim, 1.0, &[3, 20]);
    }

    #[test]
    fn dpm_solver_with_the_true_noise_returns_x0() {
        recovers_x0(SamplerKind::DpmSolver, 0.0, &[1, 2, 5, 10, 20]);
    }

    #[test]
    fn ddpm_with_the_true_noise_returns_x0() {
        recovers_x0(SamplerKind::Ddpm, 0.0, &[4, 50]);
        let s = schedule(Prediction::Epsilon);
        let x0 = normal(SHAPE, 1);
        let full = SamplerConfig::new()
            .with_kind(SamplerKind::Ddpm)
            .with_steps(1000);
        close(&run(&full, &s, x0.clone(), 3), &values(x0), 1e-4);
    }

    #[test]
    fn stochastic_samplers_are_fixed_by_the_seed() {
        let s = schedule(Prediction::Epsilon);
        for cfg in [
            SamplerConfig::new()
                .with_kind(SamplerKind::Ddpm)
                .with_steps(20),
            SamplerConfig::new().with_eta(0.5).with_steps(20),
        ] {
            // A network that is not the oracle, so the noise shows in the result.
            let net = |x: Tensor<5>, _: &[usize]| Ok(x.mul_scalar(0.5));
            let draw = |seed| {
                let mut sampler = cfg.init(&s).unwrap();
                let x_t = normal(SHAPE, 9);
                values(sample(sampler.as_mut(), x_t, net, &mut seeded_rng(seed)).unwrap())
            };
            assert_eq!(draw(1), draw(1));
            assert_ne!(draw(1), draw(2));
        }
    }

    /// For data N(0, s²) the probability-flow ODE maps x_T to x_T · std_t/std_T, with
    /// std_t² = ᾱ_t s² + 1 − ᾱ_t. The final step to ᾱ = 1 returns E[x0 | x_t] at the last
    /// timestep, so an exact solver would return x_T s² √ᾱ_last / (std_T std_last).
    /// Halving the step size should halve DDIM's error (first order) and quarter
    /// DPM-Solver++(2M)'s (second order).
    #[test]
    fn ode_samplers_converge_at_their_order_on_gaussian_data() {
        let (s_data, x_t) = (0.5, 1.0f32);
        let sch = schedule(Prediction::V);
        let ab = sch.alphas_cumprod();
        let std = |t: usize| (ab[t] * s_data * s_data + 1.0 - ab[t]).sqrt();
        let exact = x_t as f64 * s_data * s_data * ab[0].sqrt() / (std(999) * std(0));
        let error = |kind, n| {
            let cfg = SamplerConfig::new().with_kind(kind).with_steps(n);
            let mut sampler = cfg.init(&sch).unwrap();
            let x = Tensor::<5>::from_data(
                TensorData::new(vec![x_t], [1, 1, 1, 1, 1]),
                &Device::flex(),
            );
            let out = sample(
                sampler.as_mut(),
                x,
                gaussian_data(&sch, s_data),
                &mut seeded_rng(0),
            );
            (values(out.unwrap())[0] as f64 / exact - 1.0).abs()
        };
        let ddim: Vec<f64> = [100, 200, 400].map(|n| error(SamplerKind::Ddim, n)).into();
        let dpm: Vec<f64> = [100, 200, 400]
            .map(|n| error(SamplerKind::DpmSolver, n))
            .into();
        for w in ddim.windows(2) {
            assert!((1.8..2.2).contains(&(w[0] / w[1])), "DDIM errors {ddim:?}");
        }
        for w in dpm.windows(2) {
            assert!(
                (3.5..4.7).contains(&(w[0] / w[1])),
                "DPM-Solver++ errors {dpm:?}"
            );
        }
        assert!(dpm[2] < ddim[2] / 5.0);
    }

    /// DDPM's ancestral sampling with the exact denoiser of N(0, s²) data draws from
    /// N(0, s²) (up to the discretisation's ~1 % at T = 1000 steps).
    #[test]
    fn ddpm_samples_gaussian_data_with_the_right_spread() {
        let s_data = 0.5;
        let sch = schedule(Prediction::Epsilon);
        let mut sampler = SamplerConfig::new()
            .with_kind(SamplerKind::Ddpm)
            .with_steps(1000)
            .init(&sch)
            .unwrap();
        let x_t = normal([2, 1, 1, 64, 64], 4);
        let out = sample(
            sampler.as_mut(),
            x_t,
            gaussian_data(&sch, s_data),
            &mut seeded_rng(5),
        );
        let v = values(out.unwrap());
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        // Standard error of the sd: 0.5/√(2n) ≈ 0.004.
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((sd - s_data).abs() < 0.02, "{sd}");
    }

    #[test]
    fn bad_sampler_settings_are_refused() {
        let s = schedule(Prediction::Epsilon);
        let msg = |c: SamplerConfig| c.init(&s).err().unwrap().to_string();
        assert!(msg(SamplerConfig::new().with_steps(0)).contains("steps = 0"));
        assert!(msg(SamplerConfig::new().with_steps(1001)).contains("1..=1000"));
        for eta in [-0.1, 1.5, f64::NAN] {
            assert!(msg(SamplerConfig::new().with_eta(eta)).contains("[0, 1]"));
        }
        for kind in [SamplerKind::Ddpm, SamplerKind::DpmSolver] {
            let m = msg(SamplerConfig::new().with_kind(kind).with_eta(0.5));
            assert!(m.contains("DDIM only"), "{m}");
        }
    }

    #[test]
    fn bad_steps_and_network_outputs_are_refused() {
        let s = schedule(Prediction::Epsilon);
        let mut sampler = SamplerConfig::new().with_steps(2).init(&s).unwrap();
        let (x, mut rng) = (normal(SHAPE, 1), seeded_rng(0));
        let e = sampler.step(x.clone(), 2, x.clone(), &mut rng).unwrap_err();
        assert!(e.to_string().contains("step index 2"), "{e}");
        let small = normal([2, 3, 2, 4, 2], 1);
        assert!(sampler.step(small.clone(), 0, x.clone(), &mut rng).is_err());
        let e = sample(
            sampler.as_mut(),
            x.clone(),
            |_, _| Ok(small.clone()),
            &mut rng,
        )
        .unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
        let nan = x.clone().mul_scalar(f32::NAN);
        let e = sample(
            sampler.as_mut(),
            x.clone(),
            |_, _| Ok(nan.clone()),
            &mut rng,
        )
        .unwrap_err();
        assert!(e.to_string().contains("denoiser output at t = 999"), "{e}");
        let e = sample(sampler.as_mut(), nan, |x, _| Ok(x), &mut rng).unwrap_err();
        assert!(e.to_string().contains("initial sample"), "{e}");
        // Network errors pass through.
        let e = sample(
            sampler.as_mut(),
            x,
            |_, _| Err(ModelError::Input("net".into())),
            &mut rng,
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "input does not fit the model: net"
        );
    }

    #[test]
    fn add_noise_broadcasts_one_timestep() {
        let s = schedule(Prediction::Epsilon);
        let sampler = SamplerConfig::new().init(&s).unwrap();
        let (x0, eps) = (normal(SHAPE, 1), normal(SHAPE, 2));
        let got = sampler.add_noise(x0.clone(), eps.clone(), 499).unwrap();
        let want = s.add_noise(x0, eps, &[499, 499]).unwrap();
        assert_eq!(values(got), values(want));
    }
}
