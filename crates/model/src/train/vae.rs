//! Two-stage training of the dual-branch VAE.
//!
//! Stage 1 trains E3D + D3D on the 3D flow U (reconstruction + β·KL with warm-up).
//! Stage 2 freezes them and trains E2D + D2D on the 2D flow U_2d with
//! L = L_rec2d + λ_align·‖μ2d − μ3d‖² + λ_cross·L_rec(D3D(μ2d), U) (+ β_2d·KL_2d), so the 2D
//! latent carries what D3D needs to rebuild vz. The frozen E3D targets μ3d are computed
//! once per (sample, mirror) and cached, never recomputed.
//!
//! Optimiser steps use AdamW (Loshchilov & Hutter 2019) on gradients accumulated over
//! `accumulation` batches and clipped once by their global norm; the learning rate warms
//! up linearly and decays on a cosine. Every epoch ends with a deterministic validation
//! (z = μ) and an atomic checkpoint; a resumed run replays exactly (the loader order and
//! the sampling noise are functions of (seed, epoch)).

use crate::batch::{Normalizer, TensorBatch, to_tensors};
use crate::error::ModelError;
use crate::loss::{kl_divergence, normalized_mae, normalized_mse};
use crate::metrics::{ErrorSums, FieldErrors};
use crate::run::checkpoint::{self, BEST_FILE, Checkpointed, LOG_FILE};
use crate::train::runner::run_epochs;
use crate::train::{clip::clip_global_norm, ema, parallel, schedule};
use crate::vae::{Decoder, VaeBranch, reparameterize, standard_noise};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use fiberflow_data::json::{read_json, write_json};
use fiberflow_data::{Dataset, Loader, LoaderConfig, Mirror, Statistics, Subset};
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::run::vae::{EpochRecord, ReconLoss, RunLog, Stage, VaeTarget, VaeTrainConfig};

/// Peak bytes of a training run on `(S, H, W)` samples with `preloaded` samples held in
/// memory: the batch's activations kept for the backward pass, ≈ 512 bytes per voxel of the
/// first level per channel (measured 4.8 GiB for the reference widths, 220 MiB for the
/// full-resolution 8/16/32 design and 90 MiB for the patch-4 default, at batch 2 on
/// 64×64×11), that level having H·W/patch² pixels, plus 64 bytes per full-resolution voxel
/// for the fields and their gradients; preloaded samples hold 9 f32 per voxel (domain,
/// U_2d, U, p and p_2d). `None` on overflow.
fn memory_bytes(cfg: &VaeTrainConfig, voxels: [usize; 3], preloaded: usize) -> Option<u128> {
    use fiberflow_data::budget::array_bytes;
    let p = cfg.vae.patch();
    let per_voxel = (512 * cfg.vae.channels[0]).div_ceil(p * p) + 64;
    let activations = array_bytes(&[&[cfg.batch_size][..], &voxels].concat(), per_voxel)?;
    activations.checked_add(array_bytes(&[&[preloaded][..], &voxels].concat(), 36)?)
}

/// Refuses, before anything is loaded, a run whose [`memory_bytes`] exceed the budget.
fn check_memory(cfg: &VaeTrainConfig, dataset: &Dataset) -> Result<(), ModelError> {
    let shape = dataset.manifest.header.shape;
    let preloaded = if cfg.preload {
        dataset.indices(Some(Subset::Train)).len() + dataset.indices(Some(Subset::Val)).len()
    } else {
        0
    };
    let what = format!(
        "training on batches of {} samples of {}×{}×{}{}",
        cfg.batch_size,
        shape.slices,
        shape.height,
        shape.width,
        if cfg.preload {
            " with every sample preloaded"
        } else {
            ""
        }
    );
    let need = memory_bytes(cfg, [shape.slices, shape.height, shape.width], preloaded);
    fiberflow_data::budget::check(what, need).map_err(|e| ModelError::Config(e.to_string()))
}

/// Receives progress; all methods default to nothing. `epoch` is called after the epoch's
/// checkpoint is on disk and may stop the run there.
pub trait TrainObserver {
    fn batch(&mut self, _epoch: usize, _batch: usize, _batches: usize, _loss: f64) {}
    fn epoch(&mut self, _record: &EpochRecord) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// Trains stage 1 or 2 on `devices` into `out`, resuming from its checkpoint when `resume`
/// is set. The first device holds the model, validates and caches; with several, each
/// optimiser step's `accumulation` batches are computed in parallel
/// ([`parallel`](super::parallel)), with the same result as on one device.
#[allow(clippy::too_many_arguments)] // one per CLI input of `fiberflow train vae`
pub fn train_vae(
    devices: &[Device],
    stage: Stage,
    dataset_dir: &Path,
    stage1_dir: Option<&Path>,
    out: &Path,
    mut cfg: VaeTrainConfig,
    resume: bool,
    observer: &mut dyn TrainObserver,
) -> Result<RunLog, ModelError> {
    let stage1 = stage1_run(stage, stage1_dir, &mut cfg)?;
    cfg.validate()?;
    parallel::check_devices(devices.len(), cfg.accumulation)?;
    let device = &devices[0];
    let dataset = Dataset::open(dataset_dir)?.with_limits(cfg.train_samples, cfg.val_samples)?;
    let shape = dataset.manifest.header.shape;
    cfg.vae.check_input(shape.height, shape.width)?;
    check_memory(&cfg, &dataset)?;
    let manifest_sha256 = dataset.manifest.sha256(&dataset.dir)?;
    let normalizer = normalizer_for(stage1.as_ref(), &dataset, &manifest_sha256, &cfg)?;

    std::fs::create_dir_all(out).map_err(|e| ModelError::checkpoint(out, e))?;
    device.seed(cfg.seed);
    let ads: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let mut trainer = match &stage1 {
        None => Trainer::stage1(&cfg, &ads[0])?,
        Some((dir, _)) => Trainer::stage2(&cfg, device, &ads[0], &dir.join(BEST_FILE))?,
    };
    let mut log = RunLog {
        stage,
        config: cfg.clone(),
        normalizer,
        dataset: dataset.dir.clone(),
        dataset_manifest_sha256: manifest_sha256,
        stage1: stage1.map(|(d, _)| d),
        history: Vec::new(),
        best_epoch: None,
        best_val_loss: f64::INFINITY,
        parameters: trainer.model.num_params(),
    };
    if let Some((dir, saved)) = checkpoint::resume_from::<RunLog>(out, resume)? {
        check_resumable(&saved, &log, out)?;
        trainer.load(&dir)?;
        log = saved;
        // A kill between the checkpoint and log.json leaves the log one epoch behind.
        write_json(&out.join(LOG_FILE), &log)?;
    }
    let run = EpochRun::new(&dataset, &cfg, (device, &ads), &trainer, &normalizer)?;
    run_epochs(
        (out, cfg.epochs),
        &mut log,
        trainer,
        observer,
        |mut trainer, epoch, _, observer| {
            let started = Instant::now();
            // The sampling noise of each epoch depends on (seed, epoch) only.
            device.seed(cfg.seed.wrapping_add(1 + epoch as u64));
            let beta = schedule::kl_weight(epoch, cfg.kl_warmup_epochs, cfg.kl_start, cfg.kl_end);
            let (train, grad_norms, lr) = run.train(&mut trainer, (epoch, beta), observer)?;
            let (val, val_errors) = trainer.validate(&run.val, &cfg, device, &normalizer)?;
            let val_loss = val["loss"];
            let record = EpochRecord {
                epoch,
                steps: (epoch + 1) * run.steps_per_epoch,
                lr,
                kl_weight: beta,
                train,
                val_errors,
                mean_grad_norm: grad_norms.iter().sum::<f64>() / grad_norms.len().max(1) as f64,
                seconds: started.elapsed().as_secs_f64(),
                val,
            };
            Ok((trainer, record, val_loss))
        },
        |o, r| o.epoch(r),
    )?;
    Ok(log)
}

/// The finished stage-1 run that stage 2 builds on (absolute, so the diffusion stage finds
/// it from any working directory), whose architecture, normalisation and target `cfg`
/// takes over; `None` for stage 1.
fn stage1_run(
    stage: Stage,
    stage1_dir: Option<&Path>,
    cfg: &mut VaeTrainConfig,
) -> Result<Option<(PathBuf, RunLog)>, ModelError> {
    match (stage, stage1_dir) {
        (Stage::One, None) => Ok(None),
        (Stage::Two, Some(dir)) => {
            let log: RunLog = read_json(&dir.join(LOG_FILE), "train stage 1 first")?;
            if log.stage != Stage::One {
                return Err(ModelError::Config(format!(
                    "{} is a stage-2 run; --stage1 must name a stage-1 run",
                    dir.display()
                )));
            }
            if log.history.len() < log.config.epochs {
                return Err(ModelError::Config(format!(
                    "stage 1 in {} is unfinished ({} of {} epochs); finish it with --resume first",
                    dir.display(),
                    log.history.len(),
                    log.config.epochs
                )));
            }
            cfg.vae = log.config.vae.clone();
            cfg.normalization = log.config.normalization;
            cfg.target = log.config.target;
            Ok(Some((checkpoint::absolute(dir), log)))
        }
        (Stage::One, Some(_)) => Err(ModelError::Config("--stage1 is only for stage 2".into())),
        (Stage::Two, None) => Err(ModelError::Config(
            "stage 2 needs --stage1 DIR (a finished stage-1 run)".into(),
        )),
    }
}

/// Stage 1 normalises by the training split's statistics; stage 2 keeps stage 1's, which
/// must have been trained on the same dataset (manifest `manifest_sha256`).
fn normalizer_for(
    stage1: Option<&(PathBuf, RunLog)>,
    dataset: &Dataset,
    manifest_sha256: &str,
    cfg: &VaeTrainConfig,
) -> Result<Normalizer, ModelError> {
    match stage1 {
        Some((dir, log)) => {
            if log.dataset_manifest_sha256 != manifest_sha256 {
                return Err(ModelError::Config(format!(
                    "stage 1 ({}) was trained on another dataset (manifest {} ≠ {}); train stage 2 on the same dataset",
                    dir.display(),
                    log.dataset_manifest_sha256,
                    manifest_sha256
                )));
            }
            Ok(log.normalizer)
        }
        None => Normalizer::from_statistics(&Statistics::load(dataset)?, cfg.normalization),
    }
}

/// A run in `out` resumes only with the configuration, stage, data, normalisation and
/// stage-1 run it started with (`fresh` holds those of this invocation).
fn check_resumable(saved: &RunLog, fresh: &RunLog, out: &Path) -> Result<(), ModelError> {
    if saved.config != fresh.config || saved.stage != fresh.stage {
        return Err(ModelError::Config(format!(
            "{} was trained with another configuration or stage; resume with the same config, or train into a new --out",
            out.display()
        )));
    }
    if saved.dataset_manifest_sha256 != fresh.dataset_manifest_sha256
        || saved.normalizer != fresh.normalizer
        || saved.stage1 != fresh.stage1
    {
        return Err(ModelError::Config(format!(
            "{} was trained on another dataset, normalisation or stage-1 run; resume with the same --dataset and --stage1, or train into a new --out",
            out.display()
        )));
    }
    Ok(())
}

/// One epoch's mean loss terms by name, the global gradient norm of each step and the last
/// learning rate.
type EpochTrained = (BTreeMap<String, f64>, Vec<f64>, f64);

/// What every epoch of a run shares: the loaders, the devices with stage 2's frozen D3D
/// on each, and the step counts.
struct EpochRun<'a> {
    cfg: &'a VaeTrainConfig,
    normalizer: &'a Normalizer,
    /// The main device without autodiff: stage 2's frozen targets are computed there.
    device: &'a Device,
    /// Autodiff devices; the first is the main one.
    ads: &'a [Device],
    /// Stage 2's frozen D3D, once per device.
    d3ds: Vec<Option<Decoder>>,
    shape: fiberflow_data::Shape,
    train: Loader,
    val: Loader,
    batches: usize,
    steps_per_epoch: usize,
    total_steps: usize,
}

impl<'a> EpochRun<'a> {
    fn new(
        dataset: &'a Dataset,
        cfg: &'a VaeTrainConfig,
        (device, ads): (&'a Device, &'a [Device]),
        trainer: &Trainer,
        normalizer: &'a Normalizer,
    ) -> Result<Self, ModelError> {
        let loader_cfg = |subset: Subset| LoaderConfig {
            batch_size: cfg.batch_size,
            shuffle: subset == Subset::Train,
            seed: cfg.seed,
            preload: cfg.preload,
            augment: if subset == Subset::Train && cfg.augment {
                Mirror {
                    x: true,
                    y: true,
                    z: true,
                }
            } else {
                Mirror::default()
            },
            drop_last: false,
        };
        let train = Loader::new(dataset, Some(Subset::Train), loader_cfg(Subset::Train))?;
        let val = Loader::new(dataset, Some(Subset::Val), loader_cfg(Subset::Val))?;
        let batches = train.batches_per_epoch();
        let steps_per_epoch = batches.div_ceil(cfg.accumulation);
        Ok(Self {
            cfg,
            normalizer,
            device,
            ads,
            d3ds: ads
                .iter()
                .map(|a| trainer.frozen.as_ref().map(|f| f.d3d.clone().to_device(a)))
                .collect(),
            shape: dataset.manifest.header.shape,
            train,
            val,
            batches,
            steps_per_epoch,
            total_steps: steps_per_epoch * cfg.epochs,
        })
    }

    /// One epoch of optimiser steps at KL weight `beta`: the mean of each loss term over
    /// the batches, the global gradient norm of each step and the last learning rate.
    fn train(
        &self,
        trainer: &mut Trainer,
        (epoch, beta): (usize, f64),
        observer: &mut dyn TrainObserver,
    ) -> Result<EpochTrained, ModelError> {
        let cfg = self.cfg;
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut accumulator = GradientsAccumulator::<VaeBranch>::new();
        let (mut grad_norms, mut lr) = (Vec::new(), 0.0);
        let mut epoch_batches = self.train.epoch(epoch as u64);
        for step_in_epoch in 0..self.steps_per_epoch {
            let first = step_in_epoch * cfg.accumulation;
            let group = cfg.accumulation.min(self.batches - first);
            let mut jobs = Vec::with_capacity(group);
            for k in 0..group {
                let batch = epoch_batches
                    .next()
                    .expect("the loader yields batches_per_epoch batches")?;
                jobs.push(self.job(trainer, batch, first + k)?);
            }
            let outputs = self.losses(trainer, jobs, (epoch, beta, group))?;
            for (k, (grads, value, parts)) in outputs.into_iter().enumerate() {
                for (key, v) in parts {
                    *sums.entry(key.into()).or_default() += v;
                }
                *sums.entry("loss".into()).or_default() += value;
                accumulator.accumulate(&trainer.model, grads);
                observer.batch(epoch, first + k, self.batches, value);
            }
            let mut grads = accumulator.grads();
            grad_norms.push(clip_global_norm(&trainer.model, &mut grads, cfg.grad_clip));
            let step = epoch * self.steps_per_epoch + step_in_epoch;
            lr = schedule::learning_rate(
                step,
                self.total_steps,
                cfg.warmup_steps,
                cfg.lr,
                cfg.min_lr,
            );
            trainer.step(lr, grads, cfg, step as u64);
        }
        let train = sums
            .into_iter()
            .map(|(k, v)| (k, v / self.batches as f64))
            .collect();
        Ok((train, grad_norms, lr))
    }

    /// Batch `index` of the epoch with its random draws and frozen targets, made on the
    /// main thread in batch order whatever the device count, for the device that will
    /// run it.
    fn job(
        &self,
        trainer: &mut Trainer,
        batch: fiberflow_data::Batch,
        index: usize,
    ) -> Result<BatchJob, ModelError> {
        let (cfg, ad) = (self.cfg, &self.ads[0]);
        let target = &self.ads[(index % self.cfg.accumulation) % self.ads.len()];
        let noise = (trainer.frozen.is_none() || cfg.kl_2d > 0.0).then(|| {
            let [s, h, w] = [self.shape.slices, self.shape.height, self.shape.width];
            let b = batch.indices.len();
            standard_noise(cfg.vae.latent_shape([b, 0, s, h, w]), ad).to_device(target)
        });
        let mu3d = match &mut trainer.frozen {
            Some(f) => Some(f.targets(&batch, self.normalizer, cfg, self.device, target)?),
            None => None,
        };
        Ok(BatchJob {
            index,
            batch,
            noise,
            mu3d,
        })
    }

    /// The loss of each job on its device replica, with its gradients (scaled for the
    /// accumulation over `group` batches), value and terms.
    #[allow(clippy::type_complexity)] // one tuple per job, taken apart by the caller
    fn losses(
        &self,
        trainer: &Trainer,
        jobs: Vec<BatchJob>,
        (epoch, beta, group): (usize, f64, usize),
    ) -> Result<Vec<(GradientsParams, f64, Vec<(&'static str, f64)>)>, ModelError> {
        let (cfg, normalizer, ad) = (self.cfg, self.normalizer, &self.ads[0]);
        let mut workers: Vec<Worker> = self
            .ads
            .iter()
            .zip(&self.d3ds)
            .enumerate()
            .map(|(w, (a, d3d))| Worker {
                model: parallel::replica(&trainer.model, w, a),
                d3d: d3d.clone(),
                device: a.clone(),
            })
            .collect();
        parallel::run_sharded(&mut workers, jobs, |w, job| {
            let tb = to_tensors(&job.batch, normalizer, &w.device)?;
            let frozen = w.d3d.as_ref().zip(job.mu3d);
            let (terms, _) = losses(&w.model, frozen, &tb, job.noise, cfg);
            let total = terms.total(beta);
            let value = total.clone().into_scalar::<f64>();
            if !value.is_finite() {
                return Err(ModelError::Input(format!(
                    "training loss became {value} at epoch {epoch}, batch {}; lower lr or check the data",
                    job.index
                )));
            }
            let parts = terms.parts();
            let loss = total.div_scalar(group as f64);
            Ok((parallel::gradients(loss, &w.model, ad), value, parts))
        })
    }
}

/// The loss terms of one batch, in the objective's order: each with its name in the run
/// log and its weight (training differentiates the weighted sum).
struct LossTerms(Vec<(&'static str, Tensor<1>, Weight)>);

/// A term's weight in the objective.
#[derive(Clone, Copy)]
enum Weight {
    Fixed(f64),
    /// The KL weight β, which warms up over the epochs.
    Beta,
}

impl LossTerms {
    /// The objective: stage 1 rec + β·KL; stage 2 rec2d + λ_align·align + λ_cross·cross
    /// (+ kl_2d·KL_2d). Validation takes β = 0: β changes during the warm-up, so epochs
    /// compare on the reconstruction.
    /// Terms of weight 0 are left out, so a non-finite one cannot make the sum NaN.
    fn total(&self, beta: f64) -> Tensor<1> {
        let weighted = self.0.iter().filter_map(|(_, term, weight)| {
            let w = match weight {
                Weight::Fixed(w) => *w,
                Weight::Beta => beta,
            };
            (w != 0.0).then(|| term.clone().mul_scalar(w))
        });
        weighted
            .reduce(|a, b| a + b)
            .expect("every stage has a reconstruction term of weight 1")
    }

    /// Each term's value under its name in the run log.
    fn parts(&self) -> Vec<(&'static str, f64)> {
        let value = |t: &Tensor<1>| t.clone().into_scalar::<f64>();
        self.0
            .iter()
            .map(|(name, t, _)| (*name, value(t)))
            .collect()
    }
}

/// The trainable branch with its optimiser and EMA, and for stage 2 the frozen stage 1.
struct Trainer {
    model: VaeBranch,
    optim: ModuleOptimizer,
    ema: Option<VaeBranch>,
    frozen: Option<Frozen>,
}

/// Stage 1 networks in stage 2: E3D without autodiff (targets, cached) and D3D on the
/// autodiff device with frozen weights (gradients flow through it to E2D).
struct Frozen {
    e3d: VaeBranch,
    d3d: Decoder,
    mu3d: HashMap<(usize, [bool; 3]), TensorData>,
}

/// The batch's microstructure features when the VAE is conditioned on them.
fn geometry(tb: &TensorBatch, cfg: &VaeTrainConfig) -> Option<Tensor<5>> {
    (cfg.vae.geometry_channels > 0).then(|| tb.geometry.clone())
}

fn recon(kind: ReconLoss, pred: Tensor<5>, target: Tensor<5>, mask: Tensor<5>) -> Tensor<1> {
    match kind {
        ReconLoss::Mae => normalized_mae(pred, target, mask),
        ReconLoss::Mse => normalized_mse(pred, target, mask),
    }
}

/// Sets vz to zero: the 2D branch describes flows without it.
fn without_vz(x: Tensor<5>) -> Tensor<5> {
    let device = x.device();
    x * Tensor::<5>::from_data(
        TensorData::new(vec![1.0f32, 1.0, 0.0], [1, 3, 1, 1, 1]),
        &device,
    )
}

/// ‖a − b‖² mean plus, weighted, 1 − cosine along the channel axis.
fn alignment(a: Tensor<5>, b: Tensor<5>, cosine: f64) -> Tensor<1> {
    let mse = (a.clone() - b.clone()).square().mean();
    if cosine == 0.0 {
        return mse;
    }
    let dot = (a.clone() * b.clone()).sum_dim(1);
    let norms = (a.square().sum_dim(1) * b.square().sum_dim(1))
        .sqrt()
        .clamp_min(1e-8);
    mse + (dot / norms)
        .mean()
        .neg()
        .add_scalar(1.0)
        .mul_scalar(cosine)
}

/// The batches of one step that a device computes: its replica of the trained branch
/// and, in stage 2, its copy of the frozen D3D.
struct Worker {
    model: VaeBranch,
    d3d: Option<Decoder>,
    /// The autodiff device the replica lives on.
    device: Device,
}

/// One batch with the random draws and frozen targets made for it on the main thread.
struct BatchJob {
    /// Position in the epoch, for messages.
    index: usize,
    batch: fiberflow_data::Batch,
    /// ε of the posterior sample (stage 1; stage 2 when `kl_2d` > 0).
    noise: Option<Tensor<5>>,
    /// Stage 2: μ3d = E3D(U), the alignment target.
    mu3d: Option<Tensor<5>>,
}

/// One batch through `model` (in stage 2 with the frozen D3D and the targets μ3d): its
/// loss terms and the reconstruction that is scored, D3D(E3D(U)) in stage 1 and
/// D3D(E2D(U_2d)) in stage 2. Training passes the posterior noise ε, validation none
/// (z = μ); both go through here, so their terms cannot drift apart.
fn losses(
    model: &VaeBranch,
    frozen: Option<(&Decoder, Tensor<5>)>,
    tb: &TensorBatch,
    noise: Option<Tensor<5>>,
    cfg: &VaeTrainConfig,
) -> (LossTerms, Tensor<5>) {
    let mask = tb.mask.clone();
    let Some((d3d, mu3d)) = frozen else {
        let out = model.forward(cfg.target.field(tb), geometry(tb, cfg), noise);
        let rec = recon(
            cfg.loss,
            out.reconstruction.clone(),
            cfg.target.field(tb),
            mask,
        );
        let kl = kl_divergence(out.mu, out.logvar);
        let terms = vec![("rec", rec, Weight::Fixed(1.0)), ("kl", kl, Weight::Beta)];
        return (LossTerms(terms), out.reconstruction);
    };
    let (mu2d, logvar2d) = model.encoder.forward(tb.u2d.clone(), geometry(tb, cfg));
    let z2d = match noise {
        Some(eps) => reparameterize(mu2d.clone(), logvar2d.clone(), eps),
        None => mu2d.clone(),
    };
    let rec2d = recon(
        cfg.loss,
        without_vz(model.decoder.forward(z2d, geometry(tb, cfg))),
        tb.u2d.clone(),
        mask.clone(),
    );
    let align = alignment(mu2d.clone(), mu3d, cfg.align_cosine);
    let cross_pred = d3d.forward(mu2d.clone(), geometry(tb, cfg));
    let cross = recon(cfg.loss, cross_pred.clone(), cfg.target.field(tb), mask);
    let mut terms = vec![
        ("rec2d", rec2d, Weight::Fixed(1.0)),
        ("align", align, Weight::Fixed(cfg.lambda_align)),
        ("cross", cross, Weight::Fixed(cfg.lambda_cross)),
    ];
    if cfg.kl_2d > 0.0 {
        let kl = kl_divergence(mu2d, logvar2d);
        terms.push(("kl2d", kl, Weight::Fixed(cfg.kl_2d)));
    }
    (LossTerms(terms), cross_pred)
}

impl Trainer {
    fn optimizer(cfg: &VaeTrainConfig) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_weight_decay(cfg.weight_decay as f32)
            .with_epsilon(1e-8)
            .init()
    }

    fn stage1(cfg: &VaeTrainConfig, ad: &Device) -> Result<Self, ModelError> {
        let model = cfg.vae.init(ad)?;
        Ok(Self {
            ema: (cfg.ema_decay > 0.0).then(|| model.valid()),
            model,
            optim: Self::optimizer(cfg),
            frozen: None,
        })
    }

    fn stage2(
        cfg: &VaeTrainConfig,
        device: &Device,
        ad: &Device,
        stage1_weights: &Path,
    ) -> Result<Self, ModelError> {
        let e3d = checkpoint::load(cfg.vae.init(device)?, stage1_weights)?;
        let stage1_ad = checkpoint::load(cfg.vae.init(ad)?, stage1_weights)?;
        let mut model = cfg.vae.init(ad)?;
        if cfg.init_e2d_from_e3d {
            model.encoder = stage1_ad.encoder.clone();
        }
        Ok(Self {
            ema: (cfg.ema_decay > 0.0).then(|| model.valid()),
            model,
            optim: Self::optimizer(cfg),
            frozen: Some(Frozen {
                e3d,
                d3d: stage1_ad.decoder.no_grad(),
                mu3d: HashMap::new(),
            }),
        })
    }

    fn step(&mut self, lr: f64, grads: GradientsParams, cfg: &VaeTrainConfig, step: u64) {
        self.model = self.optim.step(lr, self.model.clone(), grads);
        if let Some(e) = self.ema.take() {
            let decay = ema::warmup_decay(step, cfg.ema_decay);
            self.ema = Some(ema::update(e, &self.model.valid(), decay));
        }
    }

    /// The weights used after training: the EMA when enabled.
    fn inference_model(&self) -> VaeBranch {
        self.ema.clone().unwrap_or_else(|| self.model.valid())
    }

    fn validate(
        &mut self,
        loader: &Loader,
        cfg: &VaeTrainConfig,
        device: &Device,
        normalizer: &Normalizer,
    ) -> Result<(BTreeMap<String, f64>, FieldErrors), ModelError> {
        let model = self.inference_model();
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut errors = ErrorSums::default();
        let mut n = 0usize;
        for batch in loader.epoch(0) {
            let batch = batch?;
            let tb = to_tensors(&batch, normalizer, device)?;
            let mu3d = match &mut self.frozen {
                Some(frozen) => Some(frozen.targets(&batch, normalizer, cfg, device, device)?),
                None => None,
            };
            let d3d = self.frozen.as_ref().map(|f| &f.e3d.decoder);
            let (terms, reconstruction) = losses(&model, d3d.zip(mu3d), &tb, None, cfg);
            let mut add = |k: &str, v: f64| *sums.entry(k.into()).or_default() += v;
            for (k, v) in terms.parts() {
                add(k, v);
            }
            add("loss", terms.total(0.0).into_scalar::<f64>());
            errors.add(
                cfg.target.flow(reconstruction, &tb),
                tb.u.clone(),
                tb.mask.clone(),
            );
            n += 1;
        }
        if n == 0 {
            return Err(ModelError::Input(
                "the validation split is empty; generate more samples".into(),
            ));
        }
        Ok((
            sums.into_iter().map(|(k, v)| (k, v / n as f64)).collect(),
            errors.errors(),
        ))
    }
}

impl Checkpointed for Trainer {
    fn save_best(&self, path: &Path) -> Result<(), ModelError> {
        checkpoint::save_atomic(&self.inference_model(), path)
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        checkpoint::save(&self.model, &dir.join(checkpoint::MODEL_WEIGHTS))?;
        let path = dir.join(checkpoint::OPTIMIZER_STATE);
        self.optim
            .save(&path)
            .map_err(|e| ModelError::checkpoint(&path, e))?;
        if let Some(e) = &self.ema {
            checkpoint::save(e, &dir.join(checkpoint::EMA_WEIGHTS))?;
        }
        Ok(())
    }
}

impl Trainer {
    /// Reads what [`Checkpointed::save`] wrote.
    fn load(&mut self, dir: &Path) -> Result<(), ModelError> {
        self.model = checkpoint::load(self.model.clone(), &dir.join(checkpoint::MODEL_WEIGHTS))?;
        let path = dir.join(checkpoint::OPTIMIZER_STATE);
        let optim = std::mem::replace(&mut self.optim, AdamWConfig::new().init());
        self.optim = optim
            .load(&path)
            .map_err(|e| ModelError::checkpoint(&path, e))?;
        if let Some(e) = self.ema.take() {
            self.ema = Some(checkpoint::load(e, &dir.join(checkpoint::EMA_WEIGHTS))?);
        }
        Ok(())
    }
}

impl Frozen {
    /// μ3d = E3D(U) of each sample of the batch, computed once per (sample, mirror) and
    /// then served from the cache, as a tensor on `target`.
    fn targets(
        &mut self,
        batch: &fiberflow_data::Batch,
        normalizer: &Normalizer,
        cfg: &VaeTrainConfig,
        device: &Device,
        target: &Device,
    ) -> Result<Tensor<5>, ModelError> {
        let keys: Vec<(usize, [bool; 3])> = batch
            .indices
            .iter()
            .zip(&batch.mirrors)
            .map(|(&i, m)| (i, [m.x, m.y, m.z]))
            .collect();
        if keys.iter().any(|k| !self.mu3d.contains_key(k)) {
            let tb = to_tensors(batch, normalizer, device)?;
            for (b, key) in keys.iter().enumerate() {
                if !self.mu3d.contains_key(key) {
                    // One sample at a time, so a value never depends on its batch mates.
                    let (mu, _) = self.e3d.encoder.forward(
                        cfg.target.field(&tb).narrow(0, b, 1),
                        geometry(&tb, cfg).map(|g| g.narrow(0, b, 1)),
                    );
                    self.mu3d.insert(*key, mu.into_data());
                }
            }
        }
        let parts: Vec<Tensor<5>> = keys
            .iter()
            .map(|k| Tensor::from_data(self.mu3d[k].clone(), target))
            .collect();
        Ok(Tensor::cat(parts, 0))
    }
}

#[cfg(test)]
mod memory_tests {
    use super::*;
    use crate::vae::VaeConfig;

    #[test]
    fn the_default_fits_the_reference_resolution_and_the_reference_widths_do_not() {
        let default = VaeTrainConfig::default();
        let reference = VaeTrainConfig {
            vae: VaeConfig::reference(),
            ..Default::default()
        };
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        let big = [11, 256, 256];
        // Patch 4, width 32: (512·32/16 + 64) bytes × 2 × 11·256² = 1.46 GiB.
        let need = gib(memory_bytes(&default, big, 0).unwrap());
        assert!((need - 1.461).abs() < 0.01, "{need}");
        // The reference widths at full resolution: 88 GiB, far over any laptop.
        assert!(gib(memory_bytes(&reference, big, 0).unwrap()) > 80.0);
        // 100 preloaded samples add 9 f32 per voxel each.
        let more =
            memory_bytes(&default, big, 100).unwrap() - memory_bytes(&default, big, 0).unwrap();
        assert_eq!(more, 100 * 11 * 256 * 256 * 36);
        let huge = [usize::MAX, usize::MAX, 2];
        assert_eq!(memory_bytes(&default, huge, 0), None);
    }
}
