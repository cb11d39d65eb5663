//! The latent-predictor training step of `train_diffusion`, repeatable on one fixed
//! random batch of latents.

use super::{TrainStep, finite, optimizer, sync};
use crate::diffusion::{ChaCha8Rng, NoiseSchedule, seeded_rng, standard_normal};
use crate::error::ModelError;
use crate::predict::sampling::PredictorKind;
use crate::train::clip::clip_global_norm;
use crate::train::diffusion::DiffusionTrainConfig;
use crate::train::ema;
use crate::unet::UNet;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Distribution;

/// A timestep and noise per sample (diffusion) or none (direct predictor), the config's
/// loss, backward, global-norm clipping, AdamW at the peak learning rate and the EMA
/// update, as the trainer does per batch (condition dropout aside, which costs nothing).
pub struct DenoiserStep {
    model: UNet,
    ema: UNet,
    optim: ModuleOptimizer,
    cfg: DiffusionTrainConfig,
    schedule: NoiseSchedule,
    x0: Tensor<5>,
    cond: Tensor<5>,
    geometry: Tensor<5>,
    rng: ChaCha8Rng,
    updates: u64,
    device: Device,
}

impl DenoiserStep {
    /// A batch of `batch` random latents `[Cz, S, h, w]`; the network's input and output
    /// channels follow from Cz and the predictor as in the trainer. Seeded by `cfg.seed`.
    pub fn new(
        cfg: &DiffusionTrainConfig,
        [cz, s, h, w]: [usize; 4],
        batch: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut cfg = cfg.clone();
        // The features are drawn at latent resolution here: no fold.
        cfg.fit_to_latent(cz, 1);
        cfg.validate()?;
        cfg.unet
            .check_input([batch, cfg.unet.in_channels, s, h, w])?;
        let schedule = cfg.diffusion.init()?;
        device.seed(cfg.seed);
        let ad = device.clone().autodiff();
        let model = cfg.unet.init(&ad)?;
        let mut rng = seeded_rng(cfg.seed);
        let x0 = standard_normal([batch, cz, s, h, w], &mut rng, &ad);
        let cond = standard_normal([batch, cz, s, h, w], &mut rng, &ad);
        let geometry = Tensor::<5>::random(
            [batch, cfg.conditioning().channels(1), s, h, w],
            Distribution::Uniform(0.0, 1.0),
            &ad,
        );
        Ok(Self {
            ema: model.valid(),
            model,
            optim: optimizer(cfg.weight_decay),
            cfg,
            schedule,
            x0,
            cond,
            geometry,
            rng,
            updates: 0,
            device: ad,
        })
    }
}

impl TrainStep for DenoiserStep {
    fn step(&mut self) -> Result<f64, ModelError> {
        let (x0, cond, geometry) = (self.x0.clone(), self.cond.clone(), self.geometry.clone());
        let loss = match self.cfg.predictor {
            PredictorKind::Direct => {
                let pred = self
                    .model
                    .forward(Tensor::cat(vec![cond, geometry], 1), None)?;
                (pred - x0).square().mean()
            }
            PredictorKind::Diffusion => {
                let t = self.schedule.sample_timesteps(x0.dims()[0], &mut self.rng);
                let noise = standard_normal(x0.dims(), &mut self.rng, &self.device);
                let x_t = self.schedule.add_noise(x0.clone(), noise.clone(), &t)?;
                let target = self.schedule.target(x0, noise, &t)?;
                let times: Vec<f32> = t.iter().map(|&t| t as f32).collect();
                let pred = self.model.forward(
                    Tensor::cat(vec![x_t, cond, geometry], 1),
                    Some(Tensor::<1>::from_floats(times.as_slice(), &self.device)),
                )?;
                self.cfg.diffusion.loss.compute(pred, target)?
            }
        };
        let value = finite(loss.clone().into_scalar::<f64>(), "denoiser")?;
        let mut grads = GradientsParams::from_grads(loss.backward(), &self.model);
        clip_global_norm(&self.model, &mut grads, self.cfg.grad_clip);
        self.model = self.optim.step(self.cfg.lr, self.model.clone(), grads);
        let decay = ema::warmup_decay(self.updates, self.cfg.ema_decay);
        self.ema = ema::update(self.ema.clone(), &self.model.valid(), decay);
        self.updates += 1;
        sync(&self.device)?;
        Ok(value)
    }

    fn parameters(&self) -> usize {
        self.model.num_params()
    }

    fn input(&self) -> [usize; 5] {
        let [b, _, s, h, w] = self.x0.dims();
        [b, self.cfg.unet.in_channels, s, h, w]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tiny::diffusion as tiny;

    #[test]
    fn the_direct_step_fits_its_batch_and_the_diffusion_step_runs() {
        let dev = Device::flex();
        let mut step =
            DenoiserStep::new(&tiny(PredictorKind::Direct), [8, 3, 4, 4], 2, &dev).unwrap();
        // Condition (8) ⊕ geometry (2) ⊕ pressure change (1).
        assert_eq!(step.input(), [2, 11, 3, 4, 4]);
        let losses: Vec<f64> = (0..12).map(|_| step.step().unwrap()).collect();
        assert!(losses[11] < 0.8 * losses[0], "{losses:?}");
        let mut step =
            DenoiserStep::new(&tiny(PredictorKind::Diffusion), [8, 3, 4, 4], 2, &dev).unwrap();
        // Noisy latent (8) ⊕ condition (8) ⊕ geometry (2) ⊕ pressure change (1).
        assert_eq!(step.input(), [2, 19, 3, 4, 4]);
        assert!(step.step().unwrap().is_finite());
        let mut without = tiny(PredictorKind::Diffusion);
        without.pressure_condition = false;
        let step = DenoiserStep::new(&without, [8, 3, 4, 4], 2, &dev).unwrap();
        assert_eq!(step.input(), [2, 18, 3, 4, 4]);
    }

    #[test]
    fn configurations_that_do_not_fit_are_refused() {
        let dev = Device::flex();
        // Two levels need h and w even.
        let e = DenoiserStep::new(&tiny(PredictorKind::Diffusion), [8, 3, 3, 4], 1, &dev)
            .err()
            .unwrap();
        assert!(e.to_string().contains("divisible"), "{e}");
        // The trainer's rules hold: a diffusion denoiser needs the timestep input.
        let mut mixed = tiny(PredictorKind::Diffusion);
        mixed.unet.time_conditioned = false;
        let e = DenoiserStep::new(&mixed, [8, 3, 4, 4], 1, &dev)
            .err()
            .unwrap();
        assert!(e.to_string().contains("time_conditioned"), "{e}");
    }
}
