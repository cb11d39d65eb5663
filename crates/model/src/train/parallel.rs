//! Synchronous data parallelism over several devices, as PyTorch's DistributedDataParallel
//! does on one node and Burn's multi-device learner does: the batches of one optimiser
//! step (its gradient-accumulation group) are dealt round-robin to the devices; each
//! device differentiates its batches on its own fork of the model in its own thread; the
//! gradients are moved to the main device and summed there in batch order. Every random
//! draw is made on the main thread before the batches are dealt, so a run gives the same
//! result with one device or several: the devices change the speed, never the step.

use crate::error::ModelError;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;

/// Checks that `devices` devices have whole batches to work on: each optimiser step
/// accumulates `accumulation` batches, and a device computes whole batches.
pub fn check_devices(devices: usize, accumulation: usize) -> Result<(), ModelError> {
    if devices == 0 {
        return Err(ModelError::Config("no training device given".into()));
    }
    if devices > accumulation {
        return Err(ModelError::Config(format!(
            "{devices} devices share the {accumulation} batch(es) of one optimiser step, so {} would idle; set accumulation to a multiple of {devices} (--set accumulation={devices}: each device computes one batch of every step)",
            devices - accumulation
        )));
    }
    Ok(())
}

/// `model` for the worker on `device`: the model itself for the first (main) device,
/// a fork with its own autodiff graph for the others.
pub fn replica<M: Module>(model: &M, worker: usize, device: &Device) -> M {
    if worker == 0 {
        model.clone()
    } else {
        model.clone().fork(device)
    }
}

/// The gradients of `loss` with respect to `model`'s parameters, on `main`.
pub fn gradients<M: Module>(loss: Tensor<1>, model: &M, main: &Device) -> GradientsParams {
    GradientsParams::from_grads(loss.backward(), model).to_device(main, model)
}

/// Runs `job` on each of `jobs`, job i on `workers[i % workers.len()]`, one thread per
/// worker (inline when there is one), and returns the outputs in job order. The first
/// error, in job order, is returned.
pub fn run_sharded<W, J, O, F>(
    workers: &mut [W],
    jobs: Vec<J>,
    job: F,
) -> Result<Vec<O>, ModelError>
where
    W: Send,
    J: Send,
    O: Send,
    F: Fn(&mut W, J) -> Result<O, ModelError> + Sync,
{
    let n = workers.len();
    if n == 0 {
        return Err(ModelError::Config("no training device given".into()));
    }
    if n == 1 {
        return jobs.into_iter().map(|j| job(&mut workers[0], j)).collect();
    }
    let count = jobs.len();
    let mut dealt: Vec<Vec<(usize, J)>> = (0..n).map(|_| Vec::new()).collect();
    for (i, j) in jobs.into_iter().enumerate() {
        dealt[i % n].push((i, j));
    }
    let job = &job;
    let finished = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter_mut()
            .zip(dealt)
            .map(|(worker, mine)| {
                scope.spawn(move || {
                    mine.into_iter()
                        .map(|(i, j)| (i, job(worker, j)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| ModelError::Input("a training device's thread panicked".into()))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut slots: Vec<Option<Result<O, ModelError>>> = (0..count).map(|_| None).collect();
    for (i, out) in finished.into_iter().flatten() {
        slots[i] = Some(out);
    }
    slots
        .into_iter()
        .map(|s| s.expect("every job was dealt to one worker"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsAccumulator;

    #[test]
    fn outputs_come_back_in_job_order_from_every_worker() {
        let mut workers = vec![Vec::new(), Vec::new(), Vec::new()];
        let out = run_sharded(
            &mut workers,
            (0..7).collect(),
            |w: &mut Vec<i32>, j: i32| {
                w.push(j);
                Ok(j * 10)
            },
        )
        .unwrap();
        assert_eq!(out, vec![0, 10, 20, 30, 40, 50, 60]);
        assert_eq!(workers, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
    }

    #[test]
    fn the_first_failing_job_is_reported() {
        let mut workers = vec![(), ()];
        let e = run_sharded(&mut workers, (0..5).collect(), |_, j: i32| {
            if j >= 2 {
                Err(ModelError::Input(format!("job {j}")))
            } else {
                Ok(j)
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains("job 2"), "{e}");
        assert!(run_sharded(&mut Vec::<()>::new(), vec![1], |_, j: i32| Ok(j)).is_err());
    }

    #[test]
    fn device_counts_that_would_idle_are_refused() {
        check_devices(1, 1).unwrap();
        check_devices(2, 4).unwrap();
        let e = check_devices(3, 2).unwrap_err().to_string();
        assert!(e.contains("accumulation=3"), "{e}");
        assert!(check_devices(0, 1).is_err());
    }

    /// Summed per-batch gradients of replicas in two threads equal those of one model
    /// computing the batches one after the other (the gradient of the summed loss).
    #[test]
    fn sharded_gradients_equal_the_sequential_sum() {
        let dev = Device::flex().autodiff();
        dev.seed(7);
        let model: Linear = LinearConfig::new(4, 3).init(&dev);
        let batches: Vec<Tensor<2>> = (0..4)
            .map(|_| Tensor::random([5, 4], burn::tensor::Distribution::Default, &dev))
            .collect();
        let loss = |m: &Linear, x: Tensor<2>| m.forward(x).square().mean();

        let mut sequential = GradientsAccumulator::<Linear>::new();
        for x in batches.clone() {
            sequential.accumulate(&model, gradients(loss(&model, x), &model, &dev));
        }
        let mut workers: Vec<Linear> = (0..2).map(|w| replica(&model, w, &dev)).collect();
        let grads = run_sharded(&mut workers, batches, |m, x| {
            Ok(gradients(loss(m, x), m, &dev))
        })
        .unwrap();
        let mut sharded = GradientsAccumulator::<Linear>::new();
        for g in grads {
            sharded.accumulate(&model, g);
        }
        let (a, b) = (sequential.grads(), sharded.grads());
        let id = model.weight.id;
        let (ga, gb) = (a.get::<2>(id).unwrap(), b.get::<2>(id).unwrap());
        assert!(ga.clone().abs().sum().into_scalar::<f64>() > 0.0);
        ga.into_data()
            .assert_approx_eq::<f32>(&gb.into_data(), burn::tensor::Tolerance::absolute(1e-7));
    }
}
