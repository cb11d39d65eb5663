//! Gaussian noise drawn on the CPU from a seeded ChaCha8 stream and then moved to the
//! device, so a seed gives the same noise, bit for bit, on every backend and thread count
//! (Burn's own `Tensor::random` depends on the backend's generator).

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The generator every diffusion function draws from, seeded by the caller.
pub fn seeded_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A tensor of independent N(0, 1) values on `device`.
pub fn standard_normal(shape: [usize; 5], rng: &mut ChaCha8Rng, device: &Device) -> Tensor<5> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

#[cfg(test)]
mod tests {
    use super::super::testing::values;
    use super::*;

    #[test]
    fn a_seed_fixes_the_noise() {
        let dev = Device::flex();
        let draw = |seed| {
            values(standard_normal(
                [2, 3, 2, 4, 4],
                &mut seeded_rng(seed),
                &dev,
            ))
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        // Successive draws from one stream differ.
        let mut rng = seeded_rng(5);
        let a = values(standard_normal([1, 1, 1, 4, 4], &mut rng, &dev));
        let b = values(standard_normal([1, 1, 1, 4, 4], &mut rng, &dev));
        assert_ne!(a, b);
    }

    #[test]
    fn draws_have_standard_normal_moments() {
        let n = 100_000;
        let v = values(standard_normal(
            [1, 1, 1, 1, n],
            &mut seeded_rng(1),
            &Device::flex(),
        ));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n as f64 / var / var;
        // Standard errors: mean 0.003, variance 0.0045, kurtosis 0.015; allow ~5.
        assert!(mean.abs() < 0.015, "{mean}");
        assert!((var - 1.0).abs() < 0.025, "{var}");
        assert!((kurt - 3.0).abs() < 0.08, "{kurt}");
    }
}
