//! The cost of one prediction (draws of the chosen sampler, as `predict` makes them for
//! `U_std`), with untrained networks of the chosen architectures.

use super::memory::MemoryProbe;
use super::{Memory, Repeats, Timing, time_runs};
use crate::batch::{Normalizer, sample_array, to_tensors};
use crate::error::ModelError;
use crate::latent::DualVae;
use crate::predict::TrainedModel;
use crate::predict::inputs::LatentScales;
use crate::predict::sampling::{PredictorKind, SampleOptions};
use crate::train::diffusion::{DiffusionRunLog, DiffusionTrainConfig};
use crate::train::vae::VaeTarget;
use crate::vae::VaeConfig;
use burn::module::Module;
use burn::prelude::*;
use fiberflow_data::Batch;
use serde::Serialize;
use std::path::PathBuf;

/// One prediction of a single sample, measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictBench {
    /// Network evaluations of the latent predictor (1 for the direct predictor).
    pub nfe: usize,
    pub repeats: Repeats,
    /// Seconds per prediction: input tensors and microstructure features, E2D, the latent
    /// predictor, D3D, and the copy back to an array.
    pub timing: Timing,
    pub memory: Option<Memory>,
}

/// An untrained predictor with the architectures of `vae` and `cfg` on `device`, seeded
/// by `cfg.seed`: the `TrainedModel` that `predict` loads, with unit velocity and latent
/// scales and no run folders behind it (its paths and keys are empty).
pub fn untrained_model(
    vae: &VaeConfig,
    target: VaeTarget,
    cfg: &DiffusionTrainConfig,
    device: &Device,
) -> Result<TrainedModel, ModelError> {
    let mut cfg = cfg.clone();
    cfg.fit_to_latent(vae.latent_channels, vae.downsample_factor());
    cfg.validate()?;
    let schedule = cfg.diffusion.init()?;
    device.seed(cfg.seed);
    let (stage1, stage2) = (vae.init(device)?, vae.init(device)?);
    let unet = cfg.unet.init(device)?;
    let log = DiffusionRunLog {
        vae: PathBuf::new(),
        vae_key: String::new(),
        dataset: PathBuf::new(),
        dataset_manifest_sha256: String::new(),
        dxyz: None,
        scales: LatentScales {
            residual: cfg.residual,
            target: 1.0,
            condition: 1.0,
        },
        history: Vec::new(),
        best_epoch: None,
        best_val_error: f64::NAN,
        val_physics_truth: Default::default(),
        parameters: unet.num_params(),
        config: cfg,
    };
    Ok(TrainedModel {
        unet,
        weights_sha256: String::new(),
        vae: DualVae {
            e2d: stage2.encoder,
            e3d: stage1.encoder,
            d3d: stage1.decoder,
            config: vae.clone(),
            target,
            normalizer: Normalizer { factors: [1.0; 3] },
            stage2_dir: PathBuf::new(),
            stage1_dir: PathBuf::new(),
            key: String::new(),
            dataset_manifest_sha256: String::new(),
        },
        schedule,
        log,
        refiner: None,
    })
}

/// Times the prediction of the one-sample `batch` on `device` (where `model` lives):
/// tensors and microstructure features from the arrays, E2D, the latent predictor with
/// `options` (noise seeded by `seed`), D3D, and the result back as an array.
pub fn bench_predict(
    model: &TrainedModel,
    batch: &Batch,
    options: &SampleOptions,
    repeats: Repeats,
    seed: u64,
    device: &Device,
) -> Result<PredictBench, ModelError> {
    let [sample] = batch.samples.as_slice() else {
        return Err(ModelError::Input(format!(
            "a prediction is timed on one sample, the batch has {}",
            batch.samples.len()
        )));
    };
    let (s, _, h, w) = sample.u2d.dim();
    let vae = &model.vae.config;
    vae.check_input(h, w)?;
    let f = vae.downsample_factor();
    let unet = model.unet.config();
    unet.check_input([1, unet.in_channels, s, h / f, w / f])?;
    let nfe = match model.log.config.predictor {
        PredictorKind::Direct => 1,
        PredictorKind::Diffusion => options.sampler.init(&model.schedule)?.nfe(),
    };
    let probe = MemoryProbe::start();
    let timing = time_runs(repeats, || {
        let tb = to_tensors(batch, &model.vae.normalizer, device)?;
        for u in model.predict(&tb, options, 1, seed)? {
            sample_array(u, 0)?;
        }
        Ok(())
    })?;
    Ok(PredictBench {
        nfe,
        repeats,
        timing,
        memory: probe.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tiny;
    use crate::diffusion::{SamplerConfig, SamplerKind};
    use crate::train::vae::VaeTrainConfig;
    use fiberflow_data::{Mirror, Sample};
    use ndarray::Array4;

    const ONCE: Repeats = Repeats {
        warmup: 0,
        timed: 1,
    };

    fn one_sample(s: usize, hw: usize) -> Batch {
        let mut domain = Array4::ones((s, 1, hw, hw));
        domain[[0, 0, 2, 2]] = 0.0;
        let u = Array4::from_shape_fn((s, 3, hw, hw), |(k, c, y, x)| {
            1e-4 * ((k + c + y * x) % 5) as f32
        });
        Batch {
            indices: vec![0],
            samples: vec![Sample {
                domain,
                u2d: u.clone(),
                u,
                p: Array4::zeros((s, 1, hw, hw)),
                p2d: Some(Array4::from_shape_fn((s, 1, hw, hw), |(k, _, y, x)| {
                    ((k + y + 2 * x) % 3) as f32
                })),
                dxyz: [1e-6, 1e-6, 5e-6],
            }],
            mirrors: vec![Mirror::default()],
        }
    }

    fn options(kind: SamplerKind, steps: usize) -> SampleOptions {
        SampleOptions {
            sampler: SamplerConfig::new().with_kind(kind).with_steps(steps),
            guidance: 0.0,
        }
    }

    fn model(predictor: PredictorKind, dev: &Device) -> TrainedModel {
        let target = VaeTrainConfig::default().target;
        untrained_model(&tiny::vae(), target, &tiny::diffusion(predictor), dev).unwrap()
    }

    #[test]
    fn predictions_count_their_network_evaluations() {
        let dev = Device::flex();
        let batch = one_sample(3, 8);
        let direct = model(PredictorKind::Direct, &dev);
        // The sampler does not matter to the direct predictor: one evaluation.
        let b = bench_predict(
            &direct,
            &batch,
            &options(SamplerKind::Ddim, 50),
            ONCE,
            1,
            &dev,
        )
        .unwrap();
        assert_eq!((b.nfe, b.timing.seconds.len()), (1, 1));
        let diffusion = model(PredictorKind::Diffusion, &dev);
        for (kind, steps) in [(SamplerKind::DpmSolver, 3), (SamplerKind::Ddim, 4)] {
            let b =
                bench_predict(&diffusion, &batch, &options(kind, steps), ONCE, 1, &dev).unwrap();
            assert_eq!(b.nfe, steps);
        }
    }

    #[test]
    fn the_untrained_model_predicts_what_predict_would() {
        // Shape (B, 3, S, H, W), and zero in the fibre voxel: the masked VAE decode ran.
        let dev = Device::flex();
        let m = model(PredictorKind::Diffusion, &dev);
        // Noisy latent (8) ⊕ condition (8) ⊕ geometry (2) and pressure change (1), each
        // folded 2×2 into the latent grid (12).
        assert_eq!(m.unet.config().in_channels, 28);
        let batch = one_sample(3, 8);
        let tb = to_tensors(&batch, &m.vae.normalizer, &dev).unwrap();
        let u = m
            .predict(&tb, &options(SamplerKind::DpmSolver, 2), 1, 0)
            .unwrap()
            .remove(0);
        let a = sample_array(u, 0).unwrap();
        assert_eq!(a.dim(), (3, 3, 8, 8));
        assert!((0..3).all(|c| a[[0, c, 2, 2]] == 0.0));
        assert!(a.iter().any(|&v| v != 0.0) && a.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_settings_and_inputs_are_refused() {
        let dev = Device::flex();
        let m = model(PredictorKind::Diffusion, &dev);
        let e = bench_predict(
            &m,
            &one_sample(3, 8),
            &options(SamplerKind::Ddim, 0),
            ONCE,
            1,
            &dev,
        )
        .unwrap_err();
        assert!(matches!(e, ModelError::Config(_)), "{e}");
        let e = bench_predict(
            &m,
            &one_sample(3, 10),
            &options(SamplerKind::Ddim, 2),
            ONCE,
            1,
            &dev,
        )
        .unwrap_err();
        assert!(e.to_string().contains("divisible"), "{e}");
        let mut two = one_sample(3, 8);
        two.samples.push(two.samples[0].clone());
        let e = bench_predict(&m, &two, &options(SamplerKind::Ddim, 2), ONCE, 1, &dev).unwrap_err();
        assert!(e.to_string().contains("one sample"), "{e}");
    }
}
