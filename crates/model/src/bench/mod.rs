//! Cost of the networks: one training step of the VAE (stage 1) and of the latent
//! denoiser, and one full prediction, timed with randomly initialised weights on random
//! inputs. Run time does not depend on the values, so no dataset or trained run is needed;
//! the networks, losses, gradient clipping, AdamW and EMA are the trainers' own (built
//! from the same config types), so a step costs what it costs in `train_vae` and
//! `train_diffusion`, and a prediction what it costs in `predict`.

mod denoiser_step;
mod memory;
mod prediction;
mod vae_step;

pub use denoiser_step::DenoiserStep;
pub use memory::Memory;
pub use prediction::{PredictBench, bench_predict, untrained_model};
pub use vae_step::VaeStep;

use crate::error::ModelError;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::prelude::*;
use memory::MemoryProbe;
use serde::Serialize;
use std::time::Instant;

/// How often a measurement runs: `warmup` untimed runs (first allocations, caches), then
/// `timed` timed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Repeats {
    pub warmup: usize,
    pub timed: usize,
}

/// Wall-clock seconds of the timed runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timing {
    pub seconds: Vec<f64>,
    /// The median is what the tables quote: on a shared machine single runs can take
    /// twice as long when a neighbour is busy.
    pub median_s: f64,
    pub min_s: f64,
}

/// One training step, measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepBench {
    pub parameters: usize,
    /// Network input `(B, C, S, H, W)`.
    pub input: [usize; 5],
    pub repeats: Repeats,
    /// Seconds per optimiser step.
    pub timing: Timing,
    /// Median step time divided by the batch size.
    pub seconds_per_sample: f64,
    /// Includes building the network and its optimiser state.
    pub memory: Option<Memory>,
}

/// A training step that can be repeated on fixed inputs.
pub trait TrainStep {
    /// One optimiser step; returns the loss before it.
    fn step(&mut self) -> Result<f64, ModelError>;
    fn parameters(&self) -> usize;
    /// Network input `(B, C, S, H, W)`.
    fn input(&self) -> [usize; 5];
}

/// Runs `warmup` + `timed` calls of `run` and times the last `timed`.
pub fn time_runs(
    repeats: Repeats,
    mut run: impl FnMut() -> Result<(), ModelError>,
) -> Result<Timing, ModelError> {
    if repeats.timed == 0 {
        return Err(ModelError::Config(
            "at least one timed run is needed".into(),
        ));
    }
    for _ in 0..repeats.warmup {
        run()?;
    }
    let mut seconds = Vec::with_capacity(repeats.timed);
    for _ in 0..repeats.timed {
        let started = Instant::now();
        run()?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median_s = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    };
    Ok(Timing {
        min_s: sorted[0],
        median_s,
        seconds,
    })
}

/// Builds a stepper (inside the memory measurement, so weights and optimiser state
/// count) and times its steps.
pub fn bench_training<T: TrainStep>(
    build: impl FnOnce() -> Result<T, ModelError>,
    repeats: Repeats,
) -> Result<StepBench, ModelError> {
    let probe = MemoryProbe::start();
    let mut stepper = build()?;
    let timing = time_runs(repeats, || stepper.step().map(|_| ()))?;
    let input = stepper.input();
    Ok(StepBench {
        parameters: stepper.parameters(),
        seconds_per_sample: timing.median_s / input[0] as f64,
        input,
        repeats,
        timing,
        memory: probe.finish(),
    })
}

/// The trainers' AdamW.
fn optimizer(weight_decay: f64) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(weight_decay as f32)
        .with_epsilon(1e-8)
        .init()
}

/// Waits for the device, so a step's time includes its queued work on a GPU.
fn sync(device: &Device) -> Result<(), ModelError> {
    device
        .sync()
        .map_err(|e| ModelError::Input(format!("the device failed: {e}")))
}

fn finite(loss: f64, what: &str) -> Result<f64, ModelError> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(ModelError::Input(format!(
            "the {what} loss became {loss} on random inputs"
        )))
    }
}

/// Tiny architectures for the tests of this module.
#[cfg(test)]
mod tiny {
    use crate::predict::sampling::PredictorKind;
    use crate::train::diffusion::DiffusionTrainConfig;
    use crate::unet::UNetConfig;
    use crate::vae::VaeConfig;

    pub(super) fn vae() -> VaeConfig {
        VaeConfig::new().with_channels(vec![8, 16]).with_groups(4)
    }

    pub(super) fn diffusion(predictor: PredictorKind) -> DiffusionTrainConfig {
        DiffusionTrainConfig {
            predictor,
            unet: UNetConfig::new()
                .with_features(vec![8, 16])
                .with_groups(4)
                .with_attention(String::new())
                .with_time_conditioned(predictor == PredictorKind::Diffusion),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::vae::VaeTrainConfig;

    /// Times runs that sleep `ms` milliseconds each, in order.
    fn sleeps(ms: &[u64]) -> Timing {
        let mut waits = ms.iter();
        let repeats = Repeats {
            warmup: 0,
            timed: ms.len(),
        };
        time_runs(repeats, || {
            std::thread::sleep(std::time::Duration::from_millis(*waits.next().unwrap()));
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn runs_are_counted_and_the_median_is_the_middle_value() {
        let mut calls = 0;
        let repeats = Repeats {
            warmup: 2,
            timed: 3,
        };
        let t = time_runs(repeats, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 5);
        assert_eq!(t.seconds.len(), 3);
        // Sleeps far enough apart that their order survives a loaded machine.
        let t = sleeps(&[1, 200, 50]);
        assert_eq!(t.median_s, t.seconds[2]);
        assert_eq!(t.min_s, t.seconds[0]);
        assert!(t.seconds[2] >= 0.050 && t.seconds[0] >= 0.001, "{t:?}");
        // An even count averages the two middle values (10 and 100 ms).
        let t = sleeps(&[2, 400, 100, 10]);
        assert_eq!(t.median_s, 0.5 * (t.seconds[2] + t.seconds[3]));
        let none = Repeats {
            warmup: 1,
            timed: 0,
        };
        let e = time_runs(none, || Ok(())).unwrap_err();
        assert!(e.to_string().contains("timed run"), "{e}");
    }

    #[test]
    fn a_step_bench_reports_per_sample_time_and_memory() {
        let cfg = VaeTrainConfig {
            vae: tiny::vae(),
            ..Default::default()
        };
        let repeats = Repeats {
            warmup: 1,
            timed: 2,
        };
        let b = bench_training(
            || VaeStep::new(&cfg, [3, 8, 8], 2, &Device::flex()),
            repeats,
        )
        .unwrap();
        assert_eq!(b.input, [2, 3, 3, 8, 8]);
        assert_eq!(b.timing.seconds.len(), 2);
        assert_eq!(b.seconds_per_sample, b.timing.median_s / 2.0);
        assert!(b.timing.min_s > 0.0);
        if cfg!(target_os = "linux") {
            let m = b.memory.expect("Linux reports VmHWM");
            assert!(m.peak_rss_mib >= m.rss_before_mib && m.rss_before_mib > 0.0);
        }
    }
}
