//! Exponential moving average of model weights (Polyak & Juditsky 1992), with the warm-up
//! decay min(β_max, (1 + n)/(10 + n)) used by latent diffusion, so that early averages are
//! not dominated by the random initialisation.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::container::TensorContainer;

/// Decay after `updates` updates with ceiling `max_decay`.
pub fn warmup_decay(updates: u64, max_decay: f64) -> f64 {
    max_decay.min((1.0 + updates as f64) / (10.0 + updates as f64))
}

struct Collect {
    values: TensorContainer<ParamId>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.values
            .register(param.id, param.val().detach().without_autodiff());
    }
}

struct Blend {
    values: TensorContainer<ParamId>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        let value = match self.values.remove::<Tensor<D>>(&id) {
            Some(new) => value.mul_scalar(self.decay) + new.mul_scalar(1.0 - self.decay),
            None => value,
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// ema ← decay·ema + (1 − decay)·model, matched parameter by parameter. `ema` must be a
/// copy of `model` (e.g. `model.valid()`), which keeps the parameter ids.
pub fn update<M: Module>(ema: M, model: &M, decay: f64) -> M {
    let mut collect = Collect {
        values: TensorContainer::new(),
    };
    model.visit(&mut collect);
    ema.map(&mut Blend {
        values: collect.values,
        decay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    fn weights(lin: &Linear) -> Vec<f32> {
        lin.weight.val().into_data().try_into_vec().unwrap()
    }

    #[test]
    fn update_blends_each_parameter_with_the_decay() {
        let dev = Device::flex();
        dev.seed(4);
        let model: Linear = LinearConfig::new(3, 2).init(&dev);
        let ema = model.clone();
        // Move the model: every weight +1.
        let moved = model.clone().map(&mut Blend {
            values: {
                let mut c = Collect {
                    values: TensorContainer::new(),
                };
                model.visit(&mut c);
                c.values
            },
            decay: 0.0,
        });
        let shifted = Linear {
            weight: moved.weight.map(|w| w + 1.0),
            ..moved
        };
        let ema = update(ema, &shifted, 0.9);
        for (e, m) in weights(&ema).iter().zip(weights(&model)) {
            assert!((e - (m + 0.1)).abs() < 1e-6, "{e} vs {}", m + 0.1);
        }
    }

    #[test]
    fn warmup_decay_rises_to_its_ceiling() {
        assert!((warmup_decay(0, 0.9999) - 0.1).abs() < 1e-12);
        assert!((warmup_decay(90, 0.9999) - 0.91).abs() < 1e-12);
        assert_eq!(warmup_decay(10_000_000, 0.9999), 0.9999);
    }
}
