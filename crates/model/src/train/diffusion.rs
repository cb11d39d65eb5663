//! Training of the latent predictor — the conditional denoiser of the latent diffusion
//! model (Rombach et al., CVPR 2022) or the direct latent conditioner — on the latent
//! cache of a frozen dual VAE. Every sample gets one timestep for all its slices (the
//! reference drew one per slice and denoised slices independently).
//!
//! Run folder: `log.json` (config, VAE reference by path and key, latent scales, history),
//! `best_model.bpk` (EMA weights of the epoch with the lowest decoded-velocity validation
//! error), `checkpoint/` (model, EMA, optimiser, state) written atomically for `--resume`.
//! The VAE is referenced, never copied.

use super::clip::clip_global_norm;
use super::ema;
use super::parallel;
use super::schedule;
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
use crate::unet::UNet;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator};
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
        split: &Split,
        chunk: &[usize],
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
#[allow(clippy::too_many_arguments)]
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
    let cz = vae.config.latent_channels;
    cfg.fit_to_latent(cz, vae.config.downsample_factor());
    cfg.validate()?;
    let dataset = Dataset::open(dataset_dir)?.with_limits(cfg.train_samples, cfg.val_samples)?;
    let shape = dataset.manifest.header.shape;
    let f = vae.config.downsample_factor();
    cfg.unet.check_input([
        1,
        cfg.unet.in_channels,
        shape.slices,
        shape.height / f,
        shape.width / f,
    ])?;
    cfg.check_dataset(&dataset)?;
    // Before any encoding: a run resumed with another configuration is refused at once.
    let resumed = checkpoint::resume_from::<DiffusionRunLog>(out, resume)?;
    if let Some((_, saved)) = &resumed {
        let mut saved = saved.config.clone();
        saved.reconcile_older_run();
        if saved != cfg {
            return Err(ModelError::Config(format!(
                "{} was trained with another configuration (pressure_condition = {}, fold_features = {}, mirror_augmentation = {}); resume with the same one, or train into a new --out",
                out.display(),
                saved.pressure_condition,
                saved.conditioning().fold,
                saved.mirrors()
            )));
        }
    }
    let cache = match LatentCache::open(&dataset, &vae)? {
        Some(c) => c,
        None => encode_dataset(&vae, &dataset, device, observer)?,
    };
    let conditioning = cfg.conditioning();
    if cfg.mirrors() {
        let indices = dataset.indices(Some(Subset::Train));
        cache.encode_mirrors(&vae, &dataset, &indices, device, observer)?;
    }
    let train_views = (&dataset, &cache, &vae, cfg.mirrors());
    let mut train = load_split(train_views, Subset::Train, conditioning, device)?;
    let mut val = load_split(
        (&dataset, &cache, &vae, false),
        Subset::Val,
        conditioning,
        device,
    )?;
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
    let schedule = cfg.diffusion.init()?;
    let ads: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let ad = ads[0].clone();
    // One worker per device, each with its own frozen VAE for the physics losses.
    let mut workers = ads
        .iter()
        .map(|a| {
            let physics = if cfg.physics.enabled() {
                Some(PhysicsContext {
                    vae: DualVae::load(vae_dir, a)?,
                    dataset: &dataset,
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
        .collect::<Result<Vec<_>, ModelError>>()?;

    std::fs::create_dir_all(out).map_err(|e| ModelError::checkpoint(out, e))?;
    device.seed(cfg.seed);
    let mut model = cfg.unet.init(&ad)?;
    let mut ema_model = model.valid();
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
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
        parameters: model.num_params(),
    };
    if let Some((dir, mut saved)) = resumed {
        saved.config.reconcile_older_run();
        if saved.vae_key != log.vae_key || saved.scales != log.scales {
            return Err(ModelError::Config(format!(
                "{} was trained with another VAE or dataset; resume with the same --vae and --dataset, or train into a new --out",
                out.display()
            )));
        }
        (model, ema_model, optim) = checkpoint::load_state(&dir, model, ema_model, optim)?;
        log = saved;
        write_json(&out.join(LOG_FILE), &log)?;
    }

    let val_batches = val_batches(&dataset)?;
    log.val_physics_truth = truth_physics(&vae, &val_batches, device)?;
    let batches = train.samples().div_ceil(cfg.batch_size);
    let steps_per_epoch = batches.div_ceil(cfg.accumulation);
    let total_steps = steps_per_epoch * cfg.epochs;
    for epoch in log.history.len()..cfg.epochs {
        let started = Instant::now();
        let mut rng = seeded_rng(cfg.seed);
        rng.set_stream(1 + epoch as u64);
        let order = epoch_order(train.samples(), train.views, &mut rng);
        let (mut loss_sum, mut norms, mut lr) = (0.0, Vec::new(), 0.0);
        let mut physics_sums = (0.0, 0usize);
        let chunks: Vec<&[usize]> = order.chunks(cfg.batch_size).collect();
        for (step_in_epoch, group) in chunks.chunks(cfg.accumulation).enumerate() {
            let step = epoch * steps_per_epoch + step_in_epoch;
            let with_physics = step % cfg.physics.every == 0;
            let first = step_in_epoch * cfg.accumulation;
            // Each batch's draws come from its own generator, seeded in batch order.
            let jobs: Vec<(usize, &[usize], ChaCha8Rng)> = group
                .iter()
                .enumerate()
                .map(|(k, chunk)| (first + k, *chunk, ChaCha8Rng::from_rng(&mut rng)))
                .collect();
            for (w, worker) in workers.iter_mut().enumerate() {
                worker.model = Some(parallel::replica(&model, w, &worker.device));
            }
            let n = group.len() as f64;
            let outputs = parallel::run_sharded(&mut workers, jobs, |w, (b, chunk, mut rng)| {
                let unet = w.model.as_ref().expect("set for this step");
                let physics = w.physics.as_ref().filter(|_| with_physics);
                let losses = batch_loss(
                    unet, &schedule, &cfg, &train, chunk, &mut rng, true, physics, &w.device,
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
                let grads = parallel::gradients(loss.div_scalar(n), unet, &ad);
                Ok((grads, value, physics_value))
            })?;
            let mut accumulator = GradientsAccumulator::<UNet>::new();
            for (k, (grads, value, physics_value)) in outputs.into_iter().enumerate() {
                loss_sum += value;
                if let Some(p) = physics_value {
                    physics_sums = (physics_sums.0 + p, physics_sums.1 + 1);
                }
                accumulator.accumulate(&model, grads);
                observer.batch(epoch, first + k, batches, value);
            }
            for worker in &mut workers {
                worker.model = None;
            }
            let mut grads = accumulator.grads();
            norms.push(clip_global_norm(&model, &mut grads, cfg.grad_clip));
            lr = schedule::learning_rate(step, total_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr);
            model = optim.step(lr, model, grads);
            let decay = ema::warmup_decay(step as u64, cfg.ema_decay);
            ema_model = ema::update(ema_model, &model.valid(), decay);
        }
        let val_loss = validation_loss(&ema_model, &schedule, &cfg, &val, device)?;
        let predictor = LatentPredictor {
            unet: &ema_model,
            schedule: &schedule,
            kind: cfg.predictor,
        };
        let options = SampleOptions {
            sampler: cfg.val_sampler.clone(),
            guidance: 0.0,
        };
        let (val_errors, val_physics) = decoded_scores(
            &predictor,
            &vae,
            &scales,
            &val_batches,
            &options,
            cfg.seed,
            cfg.conditioning(),
            device,
        )?;
        let record = DiffusionEpoch {
            epoch,
            steps: (epoch + 1) * steps_per_epoch,
            lr,
            train_loss: loss_sum / batches as f64,
            train_physics: (physics_sums.1 > 0).then(|| physics_sums.0 / physics_sums.1 as f64),
            val_loss,
            val_errors,
            val_physics,
            mean_grad_norm: norms.iter().sum::<f64>() / norms.len().max(1) as f64,
            seconds: started.elapsed().as_secs_f64(),
        };
        let error = val_errors.relative_l2_total_normalised;
        let modules = (&model, &ema_model, &optim);
        let record = checkpoint::close_epoch(out, &mut log, (epoch, record, error), modules)?;
        if observer.epoch(record).is_break() {
            break;
        }
    }
    Ok(log)
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
#[allow(clippy::too_many_arguments)]
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
        (Some(p), Some(mu2d)) => Some(p.loss(&cfg.physics, x0_hat, mu2d, split, chunk, device)?),
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
#[allow(clippy::too_many_arguments)]
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
