//! The full-resolution refiner end to end, on a tiny generated dataset, a two-stage VAE and
//! a direct predictor: the cached estimates are the model's own, the run predicts as the
//! refined model and exports into a bundle that predicts the same, it learns, and it
//! refuses what it cannot use. Tests hold `common::serial`'s lock (Burn's flex generator is
//! global).

mod common;

use common::{serial, tiny_dataset};
use fiberflow_data::{Dataset, Field, Mirror, Progress, Subset};
use fiberflow_model::bundle::{Bundle, ExportInfo, FORMAT, export};
use fiberflow_model::device::Device;
use fiberflow_model::predict::sampling::{PredictorKind, SampleOptions};
use fiberflow_model::predict::{EstimateRequest, Steering, TrainedModel};
use fiberflow_model::refine::RefinerConfig;
use fiberflow_model::train::diffusion::{DiffusionObserver, DiffusionTrainConfig, train_diffusion};
use fiberflow_model::train::refine::{
    ESTIMATES_DIR, RefineObserver, RefineRunLog, RefineTrainConfig, train_refiner,
};
use fiberflow_model::train::vae::{Stage, TrainObserver, VaeTrainConfig, train_vae};
use fiberflow_model::unet::UNetConfig;
use fiberflow_model::vae::VaeConfig;
use ndarray::{Array4, Axis};
use std::path::PathBuf;

struct Quiet;
impl Progress for Quiet {}
impl TrainObserver for Quiet {}
impl DiffusionObserver for Quiet {}
impl RefineObserver for Quiet {}

/// Stops a refiner run after its first epoch, as a kill there would.
struct StopAfterFirst;
impl Progress for StopAfterFirst {}
impl RefineObserver for StopAfterFirst {
    fn epoch(
        &mut self,
        _: &fiberflow_model::train::refine::RefineEpoch,
    ) -> std::ops::ControlFlow<()> {
        std::ops::ControlFlow::Break(())
    }
}

/// A tiny dataset, a VAE and a direct predictor trained on it.
struct Setup {
    tmp: tempfile::TempDir,
    data: PathBuf,
    direct: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        tiny_dataset(&data, 3);
        let vae_cfg = VaeTrainConfig {
            vae: VaeConfig::new().with_channels(vec![8, 16]).with_groups(4),
            epochs: 1,
            warmup_steps: 2,
            lr: 3e-3,
            ..Default::default()
        };
        let (stage1, stage2) = (tmp.path().join("vae1"), tmp.path().join("vae2"));
        let device = [Device::flex()];
        for (stage, out, from) in [
            (Stage::One, &stage1, None),
            (Stage::Two, &stage2, Some(&stage1)),
        ] {
            let from = from.map(PathBuf::as_path);
            train_vae(
                &device,
                stage,
                &data,
                from,
                out,
                vae_cfg.clone(),
                false,
                &mut Quiet,
            )
            .unwrap();
        }
        let cfg = DiffusionTrainConfig {
            predictor: PredictorKind::Direct,
            unet: UNetConfig::new()
                .with_features(vec![8, 16])
                .with_groups(4)
                .with_attention(String::new())
                .with_time_conditioned(false),
            epochs: 1,
            warmup_steps: 2,
            ..Default::default()
        };
        let direct = tmp.path().join("direct");
        train_diffusion(&device, &data, &stage2, &direct, cfg, false, &mut Quiet).unwrap();
        Self { tmp, data, direct }
    }

    fn refine(
        &self,
        name: &str,
        cfg: RefineTrainConfig,
        resume: bool,
    ) -> Result<RefineRunLog, String> {
        let out = self.tmp.path().join(name);
        train_refiner(
            &Device::flex(),
            &self.direct,
            &self.data,
            &out,
            cfg,
            resume,
            &mut Quiet,
        )
        .map_err(|e| e.to_string())
    }
}

fn config(epochs: usize, lr: f64) -> RefineTrainConfig {
    RefineTrainConfig {
        refiner: RefinerConfig::new()
            .with_features(vec![8, 16])
            .with_groups(4),
        epochs,
        batch_size: 2,
        lr,
        warmup_steps: 2,
        ema_decay: 0.5,
        ..Default::default()
    }
}

/// ‖a − b‖ / ‖b‖ over every entry.
fn gap(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    let d: f32 = (a - b).iter().map(|v| v * v).sum();
    (d / b.iter().map(|v| v * v).sum::<f32>()).sqrt()
}

fn estimate(model: &TrainedModel, sample: &fiberflow_data::Sample, refine: bool) -> Array4<f32> {
    let options = SampleOptions {
        sampler: model.log.config.val_sampler.clone(),
        guidance: 0.0,
    };
    let request = EstimateRequest {
        seed: 5,
        refine,
        ..EstimateRequest::default()
    };
    model
        .sample_estimate(
            sample,
            &options,
            &request,
            &Steering::default(),
            &Device::flex(),
        )
        .unwrap()
}

#[test]
#[allow(clippy::too_many_lines)] // one refiner run followed from its cache to its bundle (training it once is the cost)
fn a_refiner_run_caches_the_models_estimates_and_predicts_as_the_refined_model() {
    let _serial = serial();
    let s = Setup::new();
    let cfg = RefineTrainConfig {
        seed: 5,
        ..config(2, 3e-3)
    };
    let log = s.refine("refiner", cfg.clone(), false).unwrap();
    let out = s.tmp.path().join("refiner");
    let dataset = Dataset::open(&s.data).unwrap();
    let base = TrainedModel::load(&s.direct, &Device::flex()).unwrap();
    assert!(base.refiner.is_none());
    // One cached estimate per training and validation sample, each the model's default
    // estimate (seeded by the run's seed), unrefined.
    let cached: Vec<usize> = dataset
        .indices(Some(Subset::Train))
        .into_iter()
        .chain(dataset.indices(Some(Subset::Val)))
        .collect();
    assert_eq!(
        std::fs::read_dir(out.join(ESTIMATES_DIR)).unwrap().count(),
        cached.len()
    );
    let val = dataset.indices(Some(Subset::Val))[0];
    let sample = dataset.open_sample(val).unwrap().load().unwrap();
    let unrefined = estimate(&base, &sample, false);
    // The validation error before refinement is that estimate's.
    let fluid = |a: &Array4<f32>, c: usize| {
        let m = sample.domain.index_axis(Axis(1), 0);
        (a.index_axis(Axis(1), c).to_owned() * m).mapv(|v| v as f64)
    };
    for c in 0..3 {
        let (p, t) = (fluid(&unrefined, c), fluid(&sample.u, c));
        let want = ((&p - &t).mapv(|v| v * v).sum() / t.mapv(|v| v * v).sum()).sqrt();
        let got = log.input_val_errors.relative_l2[c];
        assert!(
            (got - want).abs() < 1e-4 * want.max(1e-3),
            "component {c}: {got} vs {want}"
        );
    }
    // The run loads as the refined model: a different estimate, zero in fibre, known
    // slices given back as the truth.
    let refined_model = TrainedModel::load(&out, &Device::flex()).unwrap();
    assert!(refined_model.refiner.is_some());
    let refined = estimate(&refined_model, &sample, true);
    assert!(
        gap(&refined, &unrefined) > 1e-4,
        "{}",
        gap(&refined, &unrefined)
    );
    assert_eq!(estimate(&refined_model, &sample, false), unrefined);
    let fibre = refined
        .indexed_iter()
        .filter(|((k, _, y, x), _)| sample.domain[[*k, 0, *y, *x]] == 0.0)
        .map(|(_, v)| v.abs())
        .fold(0f32, f32::max);
    assert_eq!(fibre, 0.0);
    let known = refined_model
        .refined(&sample, unrefined.clone(), (&[1], false), &Device::flex())
        .unwrap();
    let truth = &sample.u * &sample.domain;
    assert_eq!(known.index_axis(Axis(0), 1), truth.index_axis(Axis(0), 1));
    // Symmetrized, the refinement is mirror-equivariant: the mirrored sample and estimate
    // refine to the mirrored answer, which the refiner alone does not.
    let dev = Device::flex();
    let refine = |s: &fiberflow_data::Sample, e: &Array4<f32>, sym: bool| {
        refined_model
            .refined(s, e.clone(), (&[], sym), &dev)
            .unwrap()
    };
    let mirror = Mirror {
        x: false,
        y: true,
        z: true,
    };
    let (mut image, mut image_estimate) = (sample.clone(), unrefined.clone());
    mirror.apply(&mut image);
    mirror.apply_to(Field::U, &mut image_estimate);
    let mirrored = |sym: bool| {
        let mut back = refine(&image, &image_estimate, sym);
        mirror.apply_to(Field::U, &mut back);
        back
    };
    let (sym, plain) = (
        refine(&sample, &unrefined, true),
        refine(&sample, &unrefined, false),
    );
    assert!(
        gap(&mirrored(true), &sym) < 1e-5,
        "{}",
        gap(&mirrored(true), &sym)
    );
    assert!(
        gap(&mirrored(false), &plain) > 1e-5,
        "{}",
        gap(&mirrored(false), &plain)
    );

    // Resuming with the same configuration goes on; with another, it is refused.
    let more = s.refine(
        "refiner",
        RefineTrainConfig {
            epochs: 3,
            ..cfg.clone()
        },
        true,
    );
    assert!(more.is_err(), "epochs are part of the configuration");
    let e = s
        .refine(
            "refiner",
            RefineTrainConfig {
                lr: 1e-4,
                ..cfg.clone()
            },
            true,
        )
        .unwrap_err();
    assert!(e.contains("another configuration"), "{e}");
    let again = s.refine("refiner", cfg.clone(), true).unwrap();
    assert_eq!(
        again.history, log.history,
        "a finished run resumes to itself"
    );
    // A run killed while filling its estimates resumes and keeps the ones it wrote.
    let killed = s.tmp.path().join("killed").join(ESTIMATES_DIR);
    std::fs::create_dir_all(&killed).unwrap();
    let name = format!("{val:06}.safetensors");
    std::fs::copy(out.join(ESTIMATES_DIR).join(&name), killed.join(&name)).unwrap();
    let written = std::fs::metadata(killed.join(&name))
        .unwrap()
        .modified()
        .unwrap();
    let e = s.refine("killed", cfg.clone(), false).unwrap_err();
    assert!(e.contains("--resume"), "{e}");
    let resumed = s.refine("killed", cfg, true).unwrap();
    assert_eq!(resumed.history.len(), 2);
    let kept = std::fs::metadata(killed.join(&name))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(kept, written, "a cached estimate was computed again");

    // Exported, the refined model predicts the same from the bundle.
    let bundle_path = s.tmp.path().join("model.ffmodel");
    let info = ExportInfo {
        check_samples: 1,
        check_draws: 1,
        ..Default::default()
    };
    let card = export(&out, &bundle_path, &info, &Device::flex()).unwrap();
    assert_eq!(card.format, FORMAT);
    assert_eq!(card.training.len(), 4);
    assert_eq!(card.training[3].role, "full-resolution refiner");
    let bundle = Bundle::open(&bundle_path).unwrap();
    let from_bundle = bundle.load(&Device::flex()).unwrap();
    assert!(gap(&estimate(&from_bundle, &sample, true), &refined) < 1e-6);
    let now = bundle.check(&from_bundle, &Device::flex()).unwrap();
    assert!((now[0][0] - card.check[0].relative_l2[0]).abs() < 1e-5);

    // Unpacked, its runs load on their own (each log pointing at the unpacked run it
    // builds on) and predict as the bundle does; a folder in use is refused.
    let unpacked = s.tmp.path().join("unpacked");
    let runs = bundle.unpack(&unpacked).unwrap();
    let base_again = TrainedModel::load(&runs.predictor, &Device::flex()).unwrap();
    assert!(base_again.refiner.is_none());
    assert!(
        base_again.log.vae.starts_with(&unpacked),
        "{:?}",
        base_again.log.vae
    );
    assert!(base_again.vae.stage1_dir.starts_with(&unpacked));
    assert_eq!(estimate(&base_again, &sample, false), unrefined);
    let refined_again =
        TrainedModel::load(runs.refiner.as_ref().unwrap(), &Device::flex()).unwrap();
    assert!(gap(&estimate(&refined_again, &sample, true), &refined) < 1e-6);
    let e = bundle.unpack(&unpacked).unwrap_err().to_string();
    assert!(e.contains("not an empty folder"), "{e}");
}

#[test]
fn the_refiner_learns_and_refuses_what_it_cannot_use() {
    let _serial = serial();
    let s = Setup::new();
    // On the five training samples, seen as given, it fits: the training loss falls far
    // below its start (measured: 0.37 to 0.03 in 40 epochs).
    let fit = RefineTrainConfig {
        mirror_augmentation: false,
        ..config(40, 3e-3)
    };
    let log = s.refine("fit", fit.clone(), false).unwrap();
    let first = log.history[0].train_loss;
    let last = log.history.last().unwrap().train_loss;
    assert!(last < 0.3 * first, "train loss {first} -> {last}");
    // Balanced by default: each component weighs the inverse of the estimates' mean
    // squared relative error, so vz (the least accurate) weighs least; unbalanced, 1.
    let w = log.component_weights;
    assert!(
        w[2] < w[0] && w[2] < w[1] && w.iter().all(|w| w.is_finite() && *w > 0.0),
        "{w:?}"
    );
    let plain = RefineTrainConfig {
        balance_components: false,
        epochs: 1,
        ..fit.clone()
    };
    assert_eq!(
        s.refine("plain", plain, false).unwrap().component_weights,
        [1.0; 3]
    );

    // Another dataset than the model's: its test split would not be held out.
    let other = s.tmp.path().join("other");
    tiny_dataset(&other, 4);
    let e = train_refiner(
        &Device::flex(),
        &s.direct,
        &other,
        &s.tmp.path().join("r2"),
        config(1, 1e-3),
        false,
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not the dataset"), "{e}");
    // A refined model is not refined again; a config that cannot build fails first.
    let e = train_refiner(
        &Device::flex(),
        &s.tmp.path().join("fit"),
        &s.data,
        &s.tmp.path().join("r3"),
        config(1, 1e-3),
        false,
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("already refined"), "{e}");
    let bad = RefineTrainConfig {
        refiner: RefinerConfig::new().with_features(vec![6]),
        ..config(1, 1e-3)
    };
    let e = s.refine("r4", bad, false).unwrap_err();
    assert!(e.contains("groups"), "{e}");
    assert!(!s.tmp.path().join("r4").exists());
    // A model whose weights changed since is refused by the refiner run.
    let weights = s.direct.join("best_model.bpk");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let e = match TrainedModel::load(&s.tmp.path().join("fit"), &Device::flex()) {
        Ok(_) => panic!("a refiner of changed weights loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("changed since the refiner"), "{e}");
}

#[test]
fn a_refiner_run_continues_from_another_of_the_same_model() {
    let _serial = serial();
    let s = Setup::new();
    let fit = RefineTrainConfig {
        mirror_augmentation: false,
        ..config(10, 3e-3)
    };
    let log = s.refine("fit", fit.clone(), false).unwrap();
    let w = log.component_weights;
    // Started from the fitted run's weights at a learning rate too small to move them,
    // the first epoch validates as the fitted run's best epoch did, where a fresh refiner
    // validates elsewhere; the emphasis multiplies the balanced weights.
    let fitted = &log.history[log.best_epoch.unwrap()].val_errors.relative_l2;
    let still = RefineTrainConfig {
        init: Some(s.tmp.path().join("fit")),
        component_emphasis: [1.0, 2.0, 1.0],
        epochs: 1,
        lr: 1e-12,
        min_lr: 1e-12,
        ..fit.clone()
    };
    let go_on = s.refine("go-on", still.clone(), false).unwrap();
    let first = &go_on.history[0].val_errors.relative_l2;
    for c in 0..3 {
        assert!(
            (first[c] / fitted[c] - 1.0).abs() < 1e-4,
            "{first:?} vs {fitted:?}"
        );
    }
    let fresh = RefineTrainConfig {
        init: None,
        ..still.clone()
    };
    let fresh = &s.refine("fresh", fresh, false).unwrap().history[0].val_errors;
    let moved = (0..3).map(|c| (fresh.relative_l2[c] / fitted[c] - 1.0).abs());
    assert!(moved.fold(0.0, f64::max) > 1e-2, "{fresh:?} vs {fitted:?}");
    let emphasised = go_on.component_weights;
    for (c, e) in [1.0, 2.0, 1.0].iter().enumerate() {
        assert!(
            (emphasised[c] / (e * w[c]) - 1.0).abs() < 1e-9,
            "{emphasised:?}"
        );
    }
    // A continuation stopped after its first epoch resumes without the run it started
    // from (moved away since): its own checkpoint and estimates are all it needs.
    let two = RefineTrainConfig {
        epochs: 2,
        ..still.clone()
    };
    let stopped = s.tmp.path().join("stopped");
    let run = |observer: &mut dyn RefineObserver, resume: bool| {
        train_refiner(
            &Device::flex(),
            &s.direct,
            &s.data,
            &stopped,
            two.clone(),
            resume,
            observer,
        )
    };
    assert_eq!(run(&mut StopAfterFirst, false).unwrap().history.len(), 1);
    let (fit_dir, moved) = (s.tmp.path().join("fit"), s.tmp.path().join("fit-moved"));
    std::fs::rename(&fit_dir, &moved).unwrap();
    assert_eq!(run(&mut Quiet, true).unwrap().history.len(), 2);
    std::fs::rename(&moved, &fit_dir).unwrap();
    // Its estimates come from the fitted run's cache: a damaged one there is read, not
    // recomputed.
    let cached = s.tmp.path().join("fit").join(ESTIMATES_DIR);
    let damaged = std::fs::read_dir(&cached)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&damaged, b"not safetensors").unwrap();
    let e = s.refine("go-on-2", still.clone(), false).unwrap_err();
    assert!(e.contains(&*damaged.to_string_lossy()), "{e}");
    // What it starts from must be a refiner of this model with this architecture.
    let e = s
        .refine(
            "r5",
            RefineTrainConfig {
                init: Some(s.direct.clone()),
                ..still.clone()
            },
            false,
        )
        .unwrap_err();
    assert!(e.contains("not a refiner run"), "{e}");
    let wider = RefineTrainConfig {
        refiner: RefinerConfig::new()
            .with_features(vec![8, 24])
            .with_groups(4),
        ..still.clone()
    };
    let e = s.refine("r6", wider, false).unwrap_err();
    assert!(e.contains("architecture"), "{e}");
    let reseeded = RefineTrainConfig { seed: 7, ..still };
    let e = s.refine("r7", reseeded, false).unwrap_err();
    assert!(e.contains("another seed"), "{e}");
}
