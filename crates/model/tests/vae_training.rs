//! VAE training end to end on a tiny generated dataset: learning, exact resume, stage 2.

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use common::{serial, tiny_dataset as dataset};
use fiberflow_model::ModelError;
use fiberflow_model::run::checkpoint;
use fiberflow_model::train::vae::{
    EpochRecord, RunLog, Stage, TrainObserver, VaeTrainConfig, train_vae,
};
use fiberflow_model::vae::VaeConfig;
use std::ops::ControlFlow;
use std::path::Path;

fn config(epochs: usize) -> VaeTrainConfig {
    VaeTrainConfig {
        vae: VaeConfig::new().with_channels(vec![8, 16]).with_groups(4),
        epochs,
        warmup_steps: 2,
        lr: 3e-3,
        ema_decay: 0.9,
        ..Default::default()
    }
}

struct StopAfter(usize);

impl TrainObserver for StopAfter {
    fn epoch(&mut self, record: &EpochRecord) -> ControlFlow<()> {
        if record.epoch + 1 >= self.0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

struct Quiet;
impl TrainObserver for Quiet {}

/// One `train_vae` call of these tests: on one CPU device, from scratch and quiet unless
/// changed.
#[derive(Clone, Copy)]
struct Run<'a> {
    stage: Stage,
    data: &'a Path,
    stage1: Option<&'a Path>,
    devices: usize,
    resume: bool,
}

fn run(stage: Stage, data: &Path) -> Run<'_> {
    Run {
        stage,
        data,
        stage1: None,
        devices: 1,
        resume: false,
    }
}

impl<'a> Run<'a> {
    /// Stage 2 on top of this stage-1 run.
    fn after(self, stage1: &'a Path) -> Self {
        Self {
            stage1: Some(stage1),
            ..self
        }
    }

    /// On `devices` CPU devices (data-parallel when more than one).
    fn on(self, devices: usize) -> Self {
        Self { devices, ..self }
    }

    fn resumed(self) -> Self {
        Self {
            resume: true,
            ..self
        }
    }

    fn train(self, out: &Path, cfg: VaeTrainConfig) -> Result<RunLog, ModelError> {
        self.observed(out, cfg, &mut Quiet)
    }

    fn observed(
        self,
        out: &Path,
        cfg: VaeTrainConfig,
        observer: &mut dyn TrainObserver,
    ) -> Result<RunLog, ModelError> {
        let devices = vec![Device::flex(); self.devices];
        let Self {
            stage,
            data,
            stage1,
            resume,
            ..
        } = self;
        train_vae(&devices, stage, data, stage1, out, cfg, resume, observer)
    }
}

#[test]
fn stage1_learns_and_a_resumed_run_equals_an_uninterrupted_one() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 3);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let full = run(Stage::One, &data).train(&a, config(4)).unwrap();
    assert_eq!(full.history.len(), 4);
    let first = &full.history[0].train["rec"];
    let last = &full.history[3].train["rec"];
    assert!(
        last < first,
        "reconstruction did not improve: {first} → {last}"
    );

    // Killed after two epochs, then resumed with the same arguments.
    let part = run(Stage::One, &data)
        .observed(&b, config(4), &mut StopAfter(2))
        .unwrap();
    assert_eq!(part.history.len(), 2);
    // Stage 2 refuses an unfinished stage 1; resuming on other data is refused.
    let e = run(Stage::Two, &data)
        .after(&b)
        .train(&tmp.path().join("early"), config(1))
        .unwrap_err();
    assert!(e.to_string().contains("unfinished"), "{e}");
    let other_data = tmp.path().join("other");
    dataset(&other_data, 4);
    let e = run(Stage::One, &other_data)
        .resumed()
        .train(&b, config(4))
        .unwrap_err();
    assert!(e.to_string().contains("another dataset"), "{e}");
    let resumed = run(Stage::One, &data)
        .resumed()
        .train(&b, config(4))
        .unwrap();
    assert_eq!(
        resumed.history,
        full.history
            .iter()
            .cloned()
            .map(|mut r| {
                r.seconds = resumed.history[r.epoch].seconds;
                r
            })
            .collect::<Vec<_>>()
    );
    // Same weights: both checkpoints map a fixed input to the same output, bit for bit.
    let weights = |dir: &Path| probe_output(&dir.join("checkpoint/model.bpk"));
    assert!(weights(&a) == weights(&b), "resumed weights differ");

    // Refusals: an existing run without --resume, and a resume with another config.
    let e = run(Stage::One, &data).train(&a, config(4)).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let mut other = config(4);
    other.lr = 1e-4;
    let e = run(Stage::One, &data)
        .resumed()
        .train(&a, other)
        .unwrap_err();
    assert!(e.to_string().contains("another configuration"), "{e}");

    // Stage 2 on top of stage 1: the 2D latent must let D3D rebuild some vz.
    let two = tmp.path().join("two");
    let log = run(Stage::Two, &data)
        .after(&a)
        .train(&two, config(3))
        .unwrap();
    let rec = &log.history.last().unwrap();
    for key in ["rec2d", "align", "cross", "loss"] {
        assert!(rec.val[key].is_finite(), "{key}");
    }
    assert!(rec.val_errors.vz_ratio > 0.0);
    assert!(log.history[2].train["cross"] < log.history[0].train["cross"]);
    // Stage 2 needs a stage-1 run.
    let e = run(Stage::Two, &data)
        .train(&tmp.path().join("x"), config(1))
        .unwrap_err();
    assert!(e.to_string().contains("--stage1"), "{e}");
}

#[test]
fn invalid_configs_fail_before_reading_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(1);
    cfg.vae = VaeConfig::new().with_channels(vec![8, 12]).with_groups(8);
    let e = run(Stage::One, &tmp.path().join("none"))
        .train(&tmp.path().join("o"), cfg)
        .unwrap_err();
    assert!(e.to_string().contains("divisible by groups"), "{e}");
    let mut cfg = config(1);
    cfg.ema_decay = 1.0;
    assert!(cfg.validate().is_err());
}

/// The reconstruction of a fixed random input by the weights in `file` of a run with
/// `config(1)`'s architecture, bit for bit.
fn probe_output(file: &Path) -> Vec<f32> {
    let device = Device::flex();
    device.seed(9);
    let probe = Tensor::<5>::random([1, 3, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let geometry = Tensor::<5>::random([1, 2, 3, 16, 16], Distribution::Uniform(0.0, 1.0), &device);
    let model = checkpoint::load(config(1).vae.init(&device).unwrap(), file).unwrap();
    model
        .forward(probe, Some(geometry), None)
        .reconstruction
        .into_data()
        .try_into_vec()
        .unwrap()
}

/// Data-parallel training: with the batches of each step dealt to two devices (two
/// threads here, sharing the CPU), both stages log and save exactly what one device does.
#[test]
fn two_devices_train_exactly_as_one() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 5);
    let cfg = |epochs| VaeTrainConfig {
        accumulation: 2,
        batch_size: 1,
        kl_2d: 1e-3,
        ..config(epochs)
    };
    let mut logs = Vec::new();
    for devices in [1, 2] {
        let one = tmp.path().join(format!("s1-{devices}"));
        let two = tmp.path().join(format!("s2-{devices}"));
        let log1 = run(Stage::One, &data).on(devices).train(&one, cfg(2));
        let log2 = run(Stage::Two, &data)
            .after(&one)
            .on(devices)
            .train(&two, cfg(1));
        logs.push([log1.unwrap(), log2.unwrap()].map(|mut log| {
            log.history.iter_mut().for_each(|r| r.seconds = 0.0);
            (log.history, log.best_epoch)
        }));
    }
    assert!(
        logs[0] == logs[1],
        "histories differ:\n{:?}\n{:?}",
        logs[0],
        logs[1]
    );
    // Validation scores the training objective's terms, kl_2d's included; its loss is
    // the objective at β = 0 (stage 1: the reconstruction alone, β warming up).
    let c = cfg(1);
    let val1 = &logs[0][0].0.last().unwrap().val;
    assert_eq!(val1["loss"], val1["rec"]);
    let val2 = &logs[0][1].0[0].val;
    let objective = val2["rec2d"]
        + c.lambda_align * val2["align"]
        + c.lambda_cross * val2["cross"]
        + c.kl_2d * val2["kl2d"];
    assert!(
        (val2["loss"] - objective).abs() <= 1e-5 * objective,
        "{val2:?}"
    );
    for run in ["s1", "s2"] {
        let file = |n: usize| tmp.path().join(format!("{run}-{n}/checkpoint/model.bpk"));
        assert!(
            probe_output(&file(1)) == probe_output(&file(2)),
            "{run} weights differ"
        );
    }
    // More devices than batches per step would idle: refused before anything is read.
    let e = run(Stage::One, &data)
        .on(2)
        .train(&tmp.path().join("x"), config(1))
        .unwrap_err();
    assert!(e.to_string().contains("accumulation=2"), "{e}");
}
