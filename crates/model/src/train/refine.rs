//! Training of the full-resolution refiner ([`crate::refine`]) on a frozen model's point
//! estimates of its own training split.
//!
//! The estimates are what the refiner corrects at prediction time: the default point
//! estimate (the posterior mean averaged over the eight mirror images). The frozen model
//! makes each one once and the run caches it (`estimates/NNNNNN.safetensors`, written
//! atomically, so an interrupted fill resumes). That estimate is mirror-equivariant, so
//! each epoch shows every sample through one of its eight mirrors, with its mirrored
//! cached estimate: exact augmentation at no extra cost.
//!
//! Run folder: `log.json` (config, the refined model by path and weight hash, history),
//! `best_model.bpk` (EMA weights of the epoch with the lowest validation error),
//! `checkpoint/` for `--resume`, `estimates/`.

use super::diffusion::epoch_order;
use super::runner::run_epochs;
use super::state::TrainState;
use crate::batch::{TensorBatch, channel_first, to_tensors};
use crate::diffusion::seeded_rng;
use crate::error::ModelError;
use crate::latent::cache::{read_tensor, write_tensors};
use crate::loss::{squared_relative_errors, weighted_normalized_mse};
use crate::metrics::{ErrorSums, FieldErrors};
use crate::predict::sampling::SampleOptions;
use crate::predict::{EstimateRequest, RefinerPart, Steering, TrainedModel};
use crate::refine::{Refiner, refiner_inputs};
use crate::run::checkpoint;
use crate::run::checkpoint::{BEST_FILE, LOG_FILE};
use crate::run::optimiser_settings;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;
use fiberflow_data::json::write_json;
use fiberflow_data::{Batch, Dataset, Field, Mirror, Progress, Subset};
use ndarray::{Array4, Array5, Axis};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::run::refine::{ESTIMATES_DIR, RefineEpoch, RefineRunLog, RefineTrainConfig};

/// Receives progress; `epoch` runs after the epoch's checkpoint is on disk.
pub trait RefineObserver: Progress {
    fn batch(&mut self, _epoch: usize, _batch: usize, _batches: usize, _loss: f64) {}
    fn epoch(&mut self, _record: &RefineEpoch) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// The estimate the refiner learns to correct: what `predict` and `evaluate` make by
/// default.
fn base_request(seed: u64) -> EstimateRequest {
    EstimateRequest {
        seed,
        refine: false,
        ..EstimateRequest::default()
    }
}

/// The cached estimate file of sample `index`.
fn estimate_file(out: &Path, index: usize) -> PathBuf {
    out.join(ESTIMATES_DIR)
        .join(format!("{index:06}.safetensors"))
}

/// Computes the estimate of each of `indices` not cached yet, or copies it from the run
/// `reuse` when that one holds it.
fn fill_estimates(
    model: &TrainedModel,
    dataset: &Dataset,
    indices: &[usize],
    (out, seed, reuse): (&Path, u64, Option<&Path>),
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(), ModelError> {
    let dir = out.join(ESTIMATES_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::checkpoint(&dir, e))?;
    let options = SampleOptions {
        sampler: model.log.config.val_sampler.clone(),
        guidance: 0.0,
    };
    progress.start("estimating the training flows", indices.len() as u64);
    for &i in indices {
        let path = estimate_file(out, i);
        let cached = reuse.map(|dir| estimate_file(dir, i));
        if let Some(from) = cached.filter(|f| !path.exists() && f.is_file()) {
            // Read and written again rather than copied: the write is atomic.
            let h = &dataset.manifest.header.shape;
            let data = read_tensor(&from, "u", &[h.slices, 3, h.height, h.width])?;
            write_tensors(&path, &[("u", &data)])?;
        } else if !path.exists() {
            let sample = dataset.open_sample(i)?.load()?;
            let request = base_request(seed);
            let u =
                model.sample_estimate(&sample, &options, &request, &Steering::default(), device)?;
            let shape = u.shape().to_vec();
            let data = TensorData::new(u.into_raw_vec_and_offset().0, shape);
            write_tensors(&path, &[("u", &data)])?;
        }
        progress.step();
    }
    progress.finish();
    Ok(())
}

/// The cached estimate `(S, 3, H, W)` of sample `index`, in m/s.
fn load_estimate(out: &Path, index: usize, shape: [usize; 4]) -> Result<Array4<f32>, ModelError> {
    let path = estimate_file(out, index);
    let data = read_tensor(&path, "u", &shape)?;
    let values: Vec<f32> = data
        .try_into_vec()
        .map_err(|e| ModelError::checkpoint(&path, format!("{e:?}")))?;
    Array4::from_shape_vec(shape, values).map_err(|e| ModelError::checkpoint(&path, e))
}

/// What a step needs to read a batch: the dataset, the run folder and the sample shape.
struct Source<'a> {
    dataset: &'a Dataset,
    out: &'a Path,
    shape: [usize; 4],
}

impl Source<'_> {
    /// The samples of `entries`, each seen through its mirror, as one batch, with their
    /// cached estimates seen through the same mirrors, stacked `(B, S, 3, H, W)`.
    fn batch(&self, entries: &[(usize, Mirror)]) -> Result<(Batch, Array5<f32>), ModelError> {
        let mut batch = Batch {
            indices: Vec::new(),
            samples: Vec::new(),
            mirrors: Vec::new(),
        };
        let mut estimates = Vec::new();
        for &(i, mirror) in entries {
            let mut sample = self.dataset.open_sample(i)?.load()?;
            mirror.apply(&mut sample);
            let mut estimate = load_estimate(self.out, i, self.shape)?;
            mirror.apply_to(Field::U, &mut estimate);
            batch.indices.push(i);
            batch.samples.push(sample);
            batch.mirrors.push(mirror);
            estimates.push(estimate);
        }
        let views: Vec<_> = estimates.iter().map(|e| e.view()).collect();
        let stacked =
            ndarray::stack(Axis(0), &views).map_err(|e| ModelError::Input(e.to_string()))?;
        Ok((batch, stacked))
    }
}

/// The estimates of a batch refined by `refiner` (`None`: as they are), their loss under
/// the component `weights`, the truth and the mask, in normalised units.
fn forward(
    refiner: Option<&Refiner>,
    (model, weights): (&TrainedModel, [f64; 3]),
    (batch, estimates): (Batch, Array5<f32>),
    device: &Device,
) -> Result<(Tensor<5>, Tensor<1>, TensorBatch), ModelError> {
    let norm = &model.vae.normalizer;
    let estimate = norm.normalize(channel_first(estimates, device));
    let tb = to_tensors(&batch, norm, device)?;
    let refined = match refiner {
        Some(r) => r.forward(estimate, refiner_inputs(&tb, r.config().pressure)?),
        None => estimate,
    };
    let loss = weighted_normalized_mse(refined.clone(), tb.u.clone(), tb.mask.clone(), weights);
    Ok((refined, loss, tb))
}

/// Validation loss and errors of `refiner` (`None`: of the estimates themselves).
fn validate(
    refiner: Option<&Refiner>,
    model: (&TrainedModel, [f64; 3]),
    source: &Source,
    val: &[usize],
    device: &Device,
) -> Result<(f64, FieldErrors), ModelError> {
    let (mut sums, mut loss) = (ErrorSums::default(), 0.0);
    for &i in val {
        let batch = source.batch(&[(i, Mirror::default())])?;
        let (refined, l, tb) = forward(refiner, model, batch, device)?;
        loss += l.into_scalar::<f64>();
        sums.add(refined, tb.u, tb.mask);
    }
    Ok((loss / val.len().max(1) as f64, sums.errors()))
}

/// The balanced loss's weights: per component, 1 / the mean over `indices` of the
/// unrefined estimates' squared relative error (1 where that is zero).
fn component_weights(
    model: &TrainedModel,
    source: &Source,
    indices: &[usize],
    device: &Device,
) -> Result<[f64; 3], ModelError> {
    let mut sums = [0.0; 3];
    for &i in indices {
        let batch = source.batch(&[(i, Mirror::default())])?;
        let (estimate, _, tb) = forward(None, (model, [1.0; 3]), batch, device)?;
        let errors = squared_relative_errors(estimate, tb.u, tb.mask)
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .map_err(|e| ModelError::Input(format!("{e:?}")))?;
        for (sum, e) in sums.iter_mut().zip(errors) {
            *sum += e;
        }
    }
    let n = indices.len() as f64;
    Ok(sums.map(|s| if s > 0.0 { n / s } else { 1.0 }))
}

/// The loss's component weights of a new run: balanced (or 1) times the emphasis.
fn loss_weights(
    cfg: &RefineTrainConfig,
    model: &TrainedModel,
    source: &Source,
    train: &[usize],
    device: &Device,
) -> Result<[f64; 3], ModelError> {
    let balanced = match cfg.balance_components {
        true => component_weights(model, source, train, device)?,
        false => [1.0; 3],
    };
    Ok(std::array::from_fn(|c| {
        balanced[c] * cfg.component_emphasis[c]
    }))
}

/// Trains a refiner of the model at `base` (run folder or bundle) into `out`, on the
/// training split of `dataset_dir`, which must be the data the model was trained on (its
/// test split then stays unseen by both).
#[allow(clippy::too_many_arguments)] // one per CLI input of `fiberflow train refiner`
pub fn train_refiner(
    device: &Device,
    base: &Path,
    dataset_dir: &Path,
    out: &Path,
    cfg: RefineTrainConfig,
    resume: bool,
    observer: &mut dyn RefineObserver,
) -> Result<RefineRunLog, ModelError> {
    cfg.validate()?;
    let (model, dataset, manifest) = open_inputs((base, dataset_dir), &cfg, device)?;
    let header = &dataset.manifest.header.shape;
    let shape = [header.slices, 3, header.height, header.width];
    cfg.refiner.check_size(shape[2], shape[3])?;
    let resumed = checkpoint::resume_from::<RefineRunLog>(out, resume)?;
    if let Some((_, saved)) = &resumed
        && (saved.config != cfg || saved.base_sha256 != model.weights_sha256)
    {
        return Err(ModelError::Config(format!(
            "{} was trained with another configuration or model; resume with the same ones, or train into a new --out",
            out.display()
        )));
    }
    // A finished run is returned as it is, without recomputing its estimates.
    if let Some((_, saved)) = &resumed
        && saved.history.len() >= cfg.epochs
    {
        return Ok(saved.clone());
    }
    let (train, val) = (
        dataset.indices(Some(Subset::Train)),
        dataset.indices(Some(Subset::Val)),
    );
    if train.is_empty() || val.is_empty() {
        return Err(ModelError::Input(
            "the train and validation splits must both hold samples; generate more".into(),
        ));
    }
    let all: Vec<usize> = train.iter().chain(&val).copied().collect();
    let init = initial_run(&cfg, &model, resumed.is_some())?;
    let reuse = init.as_ref().map(|(dir, _)| dir.as_path());
    fill_estimates(
        &model,
        &dataset,
        &all,
        (out, cfg.seed, reuse),
        device,
        observer,
    )?;
    let source = Source {
        dataset: &dataset,
        out,
        shape,
    };
    let (_, input_val_errors) = validate(None, (&model, [1.0; 3]), &source, &val, device)?;
    let weights = match &resumed {
        Some((_, saved)) => saved.component_weights,
        None => loss_weights(&cfg, &model, &source, &train, device)?,
    };

    let ad = device.clone().autodiff();
    device.seed(cfg.seed);
    let optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .init();
    let first = cfg.refiner.init(&ad)?;
    let first = match &init {
        Some((dir, _)) => checkpoint::load(first, &dir.join(BEST_FILE))?,
        None => first,
    };
    let mut state = TrainState::new(first, optim);
    let mut log = RefineRunLog {
        config: cfg.clone(),
        base: checkpoint::absolute(base),
        base_sha256: model.weights_sha256.clone(),
        dataset: dataset.dir.clone(),
        dataset_manifest_sha256: manifest,
        input_val_errors,
        component_weights: weights,
        history: Vec::new(),
        best_epoch: None,
        best_val_error: f64::INFINITY,
        parameters: state.model.num_params(),
    };
    if let Some((dir, saved)) = resumed {
        state = state.load(&dir)?;
        log = saved;
        write_json(&out.join(LOG_FILE), &log)?;
    }
    let epochs = Epochs {
        cfg: &cfg,
        scored: (&model, weights),
        source: &source,
        splits: (&train, &val),
        devices: (&ad, device),
    };
    let run = (out, cfg.epochs);
    run_epochs(
        run,
        &mut log,
        state,
        observer,
        |state, epoch, log, observer| {
            let (state, record) = epochs.run(state, epoch, observer)?;
            let error = log.selection_error(&record.val_errors);
            Ok((state, record, error))
        },
        |o, r| o.epoch(r),
    )?;
    Ok(log)
}

/// The refined model and its dataset (with the config's sample limits) and the dataset's
/// manifest hash, refused unless the model is unrefined and was trained on that dataset.
fn open_inputs(
    (base, dataset_dir): (&Path, &Path),
    cfg: &RefineTrainConfig,
    device: &Device,
) -> Result<(TrainedModel, Dataset, String), ModelError> {
    let model = TrainedModel::load(base, device)?;
    if model.refiner.is_some() {
        return Err(ModelError::Config(format!(
            "{} is already refined; train a refiner of the model it refines",
            base.display()
        )));
    }
    let dataset = Dataset::open(dataset_dir)?.with_limits(cfg.train_samples, cfg.val_samples)?;
    let manifest = dataset.manifest.sha256(&dataset.dir)?;
    if manifest != model.log.dataset_manifest_sha256 {
        return Err(ModelError::Config(format!(
            "{} is not the dataset {} was trained on (its manifest differs); a refiner trains on the model's own training split, so that the test split stays unseen",
            dataset_dir.display(),
            base.display()
        )));
    }
    Ok((model, dataset, manifest))
}

/// The run `cfg.init` names and its log, refused unless it is a refiner of `model` with
/// this run's architecture and seed. A resumed run has its own weights and every estimate,
/// so it needs none (the first run may have been moved or deleted since).
fn initial_run(
    cfg: &RefineTrainConfig,
    model: &TrainedModel,
    resumed: bool,
) -> Result<Option<(PathBuf, RefineRunLog)>, ModelError> {
    let Some(dir) = cfg.init.as_ref().filter(|_| !resumed) else {
        return Ok(None);
    };
    let refused = |why: &str| {
        Err(ModelError::Config(format!(
            "init = {}: {why}",
            dir.display()
        )))
    };
    let Some(log) = RefinerPart::run_log(dir)? else {
        return refused("not a refiner run folder (no refiner log.json)");
    };
    if log.config.seed != cfg.seed {
        // Its cached estimates, drawn with its seed, would not be this run's.
        return refused("it was trained with another seed; start from one with this seed");
    }
    if log.base_sha256 != model.weights_sha256 {
        return refused("it refines another model; start from a refiner of this one");
    }
    if log.config.refiner != cfg.refiner {
        return refused(&format!(
            "its architecture {:?} is not this run's {:?}",
            log.config.refiner, cfg.refiner
        ));
    }
    Ok(Some((dir.clone(), log)))
}

/// What every epoch of a refiner run uses.
struct Epochs<'a> {
    cfg: &'a RefineTrainConfig,
    /// The refined model and the loss's component weights.
    scored: (&'a TrainedModel, [f64; 3]),
    source: &'a Source<'a>,
    /// Training and validation sample indices.
    splits: (&'a [usize], &'a [usize]),
    /// The autodiff device that trains and the plain one that validates.
    devices: (&'a Device, &'a Device),
}

impl Epochs<'_> {
    /// Epoch `epoch`: every training sample once through one of its mirrors, in an order
    /// that depends on (seed, epoch) only, then the EMA weights validated.
    fn run<O: RefineObserver + ?Sized>(
        &self,
        mut state: TrainState<Refiner>,
        epoch: usize,
        observer: &mut O,
    ) -> Result<(TrainState<Refiner>, RefineEpoch), ModelError> {
        let (cfg, (train, val), (ad, device)) = (self.cfg, self.splits, self.devices);
        let started = Instant::now();
        let views = if cfg.mirror_augmentation { 8 } else { 1 };
        let mirrors: Vec<Mirror> = Mirror::all().collect();
        let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
        let total_steps = steps_per_epoch * cfg.epochs;
        let settings = optimiser_settings!(cfg, accumulation: 1);
        let mut rng = seeded_rng(cfg.seed);
        rng.set_stream(1 + epoch as u64);
        let order = epoch_order(train.len(), views, &mut rng);
        let (mut loss_sum, mut norms, mut lr) = (0.0, Vec::new(), 0.0);
        for (b, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let step = epoch * steps_per_epoch + b;
            let entries: Vec<(usize, Mirror)> = chunk
                .iter()
                .map(|&e| (train[e / views], mirrors[e % views]))
                .collect();
            let batch = self.source.batch(&entries)?;
            let (_, loss, _) = forward(Some(&state.model), self.scored, batch, ad)?;
            let value = loss.clone().into_scalar::<f64>();
            if !value.is_finite() {
                return Err(ModelError::Input(format!(
                    "training loss became {value} at epoch {epoch}, batch {b}; lower lr"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &state.model);
            let norm;
            (state, norm, lr) = state.step(grads, (step, total_steps), &settings);
            norms.push(norm);
            loss_sum += value;
            observer.batch(epoch, b, steps_per_epoch, value);
        }
        let (val_loss, val_errors) =
            validate(Some(&state.ema), self.scored, self.source, val, device)?;
        let record = RefineEpoch {
            epoch,
            steps: (epoch + 1) * steps_per_epoch,
            lr,
            train_loss: loss_sum / steps_per_epoch as f64,
            val_loss,
            val_errors,
            mean_grad_norm: norms.iter().sum::<f64>() / norms.len().max(1) as f64,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((state, record))
    }
}
