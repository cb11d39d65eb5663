//! The stage-1 VAE training step of `train_vae`, repeatable on one fixed random batch.

use super::{TrainStep, finite, optimizer, sync};
use crate::error::ModelError;
use crate::loss::{kl_divergence, normalized_mae, normalized_mse};
use crate::train::clip::clip_global_norm;
use crate::train::ema;
use crate::train::vae::{ReconLoss, VaeTrainConfig};
use crate::vae::{VaeBranch, standard_noise};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Distribution;

/// E3D + D3D forward with a sampled latent, reconstruction loss + β·KL (β at its
/// first-epoch value), backward, global-norm clipping, AdamW at the peak learning rate,
/// and the EMA when the config enables it.
pub struct VaeStep {
    model: VaeBranch,
    optim: ModuleOptimizer,
    ema: Option<VaeBranch>,
    cfg: VaeTrainConfig,
    field: Tensor<5>,
    mask: Tensor<5>,
    geometry: Option<Tensor<5>>,
    updates: u64,
    device: Device,
}

impl VaeStep {
    /// A batch of `batch` random samples of `[S, H, W]` on `device`; weights and inputs
    /// are seeded by `cfg.seed`.
    pub fn new(
        cfg: &VaeTrainConfig,
        [s, h, w]: [usize; 3],
        batch: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        cfg.vae.check_input(h, w)?;
        if batch == 0 || s == 0 || h == 0 || w == 0 {
            return Err(ModelError::Input(format!(
                "batch {batch} of S × H × W = {s} × {h} × {w} has an empty axis"
            )));
        }
        device.seed(cfg.seed);
        let ad = device.clone().autodiff();
        let model = cfg.vae.init(&ad)?;
        let random = |c: usize, d: Distribution| Tensor::<5>::random([batch, c, s, h, w], d, &ad);
        let field = random(cfg.vae.in_channels, Distribution::Normal(0.0, 1.0));
        let mask = random(1, Distribution::Bernoulli(0.6));
        let geometry = (cfg.vae.geometry_channels > 0)
            .then(|| random(cfg.vae.geometry_channels, Distribution::Uniform(0.0, 1.0)));
        Ok(Self {
            ema: (cfg.ema_decay > 0.0).then(|| model.valid()),
            model,
            optim: optimizer(cfg.weight_decay),
            cfg: cfg.clone(),
            field,
            mask,
            geometry,
            updates: 0,
            device: ad,
        })
    }
}

impl TrainStep for VaeStep {
    fn step(&mut self) -> Result<f64, ModelError> {
        let noise = standard_noise(self.cfg.vae.latent_shape(self.field.dims()), &self.device);
        let out = self
            .model
            .forward(self.field.clone(), self.geometry.clone(), Some(noise));
        let (pred, target, mask) = (out.reconstruction, self.field.clone(), self.mask.clone());
        let rec = match self.cfg.loss {
            ReconLoss::Mae => normalized_mae(pred, target, mask),
            ReconLoss::Mse => normalized_mse(pred, target, mask),
        };
        let loss = rec + kl_divergence(out.mu, out.logvar).mul_scalar(self.cfg.kl_start);
        let value = finite(loss.clone().into_scalar::<f64>(), "VAE")?;
        let mut grads = GradientsParams::from_grads(loss.backward(), &self.model);
        clip_global_norm(&self.model, &mut grads, self.cfg.grad_clip);
        self.model = self.optim.step(self.cfg.lr, self.model.clone(), grads);
        if let Some(e) = self.ema.take() {
            let decay = ema::warmup_decay(self.updates, self.cfg.ema_decay);
            self.ema = Some(ema::update(e, &self.model.valid(), decay));
        }
        self.updates += 1;
        sync(&self.device)?;
        Ok(value)
    }

    fn parameters(&self) -> usize {
        self.model.num_params()
    }

    fn input(&self) -> [usize; 5] {
        self.field.dims()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tiny;

    fn config() -> VaeTrainConfig {
        VaeTrainConfig {
            vae: tiny::vae(),
            ema_decay: 0.9,
            ..Default::default()
        }
    }

    #[test]
    fn repeated_steps_fit_the_batch() {
        // A real optimiser step on a fixed batch must lower the loss.
        let dev = Device::flex();
        let mut step = VaeStep::new(&config(), [3, 8, 8], 2, &dev).unwrap();
        assert_eq!(step.input(), [2, 3, 3, 8, 8]);
        assert_eq!(
            step.parameters(),
            config().vae.init(&dev).unwrap().num_params()
        );
        let losses: Vec<f64> = (0..12).map(|_| step.step().unwrap()).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&losses[9..]) < 0.8 * mean(&losses[..3]), "{losses:?}");
    }

    #[test]
    fn inputs_the_vae_cannot_take_are_refused() {
        let dev = Device::flex();
        let e = VaeStep::new(&config(), [3, 9, 8], 1, &dev).err().unwrap();
        assert!(e.to_string().contains("divisible"), "{e}");
        let e = VaeStep::new(&config(), [3, 8, 8], 0, &dev).err().unwrap();
        assert!(e.to_string().contains("empty axis"), "{e}");
        let bad = VaeTrainConfig {
            lr: -1.0,
            ..config()
        };
        let e = VaeStep::new(&bad, [3, 8, 8], 1, &dev).err().unwrap();
        assert!(e.to_string().contains("lr"), "{e}");
    }
}
