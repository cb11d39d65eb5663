//! Schedules as closed-form functions of the step or epoch, so a resumed run needs only
//! its counters to continue exactly where it stopped.

use std::f64::consts::PI;

/// Linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to `min_lr` at
/// `total` steps (Loshchilov & Hutter 2017, without restarts).
pub fn learning_rate(step: usize, total: usize, warmup: usize, lr: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (PI * t).cos())
}

/// KL weight rising linearly from `start` to `end` over `warmup_epochs` epochs.
pub fn kl_weight(epoch: usize, warmup_epochs: usize, start: f64, end: f64) -> f64 {
    if epoch >= warmup_epochs {
        end
    } else {
        start + (end - start) * epoch as f64 / warmup_epochs as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_follows_the_cosine() {
        assert!((learning_rate(0, 100, 10, 1e-3, 1e-5) - 1e-4).abs() < 1e-15);
        assert!((learning_rate(9, 100, 10, 1e-3, 1e-5) - 1e-3).abs() < 1e-15);
        assert!((learning_rate(10, 100, 10, 1e-3, 1e-5) - 1e-3).abs() < 1e-15);
        // Half-way through the decay the cosine is at its mean.
        assert!((learning_rate(55, 100, 10, 1e-3, 1e-5) - (1e-3 + 1e-5) / 2.0).abs() < 1e-12);
        assert!((learning_rate(100, 100, 10, 1e-3, 1e-5) - 1e-5).abs() < 1e-15);
        assert!((learning_rate(500, 100, 10, 1e-3, 1e-5) - 1e-5).abs() < 1e-15);
    }

    #[test]
    fn kl_weight_is_linear_then_flat() {
        assert_eq!(kl_weight(0, 10, 1e-5, 1e-3), 1e-5);
        assert!((kl_weight(5, 10, 1e-5, 1e-3) - 5.05e-4).abs() < 1e-15);
        assert_eq!(kl_weight(10, 10, 1e-5, 1e-3), 1e-3);
        assert_eq!(kl_weight(3, 0, 1e-5, 1e-3), 1e-3);
    }
}
