//! Reduced-precision inference: a trained network's float weights cast to bf16 or f16, each
//! network computing in its weights' type and handing f32 back at its boundary (Micikevicius
//! et al., "Mixed Precision Training", ICLR 2018; Kalamkar et al., "A Study of BFLOAT16 for
//! Deep Learning Training", 2019). Burn 0.22 has no automatic mixed precision and never
//! promotes mixed operands (an f32 × bf16 op panics), so the casts are explicit: inputs to
//! the weights' type on entry, outputs back to the caller's type on exit, and the sampler,
//! the latent scales and the physics stay in f32.
//!
//! It pays on GPUs, whose tensor cores run half-precision convolutions at several times the
//! f32 rate and whose memory traffic halves. The CPU backend converts half-precision
//! operands to f32 for its kernels, so there it is slower than f32 and only useful to check
//! a model's accuracy before a GPU run.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

/// The float type a trained network computes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single precision: what the networks are trained in.
    #[default]
    F32,
    /// bfloat16: f32's exponent range with an 8-bit mantissa (≈ 3 significant digits); no
    /// overflow where f32 has none.
    Bf16,
    /// IEEE half: a 11-bit mantissa but values beyond ±65 504 overflow to ∞.
    F16,
}

impl Precision {
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::F16 => FloatDType::F16,
        }
    }

    /// `module` with every float parameter cast to this precision.
    pub fn cast<M: Module>(self, module: M) -> M {
        module.map(&mut CastFloats(self.dtype()))
    }
}

struct CastFloats(FloatDType);

impl ModuleMapper for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// `x` in the float type of `weights` (a no-op when they already agree).
pub(crate) fn like<const D: usize, const W: usize>(
    x: Tensor<D>,
    weights: &Param<Tensor<W>>,
) -> Tensor<D> {
    x.cast(weights.val().dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::DType;

    #[test]
    fn casts_every_parameter_and_back() {
        let dev = Device::flex();
        let linear: Linear = LinearConfig::new(3, 2).init(&dev);
        let w: Vec<f32> = linear.weight.val().into_data().try_into_vec().unwrap();
        let half = Precision::Bf16.cast(linear);
        assert_eq!(half.weight.val().dtype(), DType::BF16);
        let bias = half.bias.as_ref().expect("bias by default");
        assert_eq!(bias.val().dtype(), DType::BF16);
        let x = Tensor::<2>::from_floats([[1.0, -2.0, 0.5]], &dev);
        assert_eq!(like(x.clone(), &half.weight).dtype(), DType::BF16);
        let back = Precision::F32.cast(half);
        assert_eq!(back.weight.val().dtype(), DType::F32);
        // bf16 keeps ≈ 3 significant digits of each weight.
        let r: Vec<f32> = back.weight.val().into_data().try_into_vec().unwrap();
        for (a, b) in w.iter().zip(&r) {
            assert!((a - b).abs() <= a.abs() / 128.0, "{a} → {b}");
        }
        assert_eq!(like(x, &back.weight).dtype(), DType::F32);
    }
}
