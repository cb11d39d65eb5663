//! The LibTorch backend against the default flex backend (build with `--features libtorch`,
//! e.g. `scripts/setup-libtorch.sh --test`): the same weights and inputs give the same
//! VAE and denoiser outputs and gradients, the same losses over a few AdamW steps and the
//! same sampled latent, and each backend repeats itself exactly for the same seed.
//!
//! Tolerances: both backends compute in f32 but sum in different orders (PyTorch's
//! convolutions go through oneDNN), so they agree to ~1e-6 of the field's scale (measured:
//! 0.7–1.5e-6 for single passes, 3e-6 after five AdamW steps, 3e-7 for a draw); the bars
//! leave room for other CPUs' kernels, while a wrong kernel (a transposed weight, a missing
//! bias, weights drawn on the wrong generator) is off by O(1).
#![cfg(feature = "libtorch")]

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use fiberflow_model::diffusion::{SamplerConfig, SamplerKind, TimestepSpacing, seeded_rng};
use fiberflow_model::loss::normalized_mse;
use fiberflow_model::predict::sampling::{LatentPredictor, PredictorKind, SampleOptions};
use fiberflow_model::train::diffusion::DiffusionTrainConfig;
use fiberflow_model::unet::UNetConfig;
use fiberflow_model::vae::VaeConfig;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Burn's generators are global per backend, so every seeded draw holds this lock.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Single forward/backward passes.
const PASS_TOL: f32 = 1e-4;
/// Losses after a few optimiser steps, and a sampled latent.
const CHAIN_TOL: f32 = 1e-3;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

/// max |a − b| / max |a|, so a tolerance reads as a fraction of the field's scale.
fn relative_max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    let d = relative_max_diff(a, b);
    assert!(
        d <= tol,
        "{what}: flex and libtorch differ by {d:e} (tolerance {tol:e})"
    );
}

/// A network built by `build` with weights drawn on flex (seeded by `seed`) and loaded on
/// `device`, as a checkpoint is. Burn initialises parameters lazily, from the generator of
/// the device they sit on at first use, so the weights are drawn here, on flex, for both
/// backends; loading a record (rather than `to_device` on an autodiff device, which records
/// the move in the graph) gives leaf parameters that train as usual.
///
/// Every weight also gets N(0, 0.05²) added: the denoiser's output layers start at zero (so
/// each block starts as the identity), and a comparison of zeros could not fail.
fn on<M: Module>(build: impl Fn(&Device) -> M, seed: u64, device: &Device) -> M {
    let flex = Device::flex();
    flex.seed(seed);
    let record = build(&flex).map(&mut Jitter).into_record();
    build(device).load_record(record)
}

struct Jitter;

impl ModuleMapper for Jitter {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.clone() + t.random_like(Distribution::Normal(0.0, 0.05)))
    }
}

fn torch() -> Device {
    "libtorch"
        .parse::<fiberflow_model::device::DeviceSpec>()
        .unwrap()
        .open()
        .unwrap()
}

/// A random tensor drawn on flex (seeded), copied to `device`.
fn input(shape: [usize; 5], seed: u64, device: &Device) -> Tensor<5> {
    let flex = Device::flex();
    flex.seed(seed);
    let v = values(Tensor::<5>::random(
        shape,
        Distribution::Normal(0.0, 1.0),
        &flex,
    ));
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn tiny_vae() -> VaeConfig {
    VaeConfig::new()
        .with_channels(vec![8, 16])
        .with_groups(4)
        .with_geometry_channels(2)
}

fn tiny_unet() -> UNetConfig {
    UNetConfig::new()
        .with_in_channels(6)
        .with_out_channels(2)
        .with_features(vec![8, 16])
        .with_groups(4)
        .with_time_embedding_dim(8)
        .with_time_mlp_dim(16)
        .with_attention("2..2".into())
}

/// Reconstruction of the VAE with given noise and the gradient of a weighted sum with
/// respect to the input and the first encoder convolution's weights.
fn vae_pass(device: &Device) -> (Vec<f32>, Vec<f32>) {
    let _lock = serial();
    let vae = on(|d| tiny_vae().init(d).unwrap(), 7, device);
    let shape = [2, 3, 3, 8, 8];
    let x = input(shape, 1, device).require_grad();
    let geometry = input([2, 2, 3, 8, 8], 2, device);
    let noise = input(tiny_vae().latent_shape(shape), 3, device);
    let out = vae.forward(x.clone(), Some(geometry), Some(noise));
    let w = input(shape, 4, device);
    let grads = (out.reconstruction.clone() * w).sum().backward();
    (values(out.reconstruction), values(x.grad(&grads).unwrap()))
}

#[test]
fn libtorch_vae_forward_and_backward_match_flex() {
    let (out_flex, grad_flex) = vae_pass(&Device::flex().autodiff());
    let (out_torch, grad_torch) = vae_pass(&torch().autodiff());
    assert_close("reconstruction", &out_flex, &out_torch, PASS_TOL);
    assert_close("input gradient", &grad_flex, &grad_torch, PASS_TOL);
}

/// Denoiser output (time-conditioned, with attention) and its input gradient.
fn unet_pass(device: &Device) -> (Vec<f32>, Vec<f32>) {
    let _lock = serial();
    let unet = on(|d| tiny_unet().init(d).unwrap(), 8, device);
    let shape = [2, 6, 3, 8, 8];
    let x = input(shape, 5, device).require_grad();
    let t = Tensor::<1>::from_floats([17.0, 803.0], device);
    let out = unet.forward(x.clone(), Some(t)).unwrap();
    let w = input([2, 2, 3, 8, 8], 6, device);
    let grads = (out.clone() * w).sum().backward();
    (values(out), values(x.grad(&grads).unwrap()))
}

#[test]
fn libtorch_denoiser_forward_and_backward_match_flex() {
    let (out_flex, grad_flex) = unet_pass(&Device::flex().autodiff());
    let (out_torch, grad_torch) = unet_pass(&torch().autodiff());
    assert_close("denoiser output", &out_flex, &out_torch, PASS_TOL);
    assert_close("input gradient", &grad_flex, &grad_torch, PASS_TOL);
}

/// Losses of five AdamW steps of the VAE on one fixed batch, and its weights after them.
fn vae_steps(device: &Device) -> (Vec<f32>, Vec<f32>) {
    let _lock = serial();
    let build = |d: &Device| tiny_vae().with_geometry_channels(0).init(d).unwrap();
    let mut vae = on(build, 9, device);
    let mut optim: ModuleOptimizer = AdamWConfig::new().with_weight_decay(1e-4).init();
    let x = input([2, 3, 3, 8, 8], 10, device);
    let mask = input([2, 1, 3, 8, 8], 11, device)
        .greater_elem(-0.5)
        .float();
    let mut losses = Vec::new();
    let noise = input(tiny_vae().latent_shape([2, 3, 3, 8, 8]), 12, device);
    for _ in 0..5 {
        let out = vae.forward(x.clone(), None, Some(noise.clone()));
        let loss = normalized_mse(out.reconstruction, x.clone(), mask.clone());
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &vae);
        vae = optim.step(1e-3, vae, grads);
    }
    let probe = input([1, 3, 3, 8, 8], 13, device);
    (
        losses,
        values(vae.forward(probe, None, None).reconstruction),
    )
}

#[test]
fn libtorch_optimiser_steps_match_flex() {
    let (loss_flex, out_flex) = vae_steps(&Device::flex().autodiff());
    let (loss_torch, out_torch) = vae_steps(&torch().autodiff());
    assert!(
        loss_flex[4] < loss_flex[0],
        "the steps did not train: {loss_flex:?}"
    );
    assert_close("losses", &loss_flex, &loss_torch, CHAIN_TOL);
    assert_close("output after 5 steps", &out_flex, &out_torch, CHAIN_TOL);
}

/// A 10-step DPM-Solver++ draw of the denoiser (noise from a host generator, so both
/// backends start from the same latent).
fn draw(device: &Device) -> Vec<f32> {
    let _lock = serial();
    let unet = on(|d| tiny_unet().init(d).unwrap(), 13, device);
    let schedule = DiffusionTrainConfig::default().diffusion.init().unwrap();
    let predictor = LatentPredictor {
        unet: &unet,
        schedule: &schedule,
        kind: PredictorKind::Diffusion,
    };
    let options = SampleOptions {
        sampler: SamplerConfig::new()
            .with_kind(SamplerKind::DpmSolver)
            .with_steps(10)
            .with_spacing(TimestepSpacing::Trailing),
        guidance: 0.0,
    };
    let cond = input([1, 2, 3, 8, 8], 14, device);
    let geometry = input([1, 2, 3, 8, 8], 15, device);
    let latent = predictor
        .sample(cond, geometry, &options, &mut seeded_rng(16))
        .unwrap();
    values(latent)
}

#[test]
fn libtorch_sampling_matches_flex() {
    assert_close(
        "sampled latent",
        &draw(&Device::flex()),
        &draw(&torch()),
        CHAIN_TOL,
    );
}

#[test]
fn libtorch_is_deterministic_for_a_seed() {
    // Weights initialised on LibTorch itself from its own seeded generator.
    let run = || {
        let _lock = serial();
        let device = torch().autodiff();
        device.seed(21);
        let vae = tiny_vae().with_geometry_channels(0).init(&device).unwrap();
        let x = Tensor::<5>::random([1, 3, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let out = vae.forward(x.clone(), None, None).reconstruction;
        let grads = out.clone().sum().backward();
        (values(out), values(x.grad(&grads).unwrap()))
    };
    assert_eq!(run(), run());
    assert_eq!(draw(&torch()), draw(&torch()));
}
