//! Training of the latent predictor — the conditional denoiser of the latent diffusion
//! model (Rombach et al., CVPR 2022) or the direct latent conditioner — on the latent
//! cache of a frozen dual VAE. Every sample gets one timestep for all its slices (the
//! reference drew one per slice and denoised slices independently).
//!
//! Run folder: `log.json` (config, VAE reference by path and key, latent scales, history),
//! `best_model.bpk` (EMA weights of the epoch with the lowest decoded-velocity validation
//! error), `checkpoint/` (model, EMA, optimiser, state) written atomically for `--resume`.
//! The VAE is referenced, never copied.

use super::parallel;
use super::runner::run_epochs;
use super::state::TrainState;
use crate::batch::to_tensors;
use crate::diffusion::{ChaCha8Rng, NoiseSchedule, seeded_rng, standard_normal};
use crate::error::ModelError;
use crate::latent::{DualVae, LatentCache, encode_dataset};
use crate::metrics::{ErrorSums, FieldErrors};
use crate::physics::{PhysicsLossConfig, PhysicsMetrics};
use crate::predict::inputs::{ConditionInputs, Conditioning, LatentScales, condition_features};
use crate::predict::sampling::{LatentPredictor, PredictorKind, SampleOptions};
use crate::run::checkpoint;
use crate::run::checkpoint::LOG_FILE;
use crate::run::optimiser_settings;
use crate::unet::UNet;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;
use fiberflow_data::json::write_json;
use fiberflow_data::{Batch, Dataset, Loader, LoaderConfig, Mirror, Progress, Subset};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

pub use crate::run::diffusion::{DiffusionEpoch, DiffusionRunLog, DiffusionTrainConfig};

/// Receives progress; `epoch` runs after the epoch's checkpoint is on disk.
pub trait DiffusionObserver: Progress {
    fn batch(&mut self, _epoch: usize, _batch: usize, _batches: usize, _loss: f64) {}
    fn epoch(&mut self, _record: &DiffusionEpoch) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// What the physics losses need: the frozen VAE on the autodiff device (its decoder
/// passes gradients to x̂0, not to its own weights), the dataset for full-resolution masks
/// and 2D flows, and the latent scales.
struct PhysicsContext<'a> {
    vae: DualVae,
    dataset: &'a Dataset,
    scales: LatentScales,
}

impl PhysicsContext<'_> {
    /// The weighted physics loss of the flow decoded from `x0` (scaled network target)
    /// and the unscaled E2D latents `mu2d` of split samples `chunk`.
    fn loss(
        &self,
        weights: &PhysicsLossConfig,
        x0: Tensor<5>,
        mu2d: Tensor<5>,
        (split, chunk): (&Split, &[usize]),
        device: &Device,
    ) -> Result<Tensor<1>, ModelError> {
        let indices: Vec<usize> = chunk.iter().map(|&i| split.indices[i]).collect();
        let mirrors: Vec<Mirror> = chunk.iter().map(|&i| split.mirrors[i]).collect();
        let samples = indices
            .iter()
            .zip(&mirrors)
            .map(|(&i, m)| {
                let mut sample = self.dataset.open_sample(i)?.load()?;
                m.apply(&mut sample);
                Ok(sample)
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let batch = Batch {
            indices,
            mirrors,
            samples,
        };
        let tb = to_tensors(&batch, &self.vae.normalizer, device)?;
        let u = self.vae.decode_unmasked(self.scales.latent(x0, mu2d), &tb);
        Ok(weights.loss(u, tb.mask, tb.dxyz))
    }
}

/// The batches of one step that a device computes: its replica of the network (set for
/// each step) and its own physics context.
struct Worker<'a> {
    model: Option<UNet>,
    physics: Option<PhysicsContext<'a>>,
    /// The autodiff device the replica lives on.
    device: Device,
}

/// The cached latents of one split, scaled, with latent-resolution geometry: one entry
/// per (sample, mirror), `views` consecutive entries per sample.
struct Split {
    /// The dataset index of each entry.
    indices: Vec<usize>,
    mirrors: Vec<Mirror>,
    views: usize,
    target: Vec<TensorData>,
    cond: Vec<TensorData>,
    geometry: Vec<TensorData>,
}

impl Split {
    fn samples(&self) -> usize {
        self.indices.len() / self.views
    }
}

/// Trains the latent predictor on the dataset's latent cache of `vae_dir` (computing the
/// cache when it is missing) into `out`. The first of `devices` holds the model, caches
/// and validates; with several, each optimiser step's `accumulation` batches are computed
/// in parallel ([`parallel`](super::parallel)), with the same result as on one device.
#[allow(clippy::too_many_arguments)] // one per CLI input of `fiberflow train diffusion`
pub fn train_diffusion(
    devices: &[Device],
    dataset_dir: &Path,
    vae_dir: &Path,
    out: &Path,
    mut cfg: DiffusionTrainConfig,
    resume: bool,
    observer: &mut dyn DiffusionObserver,
) -> Result<DiffusionRunLog, ModelError> {
    cfg.validate()?;
    // A config file without the field means the default (folded); only logs written before
    // it existed read as averaged (`reconcile_older_run`).
    cfg.fold_features.get_or_insert(true);
    cfg.mirror_augmentation.get_or_insert(false);
    parallel::check_devices(devices.len(), cfg.accumulation)?;
    let device = &devices[0];
    let vae = DualVae::load(vae_dir, device)?;
    let dataset = fit_config(&mut cfg, &vae, dataset_dir)?;
    // Before any encoding: a run resumed with another configuration is refused at once.
    let resumed = checkpoint::resume_from::<DiffusionRunLog>(out, resume)?;
    if let Some((_, saved)) = &resumed {
        check_same_config(&saved.config, &cfg, out)?;
    }
    let (train, val, scales) = latent_splits(&dataset, &vae, &cfg, device, observer)?;
    let schedule = cfg.diffusion.init()?;
    let ads: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let mut workers = workers(&ads, &cfg, vae_dir, &dataset, scales)?;

    std::fs::create_dir_all(out).map_err(|e| ModelError::checkpoint(out, e))?;
    device.seed(cfg.seed);
    let optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let mut state = TrainState::new(cfg.unet.init(&ads[0])?, optim);
    let mut log = DiffusionRunLog {
        config: cfg.clone(),
        vae: vae.stage2_dir.clone(),
        vae_key: vae.key.clone(),
        dataset: dataset.dir.clone(),
        dataset_manifest_sha256: vae.dataset_manifest_sha256.clone(),
        dxyz: Some(dataset.manifest.header.voxel_size.as_array()),
        scales,
        history: Vec::new(),
        best_epoch: None,
        best_val_error: f64::INFINITY,
        val_physics_truth: PhysicsMetrics::default(),
        parameters: state.model.num_params(),
    };
    if let Some((dir, mut saved)) = resumed {
        saved.config.reconcile_older_run();
        check_same_inputs(&saved, &log, out)?;
        state = state.load(&dir)?;
        log = saved;
        write_json(&out.join(LOG_FILE), &log)?;
    }
    let validation = Validation::new((&schedule, &cfg, &val), (&vae, scales), &dataset, device)?;
    log.val_physics_truth = truth_physics(&vae, &validation.batches, device)?;
    let epochs = EpochRun::new((&schedule, &cfg, &train), &ads[0]);
    let run = (out, cfg.epochs);
    run_epochs(
        run,
        &mut log,
        state,
        observer,
        |state, epoch, _, observer| {
            let started = Instant::now();
            let (state, trained) = epochs.train(state, &mut workers, epoch, observer)?;
            let record = epochs.record(epoch, trained, validation.score(&state.ema)?, started);
            let error = record.val_errors.relative_l2_total_normalised;
            Ok((state, record, error))
        },
        |o, r| o.epoch(r),
    )?;
    Ok(log)
}

/// A run in `out` resumes only on the VAE and latent scales (so the dataset) it started
/// with, which `fresh` holds.
fn check_same_inputs(
    saved: &DiffusionRunLog,
    fresh: &DiffusionRunLog,
    out: &Path,
) -> Result<(), ModelError> {
    if saved.vae_key != fresh.vae_key || saved.scales != fresh.scales {
        return Err(ModelError::Config(format!(
            "{} was trained with another VAE or dataset; resume with the same --vae and --dataset, or train into a new --out",
            out.display()
        )));
    }
    Ok(())
}

/// Fits `cfg` to the VAE's latent and checks it against the dataset, which it opens
/// (with the config's sample limits).
fn fit_config(
    cfg: &mut DiffusionTrainConfig,
    vae: &DualVae,
    dataset_dir: &Path,
) -> Result<Dataset, ModelError> {
    let f = vae.config.downsample_factor();
    cfg.fit_to_latent(vae.config.latent_channels, f);
    cfg.validate()?;
    let dataset = Dataset::open(dataset_dir)?.with_limits(cfg.train_samples, cfg.val_samples)?;
    let shape = dataset.manifest.header.shape;
    cfg.unet.check_input([
        1,
        cfg.unet.in_channels,
        shape.slices,
        shape.height / f,
        shape.width / f,
    ])?;
    cfg.check_dataset(&dataset)?;
    Ok(dataset)
}

/// A run in `out` resumes only with the configuration it started with (`saved`, read as
/// today's fields where it predates some).
fn check_same_config(
    saved: &DiffusionTrainConfig,
    cfg: &DiffusionTrainConfig,
    out: &Path,
) -> Result<(), ModelError> {
    let mut saved = saved.clone();
    saved.reconcile_older_run();
    if saved == *cfg {
        return Ok(());
    }
    Err(ModelError::Config(format!(
        "{} was trained with another configuration (pressure_condition = {}, fold_features = {}, mirror_augmentation = {}); resume with the same one, or train into a new --out",
        out.display(),
        saved.pressure_condition,
        saved.conditioning().fold,
        saved.mirrors()
    )))
}

/// The training and validation splits from the dataset's latent cache (encoded first
/// where missing, mirrored training views too when augmenting), as residuals when the
/// config asks, scaled to unit standard deviation by the training split's scales.
fn latent_splits(
    dataset: &Dataset,
    vae: &DualVae,
    cfg: &DiffusionTrainConfig,
    device: &Device,
    observer: &mut dyn DiffusionObserver,
) -> Result<(Split, Split, LatentScales), ModelError> {
    let cache = match LatentCache::open(dataset, vae)? {
        Some(c) => c,
        None => encode_dataset(vae, dataset, device, observer)?,
    };
    let conditioning = cfg.conditioning();
    if cfg.mirrors() {
        let indices = dataset.indices(Some(Subset::Train));
        cache.encode_mirrors(vae, dataset, &indices, device, observer)?;
    }
    let train_views = (dataset, &cache, vae, cfg.mirrors());
    let mut train = load_split(train_views, Subset::Train, conditioning, device)?;
    let val_views = (dataset, &cache, vae, false);
    let mut val = load_split(val_views, Subset::Val, conditioning, device)?;
    if train.indices.is_empty() || val.indices.is_empty() {
        return Err(ModelError::Input(
            "the train and validation splits must both hold samples; generate more".into(),
        ));
    }
    if cfg.residual {
        for split in [&mut train, &mut val] {
            for (t, c) in split.target.iter_mut().zip(&split.cond) {
                *t = combine(t, c, |a, b| a - b);
            }
        }
    }
    let scales = LatentScales {
        residual: cfg.residual,
        target: std_of(&train.target)?,
        condition: std_of(&train.cond)?,
    };
    for split in [&mut train, &mut val] {
        scale(&mut split.target, scales.target);
        scale(&mut split.cond, scales.condition);
    }
    Ok((train, val, scales))
}

/// One worker per autodiff device, each with its own frozen VAE for the physics losses.
fn workers<'a>(
    ads: &[Device],
    cfg: &DiffusionTrainConfig,
    vae_dir: &Path,
    dataset: &'a Dataset,
    scales: LatentScales,
) -> Result<Vec<Worker<'a>>, ModelError> {
    ads.iter()
        .map(|a| {
            let physics = if cfg.physics.enabled() {
                Some(PhysicsContext {
                    vae: DualVae::load(vae_dir, a)?,
                    dataset,
                    scales,
                })
            } else {
                None
            };
            Ok(Worker {
                model: None,
                physics,
                device: a.clone(),
            })
        })
        .collect()
}

/// What one epoch of optimiser steps adds up.
struct EpochTotals {
    loss_sum: f64,
    /// Sum and count of the physics losses, on the steps that computed them.
    physics: (f64, usize),
    /// Global gradient norm of each step, before clipping.
    norms: Vec<f64>,
    /// The last step's learning rate.
    lr: f64,
}

/// The epochs of a run: the training split, what a step needs and the step counts.
struct EpochRun<'a> {
    schedule: &'a NoiseSchedule,
    cfg: &'a DiffusionTrainConfig,
    train: &'a Split,
    /// The main autodiff device, which holds the model.
    ad: &'a Device,
    batches: usize,
    steps_per_epoch: usize,
    total_steps: usize,
}

impl<'a> EpochRun<'a> {
    fn new(
        (schedule, cfg, train): (&'a NoiseSchedule, &'a DiffusionTrainConfig, &'a Split),
        ad: &'a Device,
    ) -> Self {
        let batches = train.samples().div_ceil(cfg.batch_size);
        let steps_per_epoch = batches.div_ceil(cfg.accumulation);
        Self {
            schedule,
            cfg,
            train,
            ad,
            batches,
            steps_per_epoch,
            total_steps: steps_per_epoch * cfg.epochs,
        }
    }

    /// Epoch `epoch`: every training sample once, in an order and with draws that depend
    /// on (seed, epoch) only, each step's `accumulation` batches shared among `workers`.
    fn train<O: DiffusionObserver + ?Sized>(
        &self,
        mut state: TrainState<UNet>,
        workers: &mut [Worker],
        epoch: usize,
        observer: &mut O,
    ) -> Result<(TrainState<UNet>, EpochTotals), ModelError> {
        let cfg = self.cfg;
        let mut rng = seeded_rng(cfg.seed);
        rng.set_stream(1 + epoch as u64);
        let order = epoch_order(self.train.samples(), self.train.views, &mut rng);
        let mut totals = EpochTotals {
            loss_sum: 0.0,
            physics: (0.0, 0),
            norms: Vec::new(),
            lr: 0.0,
        };
        let settings = optimiser_settings!(cfg, accumulation: cfg.accumulation);
        let chunks: Vec<&[usize]> = order.chunks(cfg.batch_size).collect();
        for (step_in_epoch, group) in chunks.chunks(cfg.accumulation).enumerate() {
            let step = epoch * self.steps_per_epoch + step_in_epoch;
            let first = step_in_epoch * cfg.accumulation;
            // Each batch's draws come from its own generator, seeded in batch order.
            let jobs: Vec<(usize, &[usize], ChaCha8Rng)> = group
                .iter()
                .enumerate()
                .map(|(k, chunk)| (first + k, *chunk, ChaCha8Rng::from_rng(&mut rng)))
                .collect();
            for (w, worker) in workers.iter_mut().enumerate() {
                worker.model = Some(parallel::replica(&state.model, w, &worker.device));
            }
            let outputs = self.losses(workers, jobs, (epoch, step))?;
            let mut accumulator = GradientsAccumulator::<UNet>::new();
            for (k, (grads, value, physics_value)) in outputs.into_iter().enumerate() {
                totals.loss_sum += value;
                if let Some(p) = physics_value {
                    totals.physics = (totals.physics.0 + p, totals.physics.1 + 1);
                }
                accumulator.accumulate(&state.model, grads);
                observer.batch(epoch, first + k, self.batches, value);
            }
            for worker in workers.iter_mut() {
                worker.model = None;
            }
            let norm;
            let steps = (step, self.total_steps);
            (state, norm, totals.lr) = state.step(accumulator.grads(), steps, &settings);
            totals.norms.push(norm);
        }
        Ok((state, totals))
    }

    /// The history record of epoch `epoch`, started at `started`: its training totals
    /// and its validation (loss, decoded errors, physics terms).
    fn record(
        &self,
        epoch: usize,
        trained: EpochTotals,
        (val_loss, val_errors, val_physics): (f64, FieldErrors, PhysicsMetrics),
        started: Instant,
    ) -> DiffusionEpoch {
        let (physics_sum, physics_steps) = trained.physics;
        DiffusionEpoch {
            epoch,
            steps: (epoch + 1) * self.steps_per_epoch,
            lr: trained.lr,
            train_loss: trained.loss_sum / self.batches as f64,
            train_physics: (physics_steps > 0).then(|| physics_sum / physics_steps as f64),
            val_loss,
            val_errors,
            val_physics,
            mean_grad_norm: trained.norms.iter().sum::<f64>() / trained.norms.len().max(1) as f64,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Each job's loss (with the physics terms on the steps that take them) on its
    /// worker's replica: gradients scaled for the accumulation, value, physics value.
    fn losses(
        &self,
        workers: &mut [Worker],
        jobs: Vec<(usize, &[usize], ChaCha8Rng)>,
        (epoch, step): (usize, usize),
    ) -> Result<Vec<(GradientsParams, f64, Option<f64>)>, ModelError> {
        let (cfg, schedule, train) = (self.cfg, self.schedule, self.train);
        let with_physics = step % cfg.physics.every == 0;
        let n = jobs.len() as f64;
        parallel::run_sharded(workers, jobs, |w, (b, chunk, mut rng)| {
            let unet = w.model.as_ref().expect("set for this step");
            let physics = w.physics.as_ref().filter(|_| with_physics);
            let losses = batch_loss(
                unet, schedule, cfg, train, chunk, &mut rng, true, physics, &w.device,
            )?;
            let value = losses.prediction.clone().into_scalar::<f64>();
            let physics_value = losses.physics.clone().map(|p| p.into_scalar::<f64>());
            if !(value.is_finite() && physics_value.is_none_or(f64::is_finite)) {
                return Err(ModelError::Input(format!(
                    "training loss became {value} (physics {physics_value:?}) at epoch {epoch}, batch {b}; lower lr or the physics weights"
                )));
            }
            let loss = match losses.physics {
                Some(p) => losses.prediction + p,
                None => losses.prediction,
            };
            let grads = parallel::gradients(loss.div_scalar(n), unet, self.ad);
            Ok((grads, value, physics_value))
        })
    }
}

/// What an epoch's validation needs: the validation split's latents and samples, the
/// frozen VAE and the latent scales.
struct Validation<'a> {
    schedule: &'a NoiseSchedule,
    cfg: &'a DiffusionTrainConfig,
    val: &'a Split,
    vae: &'a DualVae,
    scales: LatentScales,
    batches: Vec<Batch>,
    device: &'a Device,
}

impl<'a> Validation<'a> {
    fn new(
        (schedule, cfg, val): (&'a NoiseSchedule, &'a DiffusionTrainConfig, &'a Split),
        (vae, scales): (&'a DualVae, LatentScales),
        dataset: &Dataset,
        device: &'a Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            schedule,
            cfg,
            val,
            vae,
            scales,
            batches: val_batches(dataset)?,
            device,
        })
    }

    /// The EMA weights' validation loss, decoded errors and physics terms.
    fn score(&self, ema: &UNet) -> Result<(f64, FieldErrors, PhysicsMetrics), ModelError> {
        let cfg = self.cfg;
        let val_loss = validation_loss(ema, self.schedule, cfg, self.val, self.device)?;
        let predictor = LatentPredictor {
            unet: ema,
            schedule: self.schedule,
            kind: cfg.predictor,
        };
        let options = SampleOptions {
            sampler: cfg.val_sampler.clone(),
            guidance: 0.0,
        };
        let (errors, physics) = decoded_scores(
            &predictor,
            self.vae,
            &self.scales,
            &self.batches,
            &options,
            cfg.seed,
            cfg.conditioning(),
            self.device,
        )?;
        Ok((val_loss, errors, physics))
    }
}

/// The losses of one batch.
struct BatchLoss {
    /// On the network's output (ε, v or the direct latent).
    prediction: Tensor<1>,
    /// Weighted physics terms of the decoded x̂0, when asked for.
    physics: Option<Tensor<1>>,
}

/// The losses of the samples `chunk` of `split`; `train` enables the condition dropout,
/// `physics` adds the physics losses of the decoded x̂0.
#[allow(clippy::too_many_arguments)] // training and validation pass the same inputs differently
fn batch_loss(
    model: &UNet,
    schedule: &NoiseSchedule,
    cfg: &DiffusionTrainConfig,
    split: &Split,
    chunk: &[usize],
    rng: &mut ChaCha8Rng,
    train: bool,
    physics: Option<&PhysicsContext>,
    device: &Device,
) -> Result<BatchLoss, ModelError> {
    let stack = |v: &[TensorData]| -> Tensor<5> {
        Tensor::cat(
            chunk
                .iter()
                .map(|&i| Tensor::<4>::from_data(v[i].clone(), device).unsqueeze_dim::<5>(0))
                .collect(),
            0,
        )
    };
    let (x0, mut cond, geometry) = (
        stack(&split.target),
        stack(&split.cond),
        stack(&split.geometry),
    );
    let n = chunk.len();
    // The E2D latent itself, for decoding: dropout hides it from the network only.
    let mu2d = physics.map(|p| cond.clone().mul_scalar(p.scales.condition));
    if train && cfg.cond_dropout > 0.0 {
        let keep: Vec<f32> = (0..n)
            .map(|_| f32::from(u8::from(rng.random::<f64>() >= cfg.cond_dropout)))
            .collect();
        cond = cond * Tensor::<1>::from_floats(keep.as_slice(), device).reshape([n, 1, 1, 1, 1]);
    }
    let (prediction, x0_hat) = match cfg.predictor {
        PredictorKind::Direct => {
            let pred = model.forward(Tensor::cat(vec![cond, geometry], 1), None)?;
            ((pred.clone() - x0).square().mean(), pred)
        }
        PredictorKind::Diffusion => {
            let t = schedule.sample_timesteps(n, rng);
            let noise = standard_normal(x0.dims(), rng, device);
            let x_t = schedule.add_noise(x0.clone(), noise.clone(), &t)?;
            let target = schedule.target(x0, noise, &t)?;
            let times: Vec<f32> = t.iter().map(|&t| t as f32).collect();
            let pred = model.forward(
                Tensor::cat(vec![x_t.clone(), cond, geometry], 1),
                Some(Tensor::<1>::from_floats(times.as_slice(), device)),
            )?;
            // Clamped as the samplers clamp it, so that an ε-model's x̂0 at large t (×1/α,
            // up to ≈ 160) does not swamp the physics gradient.
            let x0_hat = schedule.clip(schedule.x0_from(pred.clone(), x_t, &t)?);
            (cfg.diffusion.loss.compute(pred, target)?, x0_hat)
        }
    };
    let physics = match (physics, mu2d) {
        (Some(p), Some(mu2d)) => {
            Some(p.loss(&cfg.physics, x0_hat, mu2d, (split, chunk), device)?)
        }
        _ => None,
    };
    Ok(BatchLoss {
        prediction,
        physics,
    })
}

/// Mixed into the run seed for the validation draws, so they differ from training's.
const VALIDATION_SEED: u64 = 0x5EED_0F0A;

/// Mean loss over the validation samples, each with its own fixed (t, ε) drawn from a
/// generator seeded by the run seed and the sample, so the value is comparable epoch to
/// epoch (the reference validated with fresh, unseeded noise).
fn validation_loss(
    model: &UNet,
    schedule: &NoiseSchedule,
    cfg: &DiffusionTrainConfig,
    val: &Split,
    device: &Device,
) -> Result<f64, ModelError> {
    let mut sum = 0.0;
    for i in 0..val.indices.len() {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ VALIDATION_SEED);
        rng.set_stream(val.indices[i] as u64);
        let loss = batch_loss(
            model,
            schedule,
            cfg,
            val,
            &[i],
            &mut rng,
            false,
            None,
            device,
        )?;
        sum += loss.prediction.into_scalar::<f64>();
    }
    Ok(sum / val.indices.len() as f64)
}

/// Relative errors of the decoded, de-normalised, masked prediction against U, and the
/// mean physics terms of the unmasked decoded flow, one sample at a time with noise
/// seeded by (seed, sample index). Errors are over normalised components, so the total
/// weighs vz like vx.
#[allow(clippy::too_many_arguments)] // the latent predictor's inference inputs, one by one
pub fn decoded_scores(
    predictor: &LatentPredictor,
    vae: &DualVae,
    scales: &LatentScales,
    batches: &[Batch],
    options: &SampleOptions,
    seed: u64,
    conditioning: Conditioning,
    device: &Device,
) -> Result<(FieldErrors, PhysicsMetrics), ModelError> {
    let mut sums = ErrorSums::default();
    let mut physics = Vec::new();
    for batch in batches {
        let tb = to_tensors(batch, &vae.normalizer, device)?;
        let inputs = ConditionInputs::new(vae, &tb, scales, conditioning)?;
        let mut rng = seeded_rng(seed);
        rng.set_stream(batch.indices[0] as u64);
        let x0 = predictor.sample(inputs.cond, inputs.geometry, options, &mut rng)?;
        let u = vae.decode_unmasked(scales.latent(x0, inputs.mu2d), &tb);
        physics.push(PhysicsMetrics::measure(u.clone(), tb.mask.clone(), tb.dxyz));
        let u = u * tb.mask.clone();
        sums.add(vae.normalizer.normalize(u), tb.u.clone(), tb.mask.clone());
    }
    Ok((sums.errors(), PhysicsMetrics::mean(&physics)))
}

/// Mean physics terms of the true flows of `batches`.
fn truth_physics(
    vae: &DualVae,
    batches: &[Batch],
    device: &Device,
) -> Result<PhysicsMetrics, ModelError> {
    let all = batches
        .iter()
        .map(|batch| {
            let tb = to_tensors(batch, &vae.normalizer, device)?;
            let u = vae.normalizer.denormalize(tb.u) * tb.mask.clone();
            Ok(PhysicsMetrics::measure(u, tb.mask, tb.dxyz))
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    Ok(PhysicsMetrics::mean(&all))
}

/// Validation samples one per batch, in a fixed order.
pub(crate) fn val_batches(dataset: &Dataset) -> Result<Vec<Batch>, ModelError> {
    let loader = Loader::new(dataset, Some(Subset::Val), LoaderConfig::sequential())?;
    Ok(loader.epoch(0).collect::<Result<Vec<_>, _>>()?)
}

/// The split entries of one epoch: every sample once, shuffled, each through one of its
/// `views` views drawn uniformly (entry `sample · views + view`). With one view the
/// generator is used exactly as before augmentation existed, so such runs reproduce.
pub(crate) fn epoch_order(samples: usize, views: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..samples).collect();
    order.shuffle(rng);
    if views > 1 {
        for entry in &mut order {
            *entry = *entry * views + rng.random_range(0..views);
        }
    }
    order
}

/// The dataset, its latent cache, the VAE and whether to load the mirrored views too.
type Sources<'a> = (&'a Dataset, &'a LatentCache, &'a DualVae, bool);

/// Latents and latent-resolution condition features (geometry, then the pressure change
/// when asked) of a split, unscaled, for each sample and, when asked, each of its eight
/// mirror images. Held in memory, so the total is checked against the memory budget
/// before the second sample is read.
fn load_split(
    (dataset, cache, vae, mirrored): Sources,
    subset: Subset,
    conditioning: Conditioning,
    device: &Device,
) -> Result<Split, ModelError> {
    let views: Vec<Mirror> = if mirrored {
        Mirror::all().collect()
    } else {
        vec![Mirror::default()]
    };
    let mut split = Split {
        indices: Vec::new(),
        mirrors: Vec::new(),
        views: views.len(),
        target: Vec::new(),
        cond: Vec::new(),
        geometry: Vec::new(),
    };
    let indices = dataset.indices(Some(subset));
    for (n, &i) in indices.iter().enumerate() {
        let sample = dataset.open_sample(i)?.load()?;
        for &mirror in &views {
            let latents = cache.load_mirrored(i, mirror)?;
            let mut image = sample.clone();
            mirror.apply(&mut image);
            split.indices.push(i);
            split.mirrors.push(mirror);
            split.target.push(latents.mu3d);
            split.cond.push(latents.mu2d);
            split
                .geometry
                .push(latent_geometry(vae, image, conditioning, device)?);
        }
        if n == 0 {
            let entry: usize = [&split.target[0], &split.cond[0], &split.geometry[0]]
                .iter()
                .map(|t| t.num_elements() * 4)
                .sum();
            let total = (entry as u128) * (indices.len() * views.len()) as u128;
            fiberflow_data::budget::check(
                format!(
                    "holding the latents and features of {} samples × {} views",
                    indices.len(),
                    views.len()
                ),
                Some(total),
            )
            .map_err(|e| ModelError::Input(e.to_string()))?;
        }
    }
    Ok(split)
}

/// The latent-resolution condition features of one (mirrored) sample, through the same
/// tensors and function as sampling, so training and prediction cannot disagree on the
/// features or their order.
fn latent_geometry(
    vae: &DualVae,
    sample: fiberflow_data::Sample,
    conditioning: Conditioning,
    device: &Device,
) -> Result<TensorData, ModelError> {
    let batch = Batch {
        indices: vec![0],
        samples: vec![sample],
        mirrors: vec![Mirror::default()],
    };
    let tb = to_tensors(&batch, &vae.normalizer, device)?;
    let features = condition_features(&tb, conditioning.pressure)?;
    let g = conditioning
        .to_latent_grid(features, vae.config.downsample_factor())
        .squeeze_dim::<4>(0);
    Ok(g.into_data())
}

/// Population standard deviation of all values.
fn std_of(data: &[TensorData]) -> Result<f64, ModelError> {
    let (mut n, mut s, mut s2) = (0f64, 0f64, 0f64);
    for d in data {
        for &v in d
            .as_slice::<f32>()
            .map_err(|e| ModelError::Input(format!("{e:?}")))?
        {
            let v = f64::from(v);
            n += 1.0;
            s += v;
            s2 += v * v;
        }
    }
    let var = s2 / n - (s / n).powi(2);
    if !(var.is_finite() && var > 0.0) {
        return Err(ModelError::Input(
            "the cached latents are constant or not finite; retrain the VAE".into(),
        ));
    }
    Ok(var.sqrt())
}

/// Elementwise `op(a, b)` of two f32 tensors of the same shape.
fn combine(a: &TensorData, b: &TensorData, op: impl Fn(f32, f32) -> f32) -> TensorData {
    let (x, y) = (
        a.as_slice::<f32>().expect("f32 latents"),
        b.as_slice::<f32>().expect("f32 latents"),
    );
    let v: Vec<f32> = x.iter().zip(y).map(|(&x, &y)| op(x, y)).collect();
    TensorData::new(v, a.shape().to_vec())
}

fn scale(data: &mut [TensorData], factor: f64) {
    for d in data.iter_mut() {
        let v: Vec<f32> = d
            .as_slice::<f32>()
            .expect("f32 latents")
            .iter()
            .map(|&x| (f64::from(x) / factor) as f32)
            .collect();
        *d = TensorData::new(v, d.shape().to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_sees_every_sample_once_through_one_of_its_views() {
        let mut a = seeded_rng(5);
        let mut b = seeded_rng(5);
        let plain = epoch_order(10, 1, &mut a);
        let mut shuffled: Vec<usize> = (0..10).collect();
        shuffled.shuffle(&mut b);
        // One view: the same draws as a plain shuffle, and the generator left alike.
        assert_eq!(plain, shuffled);
        assert_eq!(a.random::<u64>(), b.random::<u64>());

        let mut views_seen = [0usize; 8];
        for epoch in 0..20 {
            let mut rng = seeded_rng(5);
            rng.set_stream(epoch);
            let order = epoch_order(10, 8, &mut rng);
            let mut samples: Vec<usize> = order.iter().map(|e| e / 8).collect();
            samples.sort_unstable();
            assert_eq!(samples, (0..10).collect::<Vec<_>>());
            for e in order {
                views_seen[e % 8] += 1;
            }
        }
        // 200 draws over 8 views: every view is drawn, none dominates.
        assert!(
            views_seen.iter().all(|&n| (10..=45).contains(&n)),
            "{views_seen:?}"
        );
    }
}
