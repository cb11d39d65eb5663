//! VAE training end to end on a tiny generated dataset: learning, exact resume, stage 2.

use burn::prelude::*;
use burn::tensor::Distribution;
use fiberflow_data::generate::{GeneratorConfig, generate_sample};
use fiberflow_data::{DatasetWriter, Silent, SplitMode};
use fiberflow_geometry::layout::SliceGrid;
use fiberflow_model::ModelError;
use fiberflow_model::train::checkpoint;
use fiberflow_model::train::vae::{
    EpochRecord, RunLog, Stage, TrainObserver, VaeTrainConfig, train_vae,
};
use fiberflow_model::vae::VaeConfig;
use std::ops::ControlFlow;
use std::path::Path;

/// Eight 16×16×3 samples: 5 train, 1 val, 2 test.
fn dataset(dir: &Path, seed: u64) {
    let mut cfg = GeneratorConfig::default();
    cfg.packing.window_um = 12.0;
    cfg.packing.radius_mean_um = 2.0;
    cfg.packing.radius_std_um = 0.1;
    cfg.vf = [0.3, 0.4];
    cfg.packing_attempts = 20;
    let grid = SliceGrid {
        size: 16,
        slices: 3,
        pitch_um: 2.0,
    };
    let writer = DatasetWriter::create_or_resume(dir, cfg.header(&grid, seed)).unwrap();
    for i in 0..8 {
        let (sample, record) = generate_sample(&cfg, &grid, seed, i).unwrap();
        writer.write(i, &sample, record).unwrap();
    }
    writer
        .finalize(8, SplitMode::Fiberflow, &mut Silent)
        .unwrap();
}

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

/// `train_vae` on the CPU.
fn run(
    stage: Stage,
    data: &Path,
    stage1: Option<&Path>,
    out: &Path,
    cfg: VaeTrainConfig,
    resume: bool,
    observer: &mut dyn TrainObserver,
) -> Result<RunLog, ModelError> {
    train_vae(
        &Device::flex(),
        stage,
        data,
        stage1,
        out,
        cfg,
        resume,
        observer,
    )
}

#[test]
fn stage1_learns_and_a_resumed_run_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 3);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let full = run(Stage::One, &data, None, &a, config(4), false, &mut Quiet).unwrap();
    assert_eq!(full.history.len(), 4);
    let first = &full.history[0].train["rec"];
    let last = &full.history[3].train["rec"];
    assert!(
        last < first,
        "reconstruction did not improve: {first} → {last}"
    );

    // Killed after two epochs, then resumed with the same arguments.
    let part = run(
        Stage::One,
        &data,
        None,
        &b,
        config(4),
        false,
        &mut StopAfter(2),
    )
    .unwrap();
    assert_eq!(part.history.len(), 2);
    // Stage 2 refuses an unfinished stage 1; resuming on other data is refused.
    let e = run(
        Stage::Two,
        &data,
        Some(&b),
        &tmp.path().join("early"),
        config(1),
        false,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unfinished"), "{e}");
    let other_data = tmp.path().join("other");
    dataset(&other_data, 4);
    let e = run(
        Stage::One,
        &other_data,
        None,
        &b,
        config(4),
        true,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("another dataset"), "{e}");
    let resumed = run(Stage::One, &data, None, &b, config(4), true, &mut Quiet).unwrap();
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
    let device = Device::flex();
    device.seed(9);
    let probe = Tensor::<5>::random([1, 3, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let geometry = Tensor::<5>::random([1, 2, 3, 16, 16], Distribution::Uniform(0.0, 1.0), &device);
    let output = |dir: &Path| -> Vec<f32> {
        let fresh = config(4).vae.init(&device).unwrap();
        let model = checkpoint::load(fresh, &dir.join("checkpoint/model.bpk")).unwrap();
        model
            .forward(probe.clone(), Some(geometry.clone()), false)
            .reconstruction
            .into_data()
            .try_into_vec()
            .unwrap()
    };
    assert!(output(&a) == output(&b), "resumed weights differ");

    // Refusals: an existing run without --resume, and a resume with another config.
    let e = run(Stage::One, &data, None, &a, config(4), false, &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let mut other = config(4);
    other.lr = 1e-4;
    let e = run(Stage::One, &data, None, &a, other, true, &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("another configuration"), "{e}");

    // Stage 2 on top of stage 1: the 2D latent must let D3D rebuild some vz.
    let two = tmp.path().join("two");
    let log = run(
        Stage::Two,
        &data,
        Some(&a),
        &two,
        config(3),
        false,
        &mut Quiet,
    )
    .unwrap();
    let rec = &log.history.last().unwrap();
    for key in ["rec2d", "align", "cross", "loss"] {
        assert!(rec.val[key].is_finite(), "{key}");
    }
    assert!(rec.val_errors.vz_ratio > 0.0);
    assert!(log.history[2].train["cross"] < log.history[0].train["cross"]);
    // Stage 2 needs a stage-1 run.
    let e = run(
        Stage::Two,
        &data,
        None,
        &tmp.path().join("x"),
        config(1),
        false,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("--stage1"), "{e}");
}

#[test]
fn invalid_configs_fail_before_reading_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(1);
    cfg.vae = VaeConfig::new().with_channels(vec![8, 12]).with_groups(8);
    let e = run(
        Stage::One,
        &tmp.path().join("none"),
        None,
        &tmp.path().join("o"),
        cfg,
        false,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("divisible by groups"), "{e}");
    let mut cfg = config(1);
    cfg.ema_decay = 1.0;
    assert!(cfg.validate().is_err());
}
