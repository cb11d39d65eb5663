//! The networks against independent checks: finite-difference gradients of a residual
//! block, save → load identity, and overfitting a fixed batch.

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use fiberflow_model::loss::normalized_mae;
use fiberflow_model::run::checkpoint;
use fiberflow_model::vae::{ResBlock, VaeConfig};

fn values(t: Tensor<5>) -> Vec<f32> {
    t.into_data().try_into_vec().unwrap()
}

#[test]
fn residual_block_gradient_matches_central_differences() {
    let device = Device::flex();
    device.seed(11);
    let ad = device.clone().autodiff();
    let block = ResBlock::new(4, 8, 2, &ad);
    let shape = [1, 4, 2, 4, 4];
    let x0 = values(Tensor::<5>::random(
        shape,
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let w = Tensor::<5>::random([1, 8, 2, 4, 4], Distribution::Normal(0.0, 1.0), &ad);
    let f = |x: &[f32]| -> f64 {
        let t = Tensor::<5>::from_data(TensorData::new(x.to_vec(), shape), &ad);
        (block.forward(t) * w.clone()).sum().into_scalar::<f64>()
    };
    let x = Tensor::<5>::from_data(TensorData::new(x0.clone(), shape), &ad).require_grad();
    let grads = (block.forward(x.clone()) * w.clone()).sum().backward();
    let g = values(x.grad(&grads).unwrap());
    let scale = g.iter().fold(0f32, |m, v| m.max(v.abs()));
    for i in [0, 7, 31, 64, 100, 127] {
        let h = 1e-2f32;
        let (mut p, mut m) = (x0.clone(), x0.clone());
        p[i] += h;
        m[i] -= h;
        let fd = (f(&p) - f(&m)) / (2.0 * f64::from(h));
        assert!(
            (fd - f64::from(g[i])).abs() < 2e-2 * f64::from(scale),
            "x[{i}]: autodiff {} vs finite difference {fd}",
            g[i]
        );
    }
}

#[test]
fn saved_and_loaded_networks_give_identical_outputs() {
    let device = Device::flex();
    device.seed(5);
    let cfg = VaeConfig::new()
        .with_channels(vec![8, 16])
        .with_groups(4)
        .with_geometry_channels(0);
    let vae = cfg.init(&device).unwrap();
    let x = Tensor::<5>::random([1, 3, 2, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("vae.bpk");
    checkpoint::save(&vae, &path).unwrap();
    let loaded = checkpoint::load(cfg.init(&device).unwrap(), &path).unwrap();
    assert!(
        values(vae.forward(x.clone(), None, None).reconstruction)
            == values(loaded.forward(x, None, None).reconstruction)
    );
    // Another architecture is refused with the file named.
    let other = VaeConfig::new()
        .with_channels(vec![8, 32])
        .with_groups(4)
        .with_geometry_channels(0);
    let e = checkpoint::load(other.init(&device).unwrap(), &path).unwrap_err();
    assert!(e.to_string().contains("vae.bpk"), "{e}");
}

#[test]
fn overfits_a_fixed_batch_tenfold() {
    let device = Device::flex();
    device.seed(3);
    let ad = device.clone().autodiff();
    let mut vae = VaeConfig::new()
        .with_channels(vec![8, 16])
        .with_groups(4)
        .with_geometry_channels(0)
        .init(&ad)
        .unwrap();
    let x = Tensor::<5>::random([1, 3, 2, 8, 8], Distribution::Normal(0.0, 1.0), &ad);
    let mask = Tensor::<5>::ones([1, 1, 2, 8, 8], &ad);
    let mut optim = AdamWConfig::new().with_epsilon(1e-8).init();
    let loss_of = |vae: &fiberflow_model::vae::VaeBranch| {
        normalized_mae(
            vae.forward(x.clone(), None, None).reconstruction,
            x.clone(),
            mask.clone(),
        )
    };
    let first = loss_of(&vae).into_scalar::<f64>();
    for _ in 0..300 {
        let loss = loss_of(&vae);
        let grads = GradientsParams::from_grads(loss.backward(), &vae);
        vae = optim.step(3e-3, vae, grads);
    }
    let last = loss_of(&vae).into_scalar::<f64>();
    assert!(last < first / 10.0, "loss {first} → {last}");
}
