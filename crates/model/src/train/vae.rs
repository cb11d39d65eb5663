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
use crate::run::checkpoint::{self, BEST_FILE, LOG_FILE};
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
use std::path::Path;
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
                let frozen = w.d3d.as_ref().zip(job.mu3d);
                let (terms, _) = losses(&w.model, frozen, &tb, job.noise, &cfg);
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
                Ok((parallel::gradients(loss, &w.model, &ad), value, parts))
            })?;
            for (k, (grads, value, parts)) in outputs.into_iter().enumerate() {
                for (key, v) in parts {
                    *sums.entry(key.into()).or_default() += v;
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
