//! Which of the T training timesteps a sampler with fewer steps visits (DDIM's
//! sub-sequence τ, Song et al. 2021 §4.2). `Leading` and `Trailing` follow diffusers and
//! Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2;
//! `Linspace` reproduces the reference's `torch.linspace(T − 1, 0, n, dtype=long)`.

use crate::error::ModelError;
use serde::{Deserialize, Serialize};

/// How the sampling timesteps are chosen; all give n distinct timesteps, noisiest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// torch's integer linspace from T − 1 to 0 (the reference): starts at pure noise and
    /// ends at t = 0.
    Linspace,
    /// k · ⌊T/n⌋ for k = n − 1 … 0: ends at t = 0 but never starts at T − 1, so the first
    /// step sees an x_T that is noisier than the network was told.
    Leading,
    /// round(T − k · T/n) − 1 for k = 0 … n − 1: starts at T − 1 (Lin et al. 2024) and ends
    /// at about T/n − 1, where the final step jumps to x0; best for few steps.
    Trailing,
}

impl TimestepSpacing {
    /// `steps` timesteps out of `train_timesteps`, in sampling order (decreasing).
    pub fn timesteps(self, steps: usize, train_timesteps: usize) -> Result<Vec<usize>, ModelError> {
        if steps == 0 || steps > train_timesteps {
            return Err(ModelError::Config(format!(
                "sampling steps = {steps} must be in 1..={train_timesteps} (the training timesteps)"
            )));
        }
        let last = train_timesteps - 1;
        Ok(match self {
            Self::Linspace => torch_linspace_long(last, steps),
            Self::Leading => {
                let ratio = train_timesteps / steps;
                (0..steps).rev().map(|k| k * ratio).collect()
            }
            Self::Trailing => {
                let ratio = train_timesteps as f64 / steps as f64;
                (0..steps)
                    .map(|k| {
                        (train_timesteps as f64 - k as f64 * ratio).round_ties_even() as usize - 1
                    })
                    .collect()
            }
        })
    }
}

/// `torch.linspace(start, 0, n, dtype=torch.long)` as its CUDA kernel computes it (the
/// reference sampled on a GPU): a float32 step, the first half counted up from `start` and
/// the second half down from 0 (symmetric, so both ends are exact), truncated towards
/// zero. PyTorch's CPU kernel uses a float64 step and differs for some n (n = 124: index
/// 82 is 999 · 41/123 = 333 exactly, which float64 truncates to 332 and float32 keeps).
fn torch_linspace_long(start: usize, n: usize) -> Vec<usize> {
    if n == 1 {
        return vec![start];
    }
    let step = -(start as f32) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            let v = if i < half {
                start as f32 + step * i as f32
            } else {
                -step * (n - 1 - i) as f32
            };
            v as usize
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_reproduces_the_reference_50_steps() {
        let t = TimestepSpacing::Linspace.timesteps(50, 1000).unwrap();
        // The reference sampler's DDIM-50 steps: torch.linspace(999, 0, 50) truncated to integers.
        assert_eq!(&t[..5], &[999, 978, 958, 937, 917]);
        assert_eq!(&t[46..], &[61, 40, 20, 0]);
        // Exactly, t_i = 999 (49 − i)/49, never an integer for 0 < i < 49, so truncation
        // is integer division.
        let exact: Vec<usize> = (0..50).map(|i| 999 * (49 - i) / 49).collect();
        assert_eq!(t, exact);
    }

    #[test]
    fn linspace_rounds_like_the_float32_kernel() {
        let t = TimestepSpacing::Linspace.timesteps(124, 1000).unwrap();
        assert_eq!(t[82], 333);
        assert_eq!(
            TimestepSpacing::Linspace.timesteps(1, 1000).unwrap(),
            vec![999]
        );
        assert_eq!(
            TimestepSpacing::Linspace.timesteps(2, 1000).unwrap(),
            vec![999, 0]
        );
    }

    #[test]
    fn leading_and_trailing_match_diffusers() {
        let lead = TimestepSpacing::Leading.timesteps(50, 1000).unwrap();
        assert_eq!((lead[0], lead[1], lead[49]), (980, 960, 0));
        let trail = TimestepSpacing::Trailing.timesteps(50, 1000).unwrap();
        assert_eq!((trail[0], trail[1], trail[49]), (999, 979, 19));
        // T/n not an integer: round(1000, 666.67, 333.33) − 1.
        assert_eq!(
            TimestepSpacing::Trailing.timesteps(3, 1000).unwrap(),
            vec![999, 666, 332]
        );
        assert_eq!(
            TimestepSpacing::Leading.timesteps(3, 1000).unwrap(),
            vec![666, 333, 0]
        );
    }

    #[test]
    fn every_spacing_gives_n_distinct_decreasing_timesteps() {
        let all = [
            TimestepSpacing::Linspace,
            TimestepSpacing::Leading,
            TimestepSpacing::Trailing,
        ];
        for t_max in [1000, 7] {
            for s in all {
                for n in 1..=t_max {
                    let t = s.timesteps(n, t_max).unwrap();
                    assert_eq!(t.len(), n, "{s:?} n = {n}");
                    assert!(t[0] < t_max, "{s:?} n = {n}");
                    assert!(t.windows(2).all(|w| w[0] > w[1]), "{s:?} n = {n}: {t:?}");
                }
                let full: Vec<usize> = (0..t_max).rev().collect();
                assert_eq!(s.timesteps(t_max, t_max).unwrap(), full, "{s:?}");
            }
        }
    }

    #[test]
    fn step_counts_outside_the_schedule_are_refused() {
        for n in [0, 1001] {
            let e = TimestepSpacing::Trailing
                .timesteps(n, 1000)
                .unwrap_err()
                .to_string();
            assert!(e.contains("must be in 1..=1000"), "{e}");
        }
    }
}
