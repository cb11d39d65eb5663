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

use crate::batch::{Normalization, Normalizer, TensorBatch, to_tensors};
use crate::error::ModelError;
use crate::loss::{kl_divergence, normalized_mae, normalized_mse};
use crate::metrics::{ErrorSums, FieldErrors};
use crate::train::{checkpoint, clip::clip_global_norm, ema, parallel, schedule};
use crate::vae::{Decoder, VaeBranch, VaeConfig, reparameterize, standard_noise};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use fiberflow_data::json::{read_json, write_json};
use fiberflow_data::{Dataset, Loader, LoaderConfig, Mirror, Statistics, Subset};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Reconstruction loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconLoss {
    /// Per-component normalised MAE over the fluid (the reference's default).
    Mae,
    /// Per-component normalised MSE over the fluid.
    Mse,
}

/// What the 3D branch encodes and decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaeTarget {
    /// The 3D flow U itself (the reference).
    Flow,
    /// The 3D correction U − U_2d: the cheap 2D flow is the zeroth-order answer (vx and vy
    /// within ~15 % of U) and the networks learn only what it misses — vz and the
    /// slice-to-slice changes of vx and vy — so a latent error of e costs e·‖U − U_2d‖
    /// instead of e·‖U‖, and the prediction is never worse than the 2D flow by much.
    Correction,
}

impl VaeTarget {
    /// The field the 3D branch encodes, normalised.
    pub fn field(self, tb: &TensorBatch) -> Tensor<5> {
        match self {
            Self::Flow => tb.u.clone(),
            Self::Correction => tb.u.clone() - tb.u2d.clone(),
        }
    }

    /// The normalised 3D flow from a decoded `field`.
    pub fn flow(self, field: Tensor<5>, tb: &TensorBatch) -> Tensor<5> {
        match self {
            Self::Flow => field,
            Self::Correction => field + tb.u2d.clone(),
        }
    }
}

/// Everything a VAE training run needs besides the data; saved with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaeTrainConfig {
    /// Architecture (stage 2 takes it from its stage-1 run).
    pub vae: VaeConfig,
    pub epochs: usize,
    pub batch_size: usize,
    /// Batches whose gradients are summed before one optimiser step; with several
    /// training devices, they are computed in parallel (one device per batch).
    pub accumulation: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Optimiser steps of linear warm-up.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Largest global gradient norm.
    pub grad_clip: f64,
    /// Weight EMA decay ceiling; 0 disables the EMA.
    pub ema_decay: f64,
    pub loss: ReconLoss,
    /// What the 3D branch encodes (stage 2 inherits stage 1's choice).
    pub target: VaeTarget,
    /// Per-component velocity scaling (stage 2 inherits stage 1's factors).
    pub normalization: Normalization,
    /// KL weight β at the first epoch.
    pub kl_start: f64,
    /// KL weight β after the warm-up.
    pub kl_end: f64,
    pub kl_warmup_epochs: usize,
    /// Mirror augmentation (y, z and x, each with probability ½).
    pub augment: bool,
    /// Decode every sample into memory once instead of reading the memory-mapped files
    /// at each access.
    pub preload: bool,
    /// Train on the first N samples of the training split only (nested subsets of one
    /// split, for learning curves); all of it when absent.
    pub train_samples: Option<usize>,
    /// Validate on the first N samples of the validation split only (each epoch's
    /// validation costs a pass over it); all of it when absent.
    pub val_samples: Option<usize>,
    pub seed: u64,
    /// Stage 2: weight of the latent alignment ‖μ2d − μ3d‖².
    pub lambda_align: f64,
    /// Stage 2: weight of the cross-reconstruction D3D(μ2d) vs U.
    pub lambda_cross: f64,
    /// Stage 2: weight of an extra 1 − cos(μ2d, μ3d) alignment term.
    pub align_cosine: f64,
    /// Stage 2: KL weight of the 2D branch (0 = deterministic E2D, as the reference).
    pub kl_2d: f64,
    /// Stage 2: start E2D from E3D's weights instead of a random initialisation.
    pub init_e2d_from_e3d: bool,
}

impl Default for VaeTrainConfig {
    fn default() -> Self {
        Self {
            // 4×4 patch embedding into the latent grid instead of three levels from full
            // resolution: no convolution runs on the full grid, where a step spent most of
            // its time; a quarter of the time per step at lower validation errors on every
            // component (BENCHMARKS.md, "Cheaper VAE training").
            vae: VaeConfig::new().with_patch(Some(4)).with_channels(vec![32]),
            epochs: 30,
            batch_size: 2,
            accumulation: 1,
            lr: 2e-3,
            min_lr: 1e-5,
            warmup_steps: 20,
            weight_decay: 1e-4,
            grad_clip: 1.0,
            ema_decay: 0.0,
            loss: ReconLoss::Mse,
            target: VaeTarget::Correction,
            normalization: Normalization::Rms,
            kl_start: 1e-5,
            kl_end: 1e-3,
            kl_warmup_epochs: 10,
            augment: false,
            preload: false,
            train_samples: None,
            val_samples: None,
            seed: 0,
            lambda_align: 5.0,
            lambda_cross: 50.0,
            align_cosine: 0.0,
            kl_2d: 0.0,
            init_e2d_from_e3d: true,
        }
    }
}

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

impl VaeTrainConfig {
    /// Checks every field before any data is read.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.vae.validate()?;
        let bad = |m: &str| Err(ModelError::Config(m.to_string()));
        if self.epochs == 0 || self.batch_size == 0 || self.accumulation == 0 {
            return bad("epochs, batch_size and accumulation must be ≥ 1");
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("need lr > 0 and 0 ≤ min_lr ≤ lr");
        }
        if !(self.grad_clip > 0.0 && self.weight_decay >= 0.0) {
            return bad("need grad_clip > 0 and weight_decay ≥ 0");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("ema_decay must lie in [0, 1)");
        }
        let weights = [
            self.kl_start,
            self.kl_end,
            self.lambda_align,
            self.lambda_cross,
            self.align_cosine,
            self.kl_2d,
        ];
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return bad("loss weights must be finite and ≥ 0");
        }
        Ok(())
    }
}

/// Which stage a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// E3D + D3D.
    One,
    /// E2D + D2D against a frozen stage-1 run.
    Two,
}

/// One epoch of the run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub steps: usize,
    pub lr: f64,
    pub kl_weight: f64,
    /// Mean training loss terms.
    pub train: BTreeMap<String, f64>,
    /// Validation loss terms (deterministic).
    pub val: BTreeMap<String, f64>,
    /// Errors of the reconstruction that matters: D3D(E3D(U)) in stage 1, D3D(E2D(U_2d))
    /// in stage 2, against U.
    pub val_errors: FieldErrors,
    pub mean_grad_norm: f64,
    pub seconds: f64,
}

/// `log.json`: everything needed to interpret and reuse the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunLog {
    pub stage: Stage,
    pub config: VaeTrainConfig,
    pub normalizer: Normalizer,
    pub dataset: PathBuf,
    pub dataset_manifest_sha256: String,
    /// Stage 2: the stage-1 run it builds on.
    pub stage1: Option<PathBuf>,
    pub history: Vec<EpochRecord>,
    pub best_epoch: Option<usize>,
    pub best_val_loss: f64,
    pub parameters: usize,
}

/// Receives progress; all methods default to nothing. `epoch` is called after the epoch's
/// checkpoint is on disk and may stop the run there.
pub trait TrainObserver {
    fn batch(&mut self, _epoch: usize, _batch: usize, _batches: usize, _loss: f64) {}
    fn epoch(&mut self, _record: &EpochRecord) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// Files of a run folder.
pub use super::checkpoint::LOG_FILE;
pub const BEST_FILE: &str = "best_model.bpk";

/// Trains stage 1 or 2 on `devices` into `out`, resuming from its checkpoint when `resume`
/// is set. The first device holds the model, validates and caches; with several, each
/// optimiser step's `accumulation` batches are computed in parallel
/// ([`parallel`](super::parallel)), with the same result as on one device.
#[allow(clippy::too_many_arguments)]
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
    let stage1 = match (stage, stage1_dir) {
        (Stage::One, None) => None,
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
            // The architecture is the stage-1 one.
            cfg.vae = log.config.vae.clone();
            cfg.normalization = log.config.normalization;
            cfg.target = log.config.target;
            // Absolute, so the diffusion stage finds it from any working directory.
            Some((checkpoint::absolute(dir), log))
        }
        (Stage::One, Some(_)) => {
            return Err(ModelError::Config("--stage1 is only for stage 2".into()));
        }
        (Stage::Two, None) => {
            return Err(ModelError::Config(
                "stage 2 needs --stage1 DIR (a finished stage-1 run)".into(),
            ));
        }
    };
    cfg.validate()?;
    parallel::check_devices(devices.len(), cfg.accumulation)?;
    let device = &devices[0];
    let dataset = Dataset::open(dataset_dir)?.with_limits(cfg.train_samples, cfg.val_samples)?;
    let shape = dataset.manifest.header.shape;
    cfg.vae.check_input(shape.height, shape.width)?;
    check_memory(&cfg, &dataset)?;
    let manifest_sha256 = dataset.manifest.sha256(&dataset.dir)?;
    let normalizer = match &stage1 {
        Some((dir, log)) => {
            if log.dataset_manifest_sha256 != manifest_sha256 {
                return Err(ModelError::Config(format!(
                    "stage 1 ({}) was trained on another dataset (manifest {} ≠ {}); train stage 2 on the same dataset",
                    dir.display(),
                    log.dataset_manifest_sha256,
                    manifest_sha256
                )));
            }
            log.normalizer
        }
        None => Normalizer::from_statistics(&Statistics::load(&dataset)?, cfg.normalization)?,
    };

    std::fs::create_dir_all(out).map_err(|e| ModelError::checkpoint(out, e))?;
    device.seed(cfg.seed);
    let ads: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let ad = ads[0].clone();
    let mut trainer = match &stage1 {
        None => Trainer::stage1(&cfg, &ad)?,
        Some((dir, _)) => Trainer::stage2(&cfg, device, &ad, &dir.join(BEST_FILE))?,
    };
    // Stage 2's frozen D3D, once per device.
    let d3ds: Vec<Option<Decoder>> = ads
        .iter()
        .map(|a| trainer.frozen.as_ref().map(|f| f.d3d.clone().to_device(a)))
        .collect();
    let mut log = RunLog {
        stage,
        config: cfg.clone(),
        normalizer,
        dataset: dataset.dir.clone(),
        dataset_manifest_sha256: manifest_sha256,
        stage1: stage1.as_ref().map(|(d, _)| d.clone()),
        history: Vec::new(),
        best_epoch: None,
        best_val_loss: f64::INFINITY,
        parameters: trainer.model.num_params(),
    };
    if let Some((dir, saved)) = checkpoint::resume_from::<RunLog>(out, resume)? {
        if saved.config != cfg || saved.stage != stage {
            return Err(ModelError::Config(format!(
                "{} was trained with another configuration or stage; resume with the same config, or train into a new --out",
                out.display()
            )));
        }
        if saved.dataset_manifest_sha256 != log.dataset_manifest_sha256
            || saved.normalizer != log.normalizer
            || saved.stage1 != log.stage1
        {
            return Err(ModelError::Config(format!(
                "{} was trained on another dataset, normalisation or stage-1 run; resume with the same --dataset and --stage1, or train into a new --out",
                out.display()
            )));
        }
        trainer.load(&dir)?;
        log = saved;
        // A kill between the checkpoint and log.json leaves the log one epoch behind.
        write_json(&out.join(LOG_FILE), &log)?;
    }

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
    let train_loader = Loader::new(&dataset, Some(Subset::Train), loader_cfg(Subset::Train))?;
    let val_loader = Loader::new(&dataset, Some(Subset::Val), loader_cfg(Subset::Val))?;
    let batches = train_loader.batches_per_epoch();
    let steps_per_epoch = batches.div_ceil(cfg.accumulation);
    let total_steps = steps_per_epoch * cfg.epochs;

    for epoch in log.history.len()..cfg.epochs {
        let started = Instant::now();
        // The sampling noise of each epoch depends on (seed, epoch) only.
        device.seed(cfg.seed.wrapping_add(1 + epoch as u64));
        let beta = schedule::kl_weight(epoch, cfg.kl_warmup_epochs, cfg.kl_start, cfg.kl_end);
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut accumulator = GradientsAccumulator::<VaeBranch>::new();
        let (mut grad_norms, mut lr) = (Vec::new(), 0.0);
        let mut epoch_batches = train_loader.epoch(epoch as u64);
        for step_in_epoch in 0..steps_per_epoch {
            let first = step_in_epoch * cfg.accumulation;
            let group = cfg.accumulation.min(batches - first);
            // Every draw in batch order on the main thread, whatever the device count.
            let mut jobs = Vec::with_capacity(group);
            for k in 0..group {
                let batch = epoch_batches
                    .next()
                    .expect("the loader yields batches_per_epoch batches")?;
                let target = &ads[k % ads.len()];
                let noise = (trainer.frozen.is_none() || cfg.kl_2d > 0.0).then(|| {
                    let [s, h, w] = [shape.slices, shape.height, shape.width];
                    let b = batch.indices.len();
                    standard_noise(cfg.vae.latent_shape([b, 0, s, h, w]), &ad).to_device(target)
                });
                let mu3d = match &mut trainer.frozen {
                    Some(f) => Some(f.targets(&batch, &normalizer, &cfg, device, target)?),
                    None => None,
                };
                jobs.push(BatchJob {
                    index: first + k,
                    batch,
                    noise,
                    mu3d,
                });
            }
            let mut workers: Vec<Worker> = ads
                .iter()
                .zip(&d3ds)
                .enumerate()
                .map(|(w, (a, d3d))| Worker {
                    model: parallel::replica(&trainer.model, w, a),
                    d3d: d3d.clone(),
                    device: a.clone(),
                })
                .collect();
            let outputs = parallel::run_sharded(&mut workers, jobs, |w, job| {
                let tb = to_tensors(&job.batch, &normalizer, &w.device)?;
                let terms = batch_loss(w, &tb, job.noise, job.mu3d, beta, &cfg);
                let value = terms.total.clone().into_scalar::<f64>();
                if !value.is_finite() {
                    return Err(ModelError::Input(format!(
                        "training loss became {value} at epoch {epoch}, batch {}; lower lr or check the data",
                        job.index
                    )));
                }
                let loss = terms.total.div_scalar(group as f64);
                Ok((parallel::gradients(loss, &w.model, &ad), value, terms.parts))
            })?;
            for (k, (grads, value, parts)) in outputs.into_iter().enumerate() {
                for (key, v) in parts {
                    *sums.entry(key).or_default() += v;
                }
                *sums.entry("loss".into()).or_default() += value;
                accumulator.accumulate(&trainer.model, grads);
                observer.batch(epoch, first + k, batches, value);
            }
            let mut grads = accumulator.grads();
            grad_norms.push(clip_global_norm(&trainer.model, &mut grads, cfg.grad_clip));
            let step = epoch * steps_per_epoch + step_in_epoch;
            lr = schedule::learning_rate(step, total_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr);
            trainer.step(lr, grads, &cfg, step as u64);
        }
        let train = sums
            .into_iter()
            .map(|(k, v)| (k, v / batches as f64))
            .collect();
        let (val, val_errors) = trainer.validate(&val_loader, &cfg, device, &normalizer)?;
        let record = EpochRecord {
            epoch,
            steps: (epoch + 1) * steps_per_epoch,
            lr,
            kl_weight: beta,
            train,
            val_errors,
            mean_grad_norm: grad_norms.iter().sum::<f64>() / grad_norms.len().max(1) as f64,
            seconds: started.elapsed().as_secs_f64(),
            val,
        };
        let val_loss = record.val["loss"];
        let improved = val_loss < log.best_val_loss;
        if improved {
            log.best_val_loss = val_loss;
            log.best_epoch = Some(epoch);
            checkpoint::save_atomic(&trainer.inference_model(), &out.join(BEST_FILE))?;
        }
        log.history.push(record);
        checkpoint::commit_epoch(out, &log, |dir| trainer.save(dir))?;
        if observer
            .epoch(log.history.last().expect("just pushed"))
            .is_break()
        {
            break;
        }
    }
    Ok(log)
}

/// Loss of one batch: the total to differentiate and its parts for the log.
struct LossTerms {
    total: Tensor<1>,
    parts: Vec<(String, f64)>,
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

/// The training loss of one batch on `w`: stage 1 reconstruction + β·KL; stage 2
/// L_rec2d + λ_align·L_align + λ_cross·L_cross (+ kl_2d·KL).
fn batch_loss(
    w: &Worker,
    tb: &TensorBatch,
    noise: Option<Tensor<5>>,
    mu3d: Option<Tensor<5>>,
    beta: f64,
    cfg: &VaeTrainConfig,
) -> LossTerms {
    let mask = tb.mask.clone();
    let (Some(d3d), Some(mu3d)) = (&w.d3d, mu3d) else {
        let out = w
            .model
            .forward(cfg.target.field(tb), geometry(tb, cfg), noise);
        let rec = recon(cfg.loss, out.reconstruction, cfg.target.field(tb), mask);
        let kl = kl_divergence(out.mu, out.logvar);
        let parts = vec![
            ("rec".into(), rec.clone().into_scalar::<f64>()),
            ("kl".into(), kl.clone().into_scalar::<f64>()),
        ];
        return LossTerms {
            total: rec + kl.mul_scalar(beta),
            parts,
        };
    };
    let (mu2d, logvar2d) = w.model.encoder.forward(tb.u2d.clone(), geometry(tb, cfg));
    let z2d = match noise {
        Some(eps) => reparameterize(mu2d.clone(), logvar2d.clone(), eps),
        None => mu2d.clone(),
    };
    let rec2d = recon(
        cfg.loss,
        without_vz(w.model.decoder.forward(z2d, geometry(tb, cfg))),
        tb.u2d.clone(),
        mask.clone(),
    );
    let align = alignment(mu2d.clone(), mu3d, cfg.align_cosine);
    let cross = recon(
        cfg.loss,
        d3d.forward(mu2d.clone(), geometry(tb, cfg)),
        cfg.target.field(tb),
        mask,
    );
    let mut parts = vec![
        ("rec2d".into(), rec2d.clone().into_scalar::<f64>()),
        ("align".into(), align.clone().into_scalar::<f64>()),
        ("cross".into(), cross.clone().into_scalar::<f64>()),
    ];
    let mut total = rec2d + align.mul_scalar(cfg.lambda_align) + cross.mul_scalar(cfg.lambda_cross);
    if cfg.kl_2d > 0.0 {
        let kl = kl_divergence(mu2d, logvar2d);
        parts.push(("kl2d".into(), kl.clone().into_scalar::<f64>()));
        total = total + kl.mul_scalar(cfg.kl_2d);
    }
    LossTerms { total, parts }
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
            let mut add = |k: &str, v: f64| *sums.entry(k.into()).or_default() += v;
            let loss = match &mut self.frozen {
                None => {
                    let out = model.forward(cfg.target.field(&tb), geometry(&tb, cfg), None);
                    let rec = recon(
                        cfg.loss,
                        out.reconstruction.clone(),
                        cfg.target.field(&tb),
                        tb.mask.clone(),
                    )
                    .into_scalar::<f64>();
                    add("rec", rec);
                    add("kl", kl_divergence(out.mu, out.logvar).into_scalar::<f64>());
                    errors.add(
                        cfg.target.flow(out.reconstruction, &tb),
                        tb.u.clone(),
                        tb.mask.clone(),
                    );
                    rec
                }
                Some(frozen) => {
                    let mu3d = frozen.targets(&batch, normalizer, cfg, device, device)?;
                    let (mu2d, _) = model.encoder.forward(tb.u2d.clone(), geometry(&tb, cfg));
                    let rec2d = recon(
                        cfg.loss,
                        without_vz(model.decoder.forward(mu2d.clone(), geometry(&tb, cfg))),
                        tb.u2d.clone(),
                        tb.mask.clone(),
                    )
                    .into_scalar::<f64>();
                    let align =
                        alignment(mu2d.clone(), mu3d, cfg.align_cosine).into_scalar::<f64>();
                    let cross_pred = frozen.e3d.decoder.forward(mu2d, geometry(&tb, cfg));
                    let cross = recon(
                        cfg.loss,
                        cross_pred.clone(),
                        cfg.target.field(&tb),
                        tb.mask.clone(),
                    )
                    .into_scalar::<f64>();
                    add("rec2d", rec2d);
                    add("align", align);
                    add("cross", cross);
                    errors.add(
                        cfg.target.flow(cross_pred, &tb),
                        tb.u.clone(),
                        tb.mask.clone(),
                    );
                    rec2d + cfg.lambda_align * align + cfg.lambda_cross * cross
                }
            };
            add("loss", loss);
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
