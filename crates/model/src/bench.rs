//! Cost of the networks: one training step of the VAE (stage 1) and of the latent
//! denoiser, and one full prediction, timed with randomly initialised weights on random
//! inputs. Run time does not depend on the values, so no dataset or trained run is needed;
//! the networks, losses, gradient clipping, AdamW and EMA are the trainers' own (built
//! from the same config types), so a step costs what it costs in `train_vae` and
//! `train_diffusion`, and a prediction what it costs in `predict`.
//!
//! Memory is the process's resident high-water mark (Linux `VmHWM`), reset before each
//! measurement through `/proc/self/clear_refs`; it is host memory only.

use crate::batch::{Normalizer, sample_array, to_tensors};
use crate::diffusion::{ChaCha8Rng, NoiseSchedule, seeded_rng, standard_normal};
use crate::error::ModelError;
use crate::latent::DualVae;
use crate::loss::{kl_divergence, normalized_mae, normalized_mse};
use crate::predict::TrainedModel;
use crate::predict::inputs::LatentScales;
use crate::predict::sampling::{PredictorKind, SampleOptions};
use crate::train::clip::clip_global_norm;
use crate::train::diffusion::{DiffusionRunLog, DiffusionTrainConfig};
use crate::train::ema;
use crate::train::vae::{ReconLoss, VaeTrainConfig, VaeTarget};
use crate::unet::UNet;
use crate::vae::{VaeBranch, VaeConfig};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use fiberflow_data::Batch;
use fiberflow_data::features::GEOMETRY_CHANNELS;
use serde::Serialize;
use std::path::PathBuf;
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

/// Resident memory of the process around a measurement, MiB.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Memory {
    /// Resident set when the measurement started.
    pub rss_before_mib: f64,
    /// Highest resident set during the measurement (it includes `rss_before_mib`).
    pub peak_rss_mib: f64,
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

/// One prediction of a single sample, measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictBench {
    /// Network evaluations of the latent predictor (1 for the direct predictor).
    pub nfe: usize,
    pub repeats: Repeats,
    /// Seconds per prediction: input tensors and features, E2D, sampling, D3D, and the
    /// copy back to an array.
    pub timing: Timing,
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

/// Builds a stepper (inside the memory measurement) and times its steps.
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

fn optimizer(weight_decay: f64) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(weight_decay as f32)
        .with_epsilon(1e-8)
        .init()
}

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

/// The stage-1 step of `train_vae` on one fixed random batch: E3D + D3D forward with a
/// sampled latent, reconstruction loss + β·KL (β at its first-epoch value), backward,
/// global-norm clipping, AdamW at the peak learning rate, and the EMA when enabled.
pub struct VaeStep {
    model: VaeBranch,
    optim: ModuleOptimizer,
    ema: Option<VaeBranch>,
    cfg: VaeTrainConfig,
    field: Tensor<5>,
    mask: Tensor<5>,
    geometry: Option<Tensor<5>>,
    updates: u64,
    device: Device,
}

impl VaeStep {
    /// A batch of `batch` random samples of `[S, H, W]` on `device`; everything seeded by
    /// `cfg.seed`.
    pub fn new(
        cfg: &VaeTrainConfig,
        [s, h, w]: [usize; 3],
        batch: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        cfg.vae.check_input(h, w)?;
        if batch == 0 || s == 0 || h == 0 {
            return Err(ModelError::Input(format!(
                "batch {batch} of S × H × W = {s} × {h} × {w} has an empty axis"
            )));
        }
        device.seed(cfg.seed);
        let ad = device.clone().autodiff();
        let model = cfg.vae.init(&ad)?;
        let random = |c: usize, d: Distribution| Tensor::<5>::random([batch, c, s, h, w], d, &ad);
        let geometry = (cfg.vae.geometry_channels > 0).then(|| {
            random(cfg.vae.geometry_channels, Distribution::Uniform(0.0, 1.0))
        });
        Ok(Self {
            ema: (cfg.ema_decay > 0.0).then(|| model.valid()),
            model,
            optim: optimizer(cfg.weight_decay),
            field: random(cfg.vae.in_channels, Distribution::Normal(0.0, 1.0)),
            mask: random(1, Distribution::Bernoulli(0.6)),
            geometry,
            cfg: cfg.clone(),
            updates: 0,
            device: ad,
        })
    }
}

impl TrainStep for VaeStep {
    fn step(&mut self) -> Result<f64, ModelError> {
        let out = self
            .model
            .forward(self.field.clone(), self.geometry.clone(), true);
        let (pred, target, mask) = (out.reconstruction, self.field.clone(), self.mask.clone());
        let rec = match self.cfg.loss {
            ReconLoss::Mae => normalized_mae(pred, target, mask),
            ReconLoss::Mse => normalized_mse(pred, target, mask),
        };
        let loss = rec + kl_divergence(out.mu, out.logvar).mul_scalar(self.cfg.kl_start);
        let value = finite(loss.clone().into_scalar::<f64>(), "VAE")?;
        let mut grads = GradientsParams::from_grads(loss.backward(), &self.model);
        clip_global_norm(&self.model, &mut grads, self.cfg.grad_clip);
        self.model = self.optim.step(self.cfg.lr, self.model.clone(), grads);
        if let Some(e) = self.ema.take() {
            let decay = ema::warmup_decay(self.updates, self.cfg.ema_decay);
            self.ema = Some(ema::update(e, &self.model.valid(), decay));
        }
        self.updates += 1;
        sync(&self.device)?;
        Ok(value)
    }

    fn parameters(&self) -> usize {
        self.model.num_params()
    }

    fn input(&self) -> [usize; 5] {
        self.field.dims()
    }
}

/// The step of `train_diffusion` on one fixed random batch of cached-latent-like inputs:
/// a timestep and noise per sample (diffusion) or none (direct predictor), the loss of
/// the config, backward, clipping, AdamW at the peak learning rate, and the EMA update.
pub struct DenoiserStep {
    model: UNet,
    ema: UNet,
    optim: ModuleOptimizer,
    cfg: DiffusionTrainConfig,
    schedule: NoiseSchedule,
    x0: Tensor<5>,
    cond: Tensor<5>,
    geometry: Tensor<5>,
    rng: ChaCha8Rng,
    updates: u64,
    device: Device,
}

impl DenoiserStep {
    /// A batch of `batch` random latents `[Cz, S, h, w]`; the network's input and output
    /// channels are set from Cz and the predictor as the trainer sets them.
    pub fn new(
        cfg: &DiffusionTrainConfig,
        [cz, s, h, w]: [usize; 4],
        batch: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut cfg = cfg.clone();
        cfg.unet.in_channels = cfg.predictor.in_channels(cz, GEOMETRY_CHANNELS);
        cfg.unet.out_channels = cz;
        cfg.validate()?;
        cfg.unet
            .check_input([batch, cfg.unet.in_channels, s, h, w])?;
        let schedule = cfg.diffusion.init()?;
        device.seed(cfg.seed);
        let ad = device.clone().autodiff();
        let model = cfg.unet.init(&ad)?;
        let mut rng = seeded_rng(cfg.seed);
        let x0 = standard_normal([batch, cz, s, h, w], &mut rng, &ad);
        let cond = standard_normal([batch, cz, s, h, w], &mut rng, &ad);
        let geometry = Tensor::<5>::random(
            [batch, GEOMETRY_CHANNELS, s, h, w],
            Distribution::Uniform(0.0, 1.0),
            &ad,
        );
        Ok(Self {
            ema: model.valid(),
            model,
            optim: optimizer(cfg.weight_decay),
            cfg,
            schedule,
            x0,
            cond,
            geometry,
            rng,
            updates: 0,
            device: ad,
        })
    }
}

impl TrainStep for DenoiserStep {
    fn step(&mut self) -> Result<f64, ModelError> {
        let (x0, cond, geometry) = (self.x0.clone(), self.cond.clone(), self.geometry.clone());
        let loss = match self.cfg.predictor {
            PredictorKind::Direct => {
                let pred = self.model.forward(Tensor::cat(vec![cond, geometry], 1), None)?;
                (pred - x0).square().mean()
            }
            PredictorKind::Diffusion => {
                let n = x0.dims()[0];
                let t = self.schedule.sample_timesteps(n, &mut self.rng);
                let noise = standard_normal(x0.dims(), &mut self.rng, &self.device);
                let x_t = self.schedule.add_noise(x0.clone(), noise.clone(), &t)?;
                let target = self.schedule.target(x0, noise, &t)?;
                let times: Vec<f32> = t.iter().map(|&t| t as f32).collect();
                let pred = self.model.forward(
                    Tensor::cat(vec![x_t, cond, geometry], 1),
                    Some(Tensor::<1>::from_floats(times.as_slice(), &self.device)),
                )?;
                self.cfg.diffusion.loss.compute(pred, target)?
            }
        };
        let value = finite(loss.clone().into_scalar::<f64>(), "denoiser")?;
        let mut grads = GradientsParams::from_grads(loss.backward(), &self.model);
        clip_global_norm(&self.model, &mut grads, self.cfg.grad_clip);
        self.model = self.optim.step(self.cfg.lr, self.model.clone(), grads);
        let decay = ema::warmup_decay(self.updates, self.cfg.ema_decay);
        self.ema = ema::update(self.ema.clone(), &self.model.valid(), decay);
        self.updates += 1;
        sync(&self.device)?;
        Ok(value)
    }

    fn parameters(&self) -> usize {
        self.model.num_params()
    }

    fn input(&self) -> [usize; 5] {
        let [b, cz, s, h, w] = self.x0.dims();
        [b, self.cfg.unet.in_channels.max(cz), s, h, w]
    }
}

/// An untrained predictor with the architectures of `vae` and `cfg`, seeded by
/// `cfg.seed`: the same `TrainedModel` that `predict` loads, with unit velocity and
/// latent scales and no run folders behind it (its paths and keys are empty).
pub fn untrained_model(
    vae: &VaeConfig,
    target: VaeTarget,
    cfg: &DiffusionTrainConfig,
    device: &Device,
) -> Result<TrainedModel, ModelError> {
    let mut cfg = cfg.clone();
    cfg.unet.in_channels = cfg
        .predictor
        .in_channels(vae.latent_channels, GEOMETRY_CHANNELS);
    cfg.unet.out_channels = vae.latent_channels;
    cfg.validate()?;
    let schedule = cfg.diffusion.init()?;
    device.seed(cfg.seed);
    let (stage1, stage2) = (vae.init(device)?, vae.init(device)?);
    let unet = cfg.unet.init(device)?;
    let log = DiffusionRunLog {
        vae: PathBuf::new(),
        vae_key: String::new(),
        dataset: PathBuf::new(),
        dataset_manifest_sha256: String::new(),
        scales: LatentScales {
            residual: cfg.residual,
            target: 1.0,
            condition: 1.0,
        },
        history: Vec::new(),
        best_epoch: None,
        best_val_error: f64::NAN,
        parameters: unet.num_params(),
        config: cfg,
    };
    Ok(TrainedModel {
        unet,
        vae: DualVae {
            e2d: stage2.encoder,
            e3d: stage1.encoder,
            d3d: stage1.decoder,
            config: vae.clone(),
            target,
            normalizer: Normalizer { factors: [1.0; 3] },
            stage2_dir: PathBuf::new(),
            stage1_dir: PathBuf::new(),
            key: String::new(),
            dataset_manifest_sha256: String::new(),
        },
        schedule,
        log,
    })
}

/// Times the prediction of the one-sample `batch` as `predict` makes it: tensors and
/// microstructure features from the arrays, E2D, the latent predictor with `options`,
/// D3D, and the result back as an array. The noise is seeded by `seed`.
pub fn bench_predict(
    model: &TrainedModel,
    batch: &Batch,
    options: &SampleOptions,
    repeats: Repeats,
    seed: u64,
) -> Result<PredictBench, ModelError> {
    let [sample] = batch.samples.as_slice() else {
        return Err(ModelError::Input(format!(
            "a prediction is timed on one sample, the batch has {}",
            batch.samples.len()
        )));
    };
    let (s, _, h, w) = sample.u2d.dim();
    let vae = &model.vae.config;
    vae.check_input(h, w)?;
    let f = vae.downsample_factor();
    let unet = model.unet.config();
    unet.check_input([1, unet.in_channels, s, h / f, w / f])?;
    let nfe = match model.log.config.predictor {
        PredictorKind::Direct => 1,
        PredictorKind::Diffusion => options.sampler.init(&model.schedule)?.nfe(),
    };
    let device = model.unet.devices().into_iter().next().unwrap_or_default();
    let probe = MemoryProbe::start();
    let timing = time_runs(repeats, || {
        let tb = to_tensors(batch, &model.vae.normalizer, &device)?;
        let [u] = <[Tensor<5>; 1]>::try_from(model.predict(&tb, options, 1, seed)?)
            .map_err(|v| ModelError::Input(format!("{} predictions for one draw", v.len())))?;
        sample_array(u, 0).map(|_| ())
    })?;
    Ok(PredictBench {
        nfe,
        repeats,
        timing,
        memory: probe.finish(),
    })
}

/// Resets the resident high-water mark and remembers the resident set at the start.
struct MemoryProbe {
    rss_before_kib: Option<u64>,
}

impl MemoryProbe {
    fn start() -> Self {
        // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        Self {
            rss_before_kib: reset.then(|| proc_status_kib("VmRSS")).flatten(),
        }
    }

    fn finish(self) -> Option<Memory> {
        let before = self.rss_before_kib?;
        let peak = proc_status_kib("VmHWM")?;
        let mib = |kib: u64| kib as f64 / 1024.0;
        Some(Memory {
            rss_before_mib: mib(before),
            peak_rss_mib: mib(peak.max(before)),
        })
    }
}

fn proc_status_kib(key: &str) -> Option<u64> {
    status_kib(&std::fs::read_to_string("/proc/self/status").ok()?, key)
}

/// The value in kB of `key` in a `/proc/PID/status` text (`VmHWM:\t  1234 kB`).
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::{SamplerConfig, SamplerKind};
    use crate::unet::UNetConfig;
    use fiberflow_data::{Mirror, Sample};
    use ndarray::Array4;

    fn tiny_vae() -> VaeConfig {
        VaeConfig::new().with_channels(vec![8, 16]).with_groups(4)
    }

    fn tiny_diffusion(predictor: PredictorKind) -> DiffusionTrainConfig {
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

    const ONCE: Repeats = Repeats {
        warmup: 0,
        timed: 1,
    };

    #[test]
    fn runs_are_counted_and_the_median_is_the_middle_value() {
        let mut calls = 0;
        let t = time_runs(
            Repeats {
                warmup: 2,
                timed: 3,
            },
            || {
                calls += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(calls, 5);
        assert_eq!(t.seconds.len(), 3);
        // Sleeps of 1, 30 and 10 ms: the median is the 10 ms one, the minimum the 1 ms one.
        let mut waits = [1u64, 30, 10].into_iter();
        let t = time_runs(
            Repeats {
                warmup: 0,
                timed: 3,
            },
            || {
                std::thread::sleep(std::time::Duration::from_millis(waits.next().unwrap()));
                Ok(())
            },
        )
        .unwrap();
        assert!((0.010..0.030).contains(&t.median_s), "{t:?}");
        assert!((0.001..0.010).contains(&t.min_s), "{t:?}");
        // An even count averages the two middle values.
        let mut waits = [2u64, 40, 20, 4].into_iter();
        let t = time_runs(
            Repeats {
                warmup: 0,
                timed: 4,
            },
            || {
                std::thread::sleep(std::time::Duration::from_millis(waits.next().unwrap()));
                Ok(())
            },
        )
        .unwrap();
        let mut s = t.seconds.clone();
        s.sort_by(f64::total_cmp);
        assert_eq!(t.median_s, 0.5 * (s[1] + s[2]));
        assert!((0.004..0.020).contains(&s[1]) && (0.020..0.040).contains(&s[2]), "{s:?}");
        let e = time_runs(
            Repeats {
                warmup: 1,
                timed: 0,
            },
            || Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("timed run"), "{e}");
    }

    #[test]
    fn status_lines_are_parsed_in_kib() {
        let text = "Name:\tbench\nVmPeak:\t  9000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t  4096 kB\n";
        assert_eq!(status_kib(text, "VmHWM"), Some(5120));
        assert_eq!(status_kib(text, "VmRSS"), Some(4096));
        assert_eq!(status_kib(text, "VmSwap"), None);
        assert_eq!(status_kib("VmHWM:\tlots\n", "VmHWM"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_peak_covers_a_buffer_touched_during_the_measurement() {
        let probe = MemoryProbe::start();
        let buffer = vec![1u8; 64 << 20];
        std::hint::black_box(&buffer);
        drop(buffer);
        let m = probe.finish().expect("Linux reports VmHWM");
        assert!(m.peak_rss_mib - m.rss_before_mib >= 60.0, "{m:?}");
    }

    #[test]
    fn the_vae_step_trains_the_vae() {
        // Repeated steps on one batch must fit it: the loss falls.
        let cfg = VaeTrainConfig {
            vae: tiny_vae(),
            ema_decay: 0.9,
            ..Default::default()
        };
        let dev = Device::flex();
        let mut step = VaeStep::new(&cfg, [3, 8, 8], 2, &dev).unwrap();
        assert_eq!(step.input(), [2, 3, 3, 8, 8]);
        assert_eq!(step.parameters(), tiny_vae().init(&dev).unwrap().num_params());
        let losses: Vec<f64> = (0..12).map(|_| step.step().unwrap()).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&losses[9..]) < 0.8 * mean(&losses[..3]), "{losses:?}");
    }

    #[test]
    fn the_direct_predictor_step_trains_it_and_the_diffusion_step_runs() {
        let dev = Device::flex();
        let cfg = tiny_diffusion(PredictorKind::Direct);
        let mut step = DenoiserStep::new(&cfg, [8, 3, 4, 4], 2, &dev).unwrap();
        // Condition (8) ⊕ geometry (2).
        assert_eq!(step.input(), [2, 10, 3, 4, 4]);
        let losses: Vec<f64> = (0..12).map(|_| step.step().unwrap()).collect();
        assert!(losses[11] < 0.8 * losses[0], "{losses:?}");
        let cfg = tiny_diffusion(PredictorKind::Diffusion);
        let mut step = DenoiserStep::new(&cfg, [8, 3, 4, 4], 2, &dev).unwrap();
        assert_eq!(step.input(), [2, 18, 3, 4, 4]);
        assert!(step.step().unwrap().is_finite());
    }

    #[test]
    fn a_step_bench_reports_per_sample_time_and_memory() {
        let cfg = VaeTrainConfig {
            vae: tiny_vae(),
            ..Default::default()
        };
        let b = bench_training(
            || VaeStep::new(&cfg, [3, 8, 8], 2, &Device::flex()),
            Repeats {
                warmup: 1,
                timed: 2,
            },
        )
        .unwrap();
        assert_eq!(b.timing.seconds.len(), 2);
        assert_eq!(b.seconds_per_sample, b.timing.median_s / 2.0);
        assert!(b.timing.min_s > 0.0);
        #[cfg(target_os = "linux")]
        {
            let m = b.memory.expect("Linux reports VmHWM");
            assert!(m.peak_rss_mib >= m.rss_before_mib && m.rss_before_mib > 0.0);
        }
    }

    #[test]
    fn configurations_that_do_not_fit_are_refused() {
        let dev = Device::flex();
        let cfg = VaeTrainConfig {
            vae: tiny_vae(),
            ..Default::default()
        };
        let e = VaeStep::new(&cfg, [3, 10, 8], 1, &dev).err().unwrap();
        assert!(e.to_string().contains("divisible"), "{e}");
        let e = VaeStep::new(&cfg, [3, 8, 8], 0, &dev).err().unwrap();
        assert!(e.to_string().contains("empty"), "{e}");
        let bad = VaeTrainConfig {
            lr: -1.0,
            ..cfg.clone()
        };
        assert!(VaeStep::new(&bad, [3, 8, 8], 1, &dev).is_err());
        // Two UNet levels need h and w even.
        let e = DenoiserStep::new(&tiny_diffusion(PredictorKind::Diffusion), [8, 3, 3, 4], 1, &dev)
            .err()
            .unwrap();
        assert!(e.to_string().contains("divisible"), "{e}");
        // A diffusion config with a time-free network is refused by the trainer's rules.
        let mut mixed = tiny_diffusion(PredictorKind::Diffusion);
        mixed.unet.time_conditioned = false;
        assert!(DenoiserStep::new(&mixed, [8, 3, 4, 4], 1, &dev).is_err());
    }

    fn one_sample_batch(s: usize, hw: usize) -> Batch {
        let mut domain = Array4::ones((s, 1, hw, hw));
        domain[[0, 0, 2, 2]] = 0.0;
        let u = Array4::from_shape_fn((s, 3, hw, hw), |(k, c, y, x)| {
            1e-4 * ((k + c + y * x) % 5) as f32
        });
        Batch {
            indices: vec![0],
            samples: vec![Sample {
                domain,
                u2d: u.clone(),
                u,
                p: Array4::zeros((s, 1, hw, hw)),
                dxyz: [1e-6, 1e-6, 5e-6],
            }],
            mirrors: vec![Mirror::default()],
        }
    }

    #[test]
    fn predictions_count_their_network_evaluations() {
        let dev = Device::flex();
        let batch = one_sample_batch(3, 8);
        let target = VaeTrainConfig::default().target;
        let options = |kind, steps| SampleOptions {
            sampler: SamplerConfig::new().with_kind(kind).with_steps(steps),
            guidance: 0.0,
        };
        let direct = untrained_model(
            &tiny_vae(),
            target,
            &tiny_diffusion(PredictorKind::Direct),
            &dev,
        )
        .unwrap();
        let b = bench_predict(&direct, &batch, &options(SamplerKind::Ddim, 50), ONCE, 1).unwrap();
        assert_eq!(b.nfe, 1);
        assert_eq!(b.timing.seconds.len(), 1);
        let diffusion = untrained_model(
            &tiny_vae(),
            target,
            &tiny_diffusion(PredictorKind::Diffusion),
            &dev,
        )
        .unwrap();
        for (kind, steps) in [(SamplerKind::DpmSolver, 3), (SamplerKind::Ddim, 4)] {
            let b = bench_predict(&diffusion, &batch, &options(kind, steps), ONCE, 1).unwrap();
            assert_eq!(b.nfe, steps);
        }
        // Bad sampler settings and inputs the networks cannot take are errors.
        assert!(bench_predict(&diffusion, &batch, &options(SamplerKind::Ddim, 0), ONCE, 1).is_err());
        let e = bench_predict(&diffusion, &one_sample_batch(3, 10), &options(SamplerKind::Ddim, 2), ONCE, 1)
            .unwrap_err();
        assert!(e.to_string().contains("divisible"), "{e}");
        let mut two = one_sample_batch(3, 8);
        two.samples.push(two.samples[0].clone());
        let e = bench_predict(&diffusion, &two, &options(SamplerKind::Ddim, 2), ONCE, 1).unwrap_err();
        assert!(e.to_string().contains("one sample"), "{e}");
    }
}
