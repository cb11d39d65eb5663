//! The latent predictor's trainer and the inference API end to end, on a tiny generated
//! dataset and a two-stage VAE: run folder and latent cache, exact resume, refusals,
//! overfitting a fixed batch, and the properties of `TrainedModel::predict`.
//! Tests hold `common::serial`'s lock: the resume and device comparisons need exact weights.

mod common;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use common::{serial, tiny_dataset};
use fiberflow_data::json::read_json;
use fiberflow_data::{Batch, Dataset, Loader, LoaderConfig, Mirror, Progress, Subset};
use fiberflow_model::ModelError;
use fiberflow_model::batch::{sample_array, to_tensors};
use fiberflow_model::diffusion::{
    DiffusionConfig, Prediction, PredictionLoss, SamplerConfig, SamplerKind, TimestepSpacing,
    seeded_rng, standard_normal,
};
use fiberflow_model::latent::{DualVae, LatentCache};
use fiberflow_model::physics::{PhysicsLossConfig, flow_rate_term};
use fiberflow_model::precision::Precision;
use fiberflow_model::predict::inputs::{ConditionInputs, Conditioning, LatentScales};
use fiberflow_model::predict::sampling::{PredictorKind, SampleOptions};
use fiberflow_model::predict::{
    EstimateRequest, PointEstimate, PredictRequest, Steering, TrainedModel,
};
use fiberflow_model::run::checkpoint;
use fiberflow_model::train::diffusion::{
    DiffusionEpoch, DiffusionObserver, DiffusionRunLog, DiffusionTrainConfig, train_diffusion,
};
use fiberflow_model::train::vae::{Stage, TrainObserver, VaeTrainConfig, train_vae};
use fiberflow_model::unet::UNetConfig;
use fiberflow_model::vae::VaeConfig;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

struct Quiet;
impl Progress for Quiet {}
impl TrainObserver for Quiet {}
impl DiffusionObserver for Quiet {}

/// Stops the run after its first `.0` epochs, like a kill right after a checkpoint.
struct StopAfter(usize);
impl Progress for StopAfter {}
impl DiffusionObserver for StopAfter {
    fn epoch(&mut self, record: &DiffusionEpoch) -> ControlFlow<()> {
        if record.epoch + 1 >= self.0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// A dataset of eight 16×16×3 samples (5 train, 1 val, 2 test) and a finished VAE.
struct Setup {
    tmp: tempfile::TempDir,
    data: PathBuf,
    stage1: PathBuf,
    stage2: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        tiny_dataset(&data, 3);
        let vae_cfg = VaeTrainConfig {
            vae: VaeConfig::new().with_channels(vec![8, 16]).with_groups(4),
            epochs: 2,
            warmup_steps: 2,
            lr: 3e-3,
            ..Default::default()
        };
        let (stage1, stage2) = (tmp.path().join("vae1"), tmp.path().join("vae2"));
        let device = [Device::flex()];
        train_vae(
            &device,
            Stage::One,
            &data,
            None,
            &stage1,
            vae_cfg.clone(),
            false,
            &mut Quiet,
        )
        .unwrap();
        train_vae(
            &device,
            Stage::Two,
            &data,
            Some(&stage1),
            &stage2,
            vae_cfg,
            false,
            &mut Quiet,
        )
        .unwrap();
        Self {
            tmp,
            data,
            stage1,
            stage2,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn train(
        &self,
        vae: &Path,
        out: &Path,
        cfg: DiffusionTrainConfig,
        resume: bool,
        observer: &mut dyn DiffusionObserver,
    ) -> Result<DiffusionRunLog, ModelError> {
        train_diffusion(
            &[Device::flex()],
            &self.data,
            vae,
            out,
            cfg,
            resume,
            observer,
        )
    }

    /// One epoch of the direct predictor into `name`, with or without the pressure channel.
    fn train_direct(&self, name: &str, pressure: bool) -> Result<DiffusionRunLog, ModelError> {
        let cfg = DiffusionTrainConfig {
            pressure_condition: pressure,
            ..config(PredictorKind::Direct, 1)
        };
        self.train(&self.stage2, &self.path(name), cfg, false, &mut Quiet)
    }

    /// All samples of `subset` in one batch, in split order, unmirrored.
    fn batch(&self, subset: Option<Subset>) -> Batch {
        let dataset = Dataset::open(&self.data).unwrap();
        let config = LoaderConfig {
            batch_size: 8,
            shuffle: false,
            seed: 0,
            preload: false,
            augment: Mirror::default(),
            drop_last: false,
        };
        let loader = Loader::new(&dataset, subset, config).unwrap();
        loader.epoch(0).next().unwrap().unwrap()
    }
}

/// The tiny network of these tests; `time_conditioned` follows the predictor.
fn unet(predictor: PredictorKind) -> UNetConfig {
    UNetConfig::new()
        .with_features(vec![8, 16])
        .with_groups(4)
        .with_attention(String::new())
        .with_time_embedding_dim(16)
        .with_time_mlp_dim(32)
        .with_time_conditioned(predictor == PredictorKind::Diffusion)
}

fn config(predictor: PredictorKind, epochs: usize) -> DiffusionTrainConfig {
    DiffusionTrainConfig {
        predictor,
        unet: unet(predictor),
        epochs,
        warmup_steps: 2,
        ema_decay: 0.9,
        val_sampler: SamplerConfig::new()
            .with_kind(SamplerKind::DpmSolver)
            .with_steps(4)
            .with_spacing(TimestepSpacing::Trailing),
        // Averaged features, whose channel counts the tests below spell out (folded ones
        // are tested in `predict::inputs` and end to end by the CLI's bundle test).
        fold_features: Some(false),
        ..Default::default()
    }
}

fn values(t: Tensor<5>) -> Vec<f32> {
    t.into_data().try_into_vec().unwrap()
}

fn modified(dir: &Path) -> BTreeMap<String, SystemTime> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, e.metadata().unwrap().modified().unwrap())
        })
        .collect()
}

/// The output of the U-Net with the weights in `file` on a fixed seeded input.
fn probe(cfg: &UNetConfig, file: &Path) -> Vec<f32> {
    let device = Device::flex();
    let model = checkpoint::load(cfg.init(&device).unwrap(), file).unwrap();
    let x = standard_normal([1, cfg.in_channels, 3, 8, 8], &mut seeded_rng(9), &device);
    let t = Tensor::<1>::from_floats([137.0], &device);
    values(model.forward(x, Some(t)).unwrap())
}

#[test]
#[allow(clippy::too_many_lines)] // one training run whose folder, cache and resume are checked in turn
fn training_writes_its_run_and_encodes_the_latent_cache_once() {
    let _serial = serial();
    let s = Setup::new();
    let out = s.path("diffusion");
    let log = s
        .train(
            &s.stage2,
            &out,
            config(PredictorKind::Diffusion, 2),
            false,
            &mut Quiet,
        )
        .unwrap();

    // History: 5 training samples in batches of 4 are 2 steps per epoch.
    let dataset = Dataset::open(&s.data).unwrap();
    let batches = dataset.indices(Some(Subset::Train)).len().div_ceil(4);
    assert_eq!(batches, 2);
    assert_eq!(log.history.len(), 2);
    for (e, r) in log.history.iter().enumerate() {
        assert_eq!((r.epoch, r.steps), (e, (e + 1) * batches));
        for v in [r.lr, r.train_loss, r.val_loss, r.mean_grad_norm] {
            assert!(v.is_finite() && v > 0.0, "{r:?}");
        }
        assert!(
            r.val_errors.relative_l2_total_normalised.is_finite(),
            "{r:?}"
        );
    }
    let (best, best_error) = log
        .history
        .iter()
        .map(|r| (r.epoch, r.val_errors.relative_l2_total_normalised))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(
        (log.best_epoch, log.best_val_error),
        (Some(best), best_error)
    );
    let on_disk: DiffusionRunLog = read_json(&out.join("log.json"), "").unwrap();
    assert_eq!(on_disk.history, log.history);
    assert_eq!(on_disk.config, log.config);
    // The network sees noisy latent ⊕ condition ⊕ geometry ⊕ pressure change:
    // 8 + 8 + 2 + 1 channels.
    assert_eq!(
        (log.config.unet.in_channels, log.config.unet.out_channels),
        (19, 8)
    );
    assert_eq!(log.vae, s.stage2);
    for file in [
        "best_model.bpk",
        "checkpoint/model.bpk",
        "checkpoint/ema.bpk",
        "checkpoint/optim.bpk",
        "checkpoint/state.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }

    // The cache: one file per sample (all splits) under latents/<key16>/.
    let cache = s.data.join("latents").join(&log.vae_key[..16]);
    let mut expected: Vec<String> = (0..8).map(|i| format!("{i:06}.safetensors")).collect();
    expected.push("meta.json".into());
    let mut names: Vec<String> = modified(&cache).into_keys().collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
    // Each file holds the encoders' μ of its own sample.
    let device = Device::flex();
    let vae = DualVae::load(&s.stage2, &device).unwrap();
    assert_eq!(vae.key, log.vae_key);
    let opened = LatentCache::open(&dataset, &vae).unwrap().unwrap();
    let batch = s.batch(None);
    let tb = to_tensors(&batch, &vae.normalizer, &device).unwrap();
    let (mu3d, mu2d) = (vae.encode_3d(&tb), vae.encode_2d(&tb));
    for (b, &i) in batch.indices.iter().enumerate() {
        let cached = opened.load(i).unwrap();
        for (got, want) in [(cached.mu3d, &mu3d), (cached.mu2d, &mu2d)] {
            let got: Vec<f32> = got.try_into_vec().unwrap();
            let want = values(want.clone().narrow(0, b, 1));
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-5, "sample {i}: cached latent off by {err}");
        }
    }

    // A second run (the direct predictor, without the pressure channel) reuses the cache
    // without rewriting a file.
    let before = modified(&cache);
    let direct = s.train_direct("direct", false).unwrap();
    assert_eq!(direct.vae_key, log.vae_key);
    assert_eq!(direct.history.len(), 1);
    // Condition ⊕ geometry only.
    assert_eq!(direct.config.unet.in_channels, 10);
    assert_eq!(modified(&cache), before);
    // Its log without the field (as runs made before it existed) reads as the default
    // `true`; the network's input channels say it was off.
    let direct_log = s.path("direct").join("log.json");
    let mut json: serde_json::Value = read_json(&direct_log, "").unwrap();
    // Without `fold_features` either, as runs made before it: averaged features.
    let config = json["config"].as_object_mut().unwrap();
    config.remove("pressure_condition");
    config.remove("fold_features");
    config.remove("mirror_augmentation");
    std::fs::write(&direct_log, serde_json::to_vec(&json).unwrap()).unwrap();
    let old = TrainedModel::load(&s.path("direct"), &Device::flex()).unwrap();
    assert!(!old.log.config.pressure_condition);
    assert_eq!(old.log.config.fold_features, Some(false));
    assert!(!old.log.config.mirrors());
    // A log whose channels fit neither is refused, not a shape panic at prediction.
    json["config"]["unet"]["in_channels"] = serde_json::json!(12);
    std::fs::write(&direct_log, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = TrainedModel::load(&s.path("direct"), &Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("takes 12 input channels"), "{err}");
    assert_eq!(
        std::fs::read_dir(s.data.join("latents")).unwrap().count(),
        1
    );

    // Latents encoded from another version of the dataset are refused, not reused.
    let meta_path = cache.join("meta.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    let stale = meta.replace(&vae.dataset_manifest_sha256, &"0".repeat(64));
    assert_ne!(stale, meta);
    std::fs::write(&meta_path, stale).unwrap();
    let err = LatentCache::open(&dataset, &vae).err().unwrap().to_string();
    assert!(err.contains("changed since its latents"), "{err}");
}

#[test]
fn mirror_augmentation_encodes_every_training_sample_through_its_mirrors() {
    let _serial = serial();
    let s = Setup::new();
    let out = s.path("mirrored");
    let cfg = DiffusionTrainConfig {
        mirror_augmentation: Some(true),
        ..config(PredictorKind::Direct, 1)
    };
    let log = s.train(&s.stage2, &out, cfg, false, &mut Quiet).unwrap();
    assert_eq!(log.config.mirror_augmentation, Some(true));

    // Seven mirrored files per training sample, none for the other splits.
    let dataset = Dataset::open(&s.data).unwrap();
    let train = dataset.indices(Some(Subset::Train));
    let cache = s.data.join("latents").join(&log.vae_key[..16]);
    let names: Vec<String> = modified(&cache).into_keys().collect();
    let mirrored: Vec<&String> = names.iter().filter(|n| n.contains("-m")).collect();
    assert_eq!(mirrored.len(), 7 * train.len());
    for code in 1..8 {
        for &i in &train {
            let name = format!("{i:06}-m{code}.safetensors");
            assert!(names.contains(&name), "{name} missing");
        }
    }

    // Each holds the encoding of the flow mirrored by the loader (which knows nothing
    // of file codes), and differs from the unmirrored latent.
    let device = Device::flex();
    let vae = DualVae::load(&s.stage2, &device).unwrap();
    let opened = LatentCache::open(&dataset, &vae).unwrap().unwrap();
    let (i, mirror) = (
        train[0],
        Mirror {
            y: true,
            z: true,
            ..Mirror::default()
        },
    );
    let mut sample = dataset.open_sample(i).unwrap().load().unwrap();
    mirror.apply(&mut sample);
    let batch = Batch {
        indices: vec![i],
        samples: vec![sample],
        mirrors: vec![mirror],
    };
    let tb = to_tensors(&batch, &vae.normalizer, &device).unwrap();
    let want = values(vae.encode_3d(&tb));
    let got: Vec<f32> = opened
        .load_mirrored(i, mirror)
        .unwrap()
        .mu3d
        .try_into_vec()
        .unwrap();
    let plain: Vec<f32> = opened.load(i).unwrap().mu3d.try_into_vec().unwrap();
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    assert!(max_diff(&got, &want) < 1e-5);
    assert!(max_diff(&got, &plain) > 1e-3);

    // The setting is part of the run: resuming without it is refused.
    let err = s
        .train(
            &s.stage2,
            &out,
            config(PredictorKind::Direct, 2),
            true,
            &mut Quiet,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("mirror_augmentation = true"), "{err}");
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let _serial = serial();
    let s = Setup::new();
    let (a, b) = (s.path("a"), s.path("b"));
    let cfg = || config(PredictorKind::Diffusion, 2);
    let full = s.train(&s.stage2, &a, cfg(), false, &mut Quiet).unwrap();
    let part = s
        .train(&s.stage2, &b, cfg(), false, &mut StopAfter(1))
        .unwrap();
    assert_eq!(part.history.len(), 1);
    let unet_cfg = &full.config.unet;
    let after_one = probe(unet_cfg, &b.join("checkpoint/model.bpk"));
    let resumed = s.train(&s.stage2, &b, cfg(), true, &mut Quiet).unwrap();

    let timeless = |h: &[DiffusionEpoch]| -> Vec<DiffusionEpoch> {
        h.iter()
            .cloned()
            .map(|mut r| {
                r.seconds = 0.0;
                r
            })
            .collect()
    };
    assert_eq!(resumed.history.len(), 2);
    assert_eq!(timeless(&resumed.history), timeless(&full.history));
    assert_eq!(
        (resumed.best_epoch, resumed.best_val_error),
        (full.best_epoch, full.best_val_error)
    );
    assert_eq!(resumed.scales, full.scales);
    for file in [
        "checkpoint/model.bpk",
        "checkpoint/ema.bpk",
        "best_model.bpk",
    ] {
        let (x, y) = (
            probe(unet_cfg, &a.join(file)),
            probe(unet_cfg, &b.join(file)),
        );
        assert!(x == y, "{file}: resumed weights differ");
    }
    // The probe tells weights apart: the second epoch changed the model.
    assert!(after_one != probe(unet_cfg, &a.join("checkpoint/model.bpk")));

    // An existing run is not overwritten, nor resumed with another configuration.
    let e = s
        .train(&s.stage2, &a, cfg(), false, &mut Quiet)
        .unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let mut other = cfg();
    other.lr = 5e-4;
    let e = s.train(&s.stage2, &a, other, true, &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("another configuration"), "{e}");
    let again: DiffusionRunLog = read_json(&a.join("log.json"), "").unwrap();
    assert_eq!(again.history, full.history);
}

#[test]
fn refuses_a_stage1_vae_and_a_vae_changed_after_training() {
    let _serial = serial();
    let s = Setup::new();
    let cfg = || config(PredictorKind::Direct, 1);
    let out = s.path("from-stage1");
    let e = s
        .train(&s.stage1, &out, cfg(), false, &mut Quiet)
        .unwrap_err();
    assert!(e.to_string().contains("stage-1 run"), "{e}");
    assert!(!out.exists(), "a refused run wrote {}", out.display());

    // A copy of the stage-2 run (same weights, so the same key and cache).
    let vae = s.path("vae2-copy");
    std::fs::create_dir(&vae).unwrap();
    for file in ["log.json", "best_model.bpk"] {
        std::fs::copy(s.stage2.join(file), vae.join(file)).unwrap();
    }
    let run = s.path("run");
    s.train(&vae, &run, cfg(), false, &mut Quiet).unwrap();
    let device = Device::flex();
    assert!(TrainedModel::load(&run, &device).is_ok());

    // Its stage-2 weights replaced by others of the same architecture.
    std::fs::copy(s.stage1.join("best_model.bpk"), vae.join("best_model.bpk")).unwrap();
    let e = TrainedModel::load(&run, &device).err().unwrap();
    assert!(e.to_string().contains("changed since"), "{e}");
    let e = s.train(&vae, &run, cfg(), true, &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("another VAE"), "{e}");

    // A folder that is not a diffusion run.
    let e = TrainedModel::load(&s.path("nothing"), &device)
        .err()
        .unwrap();
    assert!(e.to_string().contains("diffusion run"), "{e}");
    assert!(TrainedModel::load(&s.stage2, &device).is_err());
}

/// Trains `cfg` on one fixed batch for `steps` Adam steps; the MSE before and after.
fn fit(
    cfg: &UNetConfig,
    input: Tensor<5>,
    time: Option<Tensor<1>>,
    target: Tensor<5>,
    steps: usize,
) -> (f64, f64) {
    let device = Device::flex();
    device.seed(5);
    let ad = device.clone().autodiff();
    let on_ad = |t: Tensor<5>| Tensor::<5>::from_data(t.into_data(), &ad);
    let (x, y) = (on_ad(input), on_ad(target));
    let t = time.map(|t| Tensor::<1>::from_data(t.into_data(), &ad));
    let mut model = cfg.init(&ad).unwrap();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let loss = |m: &fiberflow_model::unet::UNet| {
        PredictionLoss::Mse
            .compute(m.forward(x.clone(), t.clone()).unwrap(), y.clone())
            .unwrap()
    };
    let first = loss(&model).into_scalar::<f64>();
    for _ in 0..steps {
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    (first, loss(&model).into_scalar::<f64>())
}

#[test]
fn a_dataset_without_the_2d_pressure_needs_pressure_condition_off() {
    let _serial = serial();
    let s = Setup::new();
    // Strip p_2d from every sample, as a reference import has none.
    let dataset = Dataset::open(&s.data).unwrap();
    for i in 0..dataset.len() {
        let file = dataset.open_sample(i).unwrap();
        let mut sample = file.load().unwrap();
        sample.p2d = None;
        sample.write(file.path()).unwrap();
    }
    let err = s.train_direct("with", true).unwrap_err().to_string();
    assert!(
        err.contains("`p_2d`") && err.contains("--set pressure_condition=false"),
        "{err}"
    );
    let log = s.train_direct("without", false).unwrap();
    assert_eq!(log.history.len(), 1);
}

#[test]
fn the_latent_networks_overfit_a_fixed_batch() {
    let _serial = serial();
    let s = Setup::new();
    let device = Device::flex();
    let vae = DualVae::load(&s.stage2, &device).unwrap();
    let batch = s.batch(Some(Subset::Train));
    let tb = to_tensors(&batch, &vae.normalizer, &device).unwrap();
    // The residual target and the condition, divided by their standard deviations as
    // the trainer does.
    let std = |t: &Tensor<5>| {
        let mean = t.clone().mean().into_scalar::<f64>();
        let var = t.clone().sub_scalar(mean).square().mean();
        var.into_scalar::<f64>().sqrt()
    };
    let mu2d = vae.encode_2d(&tb);
    let residual = vae.encode_3d(&tb) - mu2d.clone();
    let scales = LatentScales {
        residual: true,
        target: std(&residual),
        condition: std(&mu2d),
    };
    // Geometry (2 channels) and the pressure change (1) next to the 8 latent channels.
    let conditioning = Conditioning {
        pressure: true,
        fold: false,
    };
    let inputs = ConditionInputs::new(&vae, &tb, &scales, conditioning).unwrap();
    let x0 = residual.div_scalar(scales.target);
    let n = x0.dims()[0];

    let direct = unet(PredictorKind::Direct)
        .with_in_channels(11)
        .with_out_channels(8);
    let cond = Tensor::cat(vec![inputs.cond.clone(), inputs.geometry.clone()], 1);
    let (first, last) = fit(&direct, cond, None, x0.clone(), 150);
    assert!(last * 10.0 <= first, "direct: loss {first} → {last}");

    // The denoiser at one fixed t and ε: x_t → v.
    let schedule = DiffusionConfig::new()
        .with_prediction(Prediction::V)
        .init()
        .unwrap();
    let t = vec![300; n];
    let noise = standard_normal(x0.dims(), &mut seeded_rng(4), &device);
    let x_t = schedule.add_noise(x0.clone(), noise.clone(), &t).unwrap();
    let v = schedule.target(x0, noise, &t).unwrap();
    let denoiser = unet(PredictorKind::Diffusion)
        .with_in_channels(19)
        .with_out_channels(8);
    let input = Tensor::cat(vec![x_t, inputs.cond, inputs.geometry], 1);
    let times = Tensor::<1>::from_floats(vec![300.0f32; n].as_slice(), &device);
    let (first, last) = fit(&denoiser, input, Some(times), v, 200);
    assert!(last * 10.0 <= first, "denoiser: loss {first} → {last}");
}

/// Relative L2 error over the fluid of the velocity components, each divided by its
/// normalisation factor, computed on the sample arrays in m/s.
fn relative_error(prediction: Tensor<5>, batch: &Batch, factors: [f64; 3]) -> f64 {
    let (mut err, mut norm) = (0.0, 0.0);
    for (b, sample) in batch.samples.iter().enumerate() {
        let p = sample_array(prediction.clone(), b).unwrap();
        for ((idx, &u), &pv) in sample.u.indexed_iter().zip(p.iter()) {
            let (k, c, y, x) = idx;
            if sample.domain[[k, 0, y, x]] > 0.5 {
                let (u, pv) = (f64::from(u) / factors[c], f64::from(pv) / factors[c]);
                err += (pv - u).powi(2);
                norm += u * u;
            }
        }
    }
    (err / norm).sqrt()
}

#[test]
#[allow(clippy::too_many_lines)] // one trained model, every prediction path checked on it (training it once is the cost)
fn predictions_are_masked_finite_and_seeded() {
    let _serial = serial();
    let s = Setup::new();
    let device = Device::flex();
    let (diffusion, direct) = (s.path("diffusion"), s.path("direct"));
    s.train(
        &s.stage2,
        &diffusion,
        config(PredictorKind::Diffusion, 2),
        false,
        &mut Quiet,
    )
    .unwrap();
    s.train(
        &s.stage2,
        &direct,
        config(PredictorKind::Direct, 2),
        false,
        &mut Quiet,
    )
    .unwrap();
    let model = TrainedModel::load(&diffusion, &device).unwrap();
    let batch = s.batch(Some(Subset::Test));
    assert_eq!(batch.indices.len(), 2);
    let tb = to_tensors(&batch, &model.vae.normalizer, &device).unwrap();
    let options = SampleOptions {
        sampler: SamplerConfig::new().with_steps(5),
        guidance: 0.0,
    };
    let draws = model.predict(&tb, &options, 2, 7).unwrap();
    assert_eq!(draws.len(), 2);
    let fibre_voxels: usize = batch
        .samples
        .iter()
        .map(|s| s.domain.iter().filter(|&&m| m == 0.0).count())
        .sum();
    assert!(fibre_voxels > 0);
    for draw in &draws {
        assert_eq!(draw.dims(), [2, 3, 3, 16, 16]);
        for (b, sample) in batch.samples.iter().enumerate() {
            let p = sample_array(draw.clone(), b).unwrap();
            assert!(p.iter().all(|v| v.is_finite()));
            for ((k, _, y, x), &v) in p.indexed_iter() {
                if sample.domain[[k, 0, y, x]] == 0.0 {
                    assert_eq!(v, 0.0, "fibre voxel ({k}, {y}, {x}) of sample {b}");
                }
            }
            assert!(p.iter().any(|&v| v != 0.0));
        }
    }
    let (d0, d1) = (values(draws[0].clone()), values(draws[1].clone()));
    assert!(d0 != d1, "two draws are identical");
    let again = model.predict(&tb, &options, 2, 7).unwrap();
    assert!(values(again[0].clone()) == d0 && values(again[1].clone()) == d1);
    // Draw j depends on (seed, j) only, not on how many are drawn.
    assert!(values(model.predict(&tb, &options, 1, 7).unwrap()[0].clone()) == d0);
    let other = model.predict(&tb, &options, 1, 8).unwrap();
    assert!(
        values(other[0].clone()) != d0,
        "another seed gave the same draw"
    );
    let guided = SampleOptions {
        guidance: 1.5,
        ..options.clone()
    };
    let g = values(model.predict(&tb, &guided, 1, 7).unwrap()[0].clone());
    assert!(g.iter().all(|v| v.is_finite()) && g != d0);
    let bad = SampleOptions {
        guidance: -1.0,
        ..options.clone()
    };
    let e = model.predict(&tb, &bad, 1, 7).err().unwrap();
    assert!(e.to_string().contains("guidance"), "{e}");

    // The direct predictor draws the same field whatever the seed.
    let direct_model = TrainedModel::load(&direct, &device).unwrap();
    let draws = direct_model.predict(&tb, &options, 2, 7).unwrap();
    let d = values(draws[0].clone());
    assert!(d == values(draws[1].clone()));
    assert!(d == values(direct_model.predict(&tb, &options, 1, 8).unwrap()[0].clone()));

    // The posterior mean is the denoiser's first x̂0 (at t = T − 1, from each draw's
    // starting noise), decoded and averaged over the draws; the draw mean averages the
    // draws; a direct predictor's point estimate is its prediction.
    let inputs = ConditionInputs::new(
        &model.vae,
        &tb,
        &model.log.scales,
        model.log.config.conditioning(),
    )
    .unwrap();
    let [b, _, slices, h, w] = inputs.cond.dims();
    let latent_shape = [b, model.unet.config().out_channels, slices, h, w];
    let last = vec![model.schedule.train_timesteps() - 1; b];
    let by_hand: Vec<Vec<f32>> = (0..2)
        .map(|j| {
            let mut rng = seeded_rng(7);
            rng.set_stream(j);
            let x_t = standard_normal(latent_shape, &mut rng, &device);
            let times: Vec<f32> = last.iter().map(|&t| t as f32).collect();
            let input = Tensor::cat(
                vec![x_t.clone(), inputs.cond.clone(), inputs.geometry.clone()],
                1,
            );
            let out = model
                .unet
                .forward(
                    input,
                    Some(Tensor::<1>::from_floats(times.as_slice(), &device)),
                )
                .unwrap();
            let x0 = model
                .schedule
                .clip(model.schedule.x0_from(out, x_t, &last).unwrap());
            let latent = model.log.scales.latent(x0, inputs.mu2d.clone());
            values(model.vae.decode(latent, &tb))
        })
        .collect();
    let mean_of = |v: &[&[f32]]| -> Vec<f32> {
        (0..v[0].len())
            .map(|i| v.iter().map(|d| d[i]).sum::<f32>() / v.len() as f32)
            .collect()
    };
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    let estimate = |m: &TrainedModel, e: PointEstimate| {
        values(
            m.point_estimate(&tb, &options, (e, 2, 7), &Steering::default())
                .unwrap(),
        )
    };
    let posterior = estimate(&model, PointEstimate::PosteriorMean);
    assert!(max_diff(&posterior, &mean_of(&[&by_hand[0], &by_hand[1]])) < 1e-5);
    let gap = max_diff(&posterior, &mean_of(&[&d0, &d1]));
    assert!(gap > 0.0, "{gap}");
    let draw_mean = estimate(&model, PointEstimate::DrawMean);
    assert!(max_diff(&draw_mean, &mean_of(&[&d0, &d1])) < 1e-5);
    assert!(estimate(&direct_model, PointEstimate::PosteriorMean) == d);

    // Averaged over the eight mirror images, an estimate is mirror-equivariant: that of a
    // mirrored sample is the mirrored estimate (the plain one is not).
    let mirror = Mirror {
        x: true,
        z: true,
        ..Mirror::default()
    };
    let sample = &batch.samples[0];
    let mut mirrored = sample.clone();
    mirror.apply(&mut mirrored);
    let none = Steering::default();
    for (m, kind) in [
        (&direct_model, PointEstimate::DrawMean),
        (&model, PointEstimate::PosteriorMean),
    ] {
        let at = |s: &fiberflow_data::Sample, symmetrize: bool| {
            let request = EstimateRequest {
                kind,
                noises: 1,
                seed: 3,
                symmetrize,
                refine: false,
            };
            m.sample_estimate(s, &options, &request, &none, &device)
                .unwrap()
        };
        let gap = |symmetrize: bool| {
            let mut back = at(&mirrored, symmetrize);
            mirror.apply_to(fiberflow_data::Field::U, &mut back);
            let (a, b) = (at(sample, symmetrize), back);
            let d: f32 = (&a - &b).iter().map(|v| v * v).sum::<f32>().sqrt();
            d / a.iter().map(|v| v * v).sum::<f32>().sqrt()
        };
        let (symmetric, plain) = (gap(true), gap(false));
        assert!(
            symmetric < 1e-5 && plain > 1e-3,
            "{kind:?}: {symmetric} {plain}"
        );
    }
    // A known slice stays known through the z mirrors: it comes back as the truth.
    let known = Steering {
        physics: 0.0,
        known_slices: vec![0],
    };
    let u = model
        .sample_estimate(
            sample,
            &options,
            &EstimateRequest {
                seed: 3,
                ..EstimateRequest::default()
            },
            &known,
            &device,
        )
        .unwrap();
    let truth = &sample.u * &sample.domain;
    let first = |a: &ndarray::Array4<f32>| a.index_axis(ndarray::Axis(0), 0).to_owned();
    let slice_gap = (first(&u) - first(&truth))
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = truth.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(slice_gap < 1e-5 * scale, "{slice_gap} of {scale}");

    // The prediction pipeline: its point estimate is sample_estimate's, its spread is the
    // draws' (none from the direct predictor, whose draws coincide), both zero in fibres.
    let request = PredictRequest {
        options: options.clone(),
        estimate: EstimateRequest {
            noises: 2,
            seed: 3,
            ..EstimateRequest::default()
        },
        steering: Steering::default(),
    };
    let out = model.predict_stack(sample, &request, &device).unwrap();
    let alone = model
        .sample_estimate(sample, &options, &request.estimate, &none, &device)
        .unwrap();
    assert_eq!(out.mean, alone);
    assert_eq!(out.estimate, PointEstimate::PosteriorMean);
    assert!(out.std.iter().any(|v| *v > 0.0));
    for field in [&out.mean, &out.std] {
        let leaks = field
            .indexed_iter()
            .filter(|((k, _, y, x), v)| sample.domain[[*k, 0, *y, *x]] == 0.0 && **v != 0.0)
            .count();
        assert_eq!(leaks, 0);
    }
    let one = direct_model
        .predict_stack(sample, &request, &device)
        .unwrap();
    assert!(one.std.iter().all(|v| *v == 0.0));

    // In bf16 and f16 every kind of draw (plain, with classifier-free guidance, from the
    // direct predictor, physics-guided, which differentiates through the half networks)
    // matches f32's to the type's precision and comes back in f32.
    let relative = |a: &[f32], b: &[f32]| {
        let d: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let n: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (d / n).sqrt()
    };
    let autodiff = device.clone().autodiff();
    let physics = Steering {
        physics: 1.0,
        known_slices: Vec::new(),
    };
    let guided_f32 = TrainedModel::load(&diffusion, &autodiff)
        .unwrap()
        .predict_steered(&tb, &options, 1, 7, &physics)
        .unwrap();
    let guided_f32 = values(guided_f32[0].clone());
    let f32_draws = [
        (&diffusion, &options, &d0),
        (&diffusion, &guided, &g),
        (&direct, &options, &d),
    ];
    for (precision, tol) in [(Precision::Bf16, 0.01), (Precision::F16, 0.002)] {
        for (run, options, reference) in f32_draws {
            let h = TrainedModel::load(run, &device)
                .unwrap()
                .with_precision(precision)
                .predict(&tb, options, 1, 7)
                .unwrap()
                .remove(0);
            assert_eq!(h.dtype(), burn::tensor::DType::F32);
            let e = relative(&values(h), reference);
            assert!(e > 0.0 && e < tol, "{precision:?}, {}: {e}", run.display());
        }
        let guided = TrainedModel::load(&diffusion, &autodiff)
            .unwrap()
            .with_precision(precision)
            .predict_steered(&tb, &options, 1, 7, &physics)
            .unwrap();
        let e = relative(&values(guided[0].clone()), &guided_f32);
        assert!(e > 0.0 && e < tol, "{precision:?}, physics-guided: {e}");
    }

    // best_model.bpk reproduces the logged validation error: the trainer's draw for val
    // sample i is the predictor's draw i of the run seed.
    let val = s.batch(Some(Subset::Val));
    assert_eq!(val.indices.len(), 1);
    let index = val.indices[0];
    for m in [&model, &direct_model] {
        let tb = to_tensors(&val, &m.vae.normalizer, &device).unwrap();
        let options = SampleOptions {
            sampler: m.log.config.val_sampler.clone(),
            guidance: 0.0,
        };
        let draws = m
            .predict(&tb, &options, index + 1, m.log.config.seed)
            .unwrap();
        let error = relative_error(draws[index].clone(), &val, m.vae.normalizer.factors);
        let logged = m.log.best_val_error;
        assert!(
            (error - logged).abs() <= 1e-5 * logged,
            "{:?}: recomputed {error} vs logged {logged}",
            m.log.config.predictor
        );
    }
}

#[test]
fn invalid_configs_fail_before_the_dataset_is_read() {
    let _serial = serial();
    let s = Setup::new();
    let missing = s.path("no-dataset");
    let out = s.path("out");
    let check = |cfg: DiffusionTrainConfig, field: &str| {
        let e = train_diffusion(
            &[Device::flex()],
            &missing,
            &s.stage2,
            &out,
            cfg,
            false,
            &mut Quiet,
        )
        .unwrap_err();
        assert!(
            matches!(e, ModelError::Config(_)) && e.to_string().contains(field),
            "{field}: {e}"
        );
        assert!(!out.exists());
    };
    let direct = || config(PredictorKind::Direct, 1);
    let denoiser = || config(PredictorKind::Diffusion, 1);
    let mut c = direct();
    c.unet.time_conditioned = true;
    check(c, "time_conditioned");
    let mut c = denoiser();
    c.unet.time_conditioned = false;
    check(c, "time_conditioned");
    for lr in [0.0, -1e-3, f64::NAN] {
        let mut c = denoiser();
        c.lr = lr;
        check(c, "lr");
    }
    let mut c = denoiser();
    c.min_lr = 2.0 * c.lr;
    check(c, "min_lr");
    for p in [1.0, 1.5, -0.1, f64::NAN] {
        let mut c = denoiser();
        c.cond_dropout = p;
        check(c, "cond_dropout");
    }
    let mut c = denoiser();
    c.ema_decay = 1.0;
    check(c, "ema_decay");
    let mut c = denoiser();
    c.epochs = 0;
    check(c, "epochs");
    let mut c = denoiser();
    c.unet.groups = 3;
    check(c, "groups");
    let mut c = denoiser();
    c.diffusion.beta_end = c.diffusion.beta_start;
    check(c, "beta_end");
    // The valid configuration gets as far as the missing dataset.
    let e = train_diffusion(
        &[Device::flex()],
        &missing,
        &s.stage2,
        &out,
        direct(),
        false,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(matches!(e, ModelError::Data(_)), "{e}");
    // A network too deep for the 8 × 8 latent is refused before training starts.
    let mut c = denoiser();
    c.unet.features = vec![8, 8, 8, 8, 8];
    let e = s.train(&s.stage2, &out, c, false, &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("not divisible"), "{e}");
    assert!(!out.exists());
}

/// Data-parallel training: the batches of each step dealt to two devices (two threads
/// sharing the CPU here), physics losses included, log and save exactly what one device
/// does; more devices than batches per step are refused.
#[test]
fn two_devices_train_exactly_as_one() {
    let _serial = serial();
    let s = Setup::new();
    let cfg = DiffusionTrainConfig {
        accumulation: 2,
        batch_size: 2,
        physics: PhysicsLossConfig {
            divergence: 1.0,
            every: 1,
            ..Default::default()
        },
        ..config(PredictorKind::Diffusion, 1)
    };
    let runs: Vec<(Vec<DiffusionEpoch>, Vec<f32>)> = [1, 2]
        .into_iter()
        .map(|n| {
            let out = s.path(&format!("devices-{n}"));
            let devices = vec![Device::flex(); n];
            let mut log = train_diffusion(
                &devices,
                &s.data,
                &s.stage2,
                &out,
                cfg.clone(),
                false,
                &mut Quiet,
            )
            .unwrap();
            log.history.iter_mut().for_each(|r| r.seconds = 0.0);
            (
                log.history,
                probe(&log.config.unet, &out.join("checkpoint/model.bpk")),
            )
        })
        .collect();
    assert!(runs[0].0[0].train_physics.is_some());
    assert!(
        runs[0] == runs[1],
        "one device: {:?}\ntwo: {:?}",
        runs[0].0,
        runs[1].0
    );
    let devices = vec![Device::flex(); 3];
    let e = train_diffusion(
        &devices,
        &s.data,
        &s.stage2,
        &s.path("three"),
        cfg,
        false,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("accumulation=3"), "{e}");
}

#[test]
fn physics_losses_reach_the_denoiser_and_are_logged() {
    let _serial = serial();
    let s = Setup::new();
    let plain_cfg = config(PredictorKind::Diffusion, 1);
    let mut cfg = plain_cfg.clone();
    cfg.physics = PhysicsLossConfig {
        divergence: 1.0,
        fibre_velocity: 1.0,
        flow_rate: 1.0,
        smoothness: 1e-3,
        every: 1,
    };
    let (plain_dir, physics_dir) = (s.path("plain"), s.path("physics"));
    let plain = s
        .train(&s.stage2, &plain_dir, plain_cfg, false, &mut Quiet)
        .unwrap();
    let physics = s
        .train(&s.stage2, &physics_dir, cfg, false, &mut Quiet)
        .unwrap();
    assert_eq!(plain.history[0].train_physics, None);
    let p = physics.history[0].train_physics.unwrap();
    assert!(p.is_finite() && p > 0.0, "{p}");
    // Same seeds, data and first batch: only the physics gradient can make the weights
    // differ (a detached physics loss would leave them identical).
    let unet = &plain.config.unet;
    assert_ne!(
        probe(unet, &plain_dir.join("best_model.bpk")),
        probe(unet, &physics_dir.join("best_model.bpk"))
    );
    for log in [&plain, &physics] {
        let m = log.history[0].val_physics;
        for v in [m.divergence, m.fibre_velocity, m.flow_rate, m.smoothness] {
            assert!(v.is_finite() && v >= 0.0, "{m:?}");
        }
    }
    // The solver's field has a finite, small discrete divergence at this slice pitch.
    let truth = physics.val_physics_truth;
    assert!(
        truth.divergence > 0.0 && truth.divergence < 1.0,
        "{truth:?}"
    );

    // Each 2D slice of the solver is incompressible, so its flux Q(x) is the same
    // through every x column: the flow-rate term of U_2d vanishes, that of a field
    // with a column-dependent factor does not.
    let vae = DualVae::load(&s.stage2, &Device::flex()).unwrap();
    let tb = to_tensors(&s.batch(None), &vae.normalizer, &Device::flex()).unwrap();
    let u2d = vae.normalizer.denormalize(tb.u2d.clone()) * tb.mask.clone();
    let cv2 = flow_rate_term(u2d.clone(), tb.mask.clone()).into_scalar::<f64>();
    assert!(cv2 < 1e-4, "{cv2}");
    let w = u2d.dims()[4];
    let ramp: Vec<f32> = (0..w).map(|x| 1.0 + x as f32 / w as f32).collect();
    let ramp = Tensor::<1>::from_floats(ramp.as_slice(), &Device::flex()).reshape([1, 1, 1, 1, w]);
    let skewed = flow_rate_term(u2d * ramp, tb.mask).into_scalar::<f64>();
    assert!(skewed > 100.0 * cv2 && skewed > 1e-3, "{skewed} vs {cv2}");
}
