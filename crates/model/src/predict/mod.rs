//! The predictor API used by `evaluate` and `predict`: (microstructure, U_2d) → U_3d in
//! m/s, masked to zero in fibres, from a trained diffusion (or direct) run and the dual
//! VAE it references.

pub mod inputs;
pub mod sampling;

use crate::batch::TensorBatch;
use crate::diffusion::{NoiseSchedule, seeded_rng};
use crate::error::ModelError;
use crate::latent::DualVae;
use crate::train::checkpoint;
use crate::train::diffusion::DiffusionRunLog;
use crate::train::vae::{BEST_FILE, LOG_FILE};
use crate::unet::UNet;
use burn::prelude::*;
use fiberflow_data::json::read_json;
use inputs::ConditionInputs;
use sampling::{LatentPredictor, SampleOptions};
use std::path::Path;

/// A trained run, loaded for inference.
pub struct TrainedModel {
    pub unet: UNet,
    pub vae: DualVae,
    pub schedule: NoiseSchedule,
    pub log: DiffusionRunLog,
}

impl TrainedModel {
    /// Loads the best (EMA) weights of a diffusion run and the VAE it names; refuses a VAE
    /// whose weights changed since (its key differs).
    pub fn load(run_dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let log: DiffusionRunLog = read_json(
            &run_dir.join(LOG_FILE),
            "pass the folder of a diffusion run (fiberflow train diffusion)",
        )?;
        let vae = DualVae::load(&log.vae, device)?;
        if vae.key != log.vae_key {
            return Err(ModelError::Config(format!(
                "the VAE {} changed since {} was trained (key {} ≠ {}); retrain the diffusion model",
                log.vae.display(),
                run_dir.display(),
                &vae.key[..16],
                &log.vae_key[..16.min(log.vae_key.len())]
            )));
        }
        let unet = checkpoint::load(log.config.unet.init(device)?, &run_dir.join(BEST_FILE))?;
        let schedule = log.config.diffusion.init()?;
        Ok(Self {
            unet,
            vae,
            schedule,
            log,
        })
    }

    /// The latent network with its schedule.
    pub fn latent_predictor(&self) -> LatentPredictor<'_> {
        LatentPredictor {
            unet: &self.unet,
            schedule: &self.schedule,
            kind: self.log.config.predictor,
        }
    }

    /// Checks that a batch fits the networks: H and W divisible by the VAE's and the
    /// denoiser's downsampling, and flow and geometry shapes consistent. Any slice count
    /// works (the networks are convolutional along z).
    pub fn check_input(&self, tb: &TensorBatch) -> Result<(), ModelError> {
        let [b, c, s, h, w] = tb.u2d.dims();
        if c != self.vae.config.in_channels || tb.geometry.dims()[2..] != [s, h, w] {
            return Err(ModelError::Input(format!(
                "the 2D flow has shape {:?} and the microstructure {:?}; they must agree",
                tb.u2d.dims(),
                tb.geometry.dims()
            )));
        }
        self.vae.config.check_input(h, w)?;
        let f = self.vae.config.downsample_factor();
        let unet = self.unet.config();
        unet.check_input([b, unet.in_channels, s, h / f, w / f])
            .map_err(|e| {
                ModelError::Input(format!(
                    "{e} (the latent of an H × W = {h} × {w} input is {} × {}; H and W must be multiples of {})",
                    h / f,
                    w / f,
                    f * unet.downsample_factor()
                ))
            })
    }

    /// `k` predictions of the batch's 3D flow `(B, 3, S, H, W)` in m/s, masked; draw j
    /// uses noise seeded by (`seed`, j), so a prediction does not depend on how many
    /// others are drawn.
    pub fn predict(
        &self,
        tb: &TensorBatch,
        options: &SampleOptions,
        k: usize,
        seed: u64,
    ) -> Result<Vec<Tensor<5>>, ModelError> {
        self.check_input(tb)?;
        let scales = &self.log.scales;
        let inputs = ConditionInputs::new(&self.vae, tb, scales);
        let predictor = self.latent_predictor();
        (0..k)
            .map(|j| {
                let mut rng = seeded_rng(seed);
                rng.set_stream(j as u64);
                let x0 = predictor.sample(
                    inputs.cond.clone(),
                    inputs.geometry.clone(),
                    options,
                    &mut rng,
                )?;
                Ok(self.vae.decode(scales.latent(x0, inputs.mu2d.clone()), tb))
            })
            .collect()
    }
}
