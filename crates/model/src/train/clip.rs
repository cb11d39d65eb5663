//! Gradient clipping by the global L2 norm over all parameters (Pascanu et al. 2013), applied
//! once to the accumulated gradient. Burn's built-in clipping is per parameter tensor.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: f64,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.sum += g.square().sum().into_scalar::<f64>();
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads
                .register::<D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Global L2 norm of the gradients of `model`'s parameters.
pub fn global_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorm { grads, sum: 0.0 };
    model.visit(&mut v);
    v.sum.sqrt()
}

/// Scales all gradients so their global norm is at most `max_norm`; returns the norm
/// before clipping (to log it).
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_norm(model, grads);
    if norm > max_norm {
        model.visit(&mut Scale {
            grads,
            factor: max_norm / norm,
        });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::TensorData;

    #[test]
    fn clipping_matches_the_hand_computed_global_norm() {
        let dev = Device::flex().autodiff();
        let lin: Linear = LinearConfig::new(2, 1).init(&dev);
        // loss = Σ (x·W + b) for x = (3, 4): dL/dW = (3, 4)ᵀ, dL/db = 1 → norm √26.
        let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &dev);
        let loss = lin.forward(x).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &lin);
        let norm = clip_global_norm(&lin, &mut grads, 1.0);
        assert!((norm - 26f64.sqrt()).abs() < 1e-5, "{norm}");
        assert!((global_norm(&lin, &grads) - 1.0).abs() < 1e-5);
        // Direction kept: the weight gradient is still ∝ (3, 4).
        let gw: Vec<f32> = grads
            .get::<2>(lin.weight.id)
            .unwrap()
            .into_data()
            .try_into_vec()
            .unwrap();
        assert!((gw[0] / gw[1] - 0.75).abs() < 1e-5);
        // Below the limit nothing changes.
        let before = global_norm(&lin, &grads);
        assert!((clip_global_norm(&lin, &mut grads, 10.0) - before).abs() < 1e-9);
        assert!((global_norm(&lin, &grads) - before).abs() < 1e-9);
    }
}
