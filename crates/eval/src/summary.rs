//! Aggregation over samples: per metric mean, population std, min and max, as the
//! reference's summary (`{metric}_mean/_std/_min/_max` of `scripts/eval_testset_end2end.py`
//! in `Ruby-004/Diffusion_model_project`).

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::record::SampleMetrics;

/// Statistics of one metric over the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricStats {
    /// Field name in [`SampleMetrics`].
    pub name: String,
    pub mean: f64,
    /// Population standard deviation (divisor n, as NumPy's default in the reference).
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

/// Every metric aggregated over a set of samples, in [`SampleMetrics::METRIC_NAMES`] order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n_samples: usize,
    pub metrics: Vec<MetricStats>,
}

impl Summary {
    /// Aggregates `samples` (at least one).
    pub fn from_samples(samples: &[SampleMetrics]) -> Result<Self> {
        if samples.is_empty() {
            return Err(EvalError::NoSamples);
        }
        let values: Vec<Vec<f64>> = samples.iter().map(SampleMetrics::metric_values).collect();
        let n = samples.len() as f64;
        let metrics = SampleMetrics::METRIC_NAMES
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let column = values.iter().map(|v| v[k]);
                let mean = column.clone().sum::<f64>() / n;
                let var = column.clone().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
                MetricStats {
                    name: (*name).to_string(),
                    mean,
                    std: var.sqrt(),
                    min: column.clone().fold(f64::INFINITY, f64::min),
                    max: column.fold(f64::NEG_INFINITY, f64::max),
                }
            })
            .collect();
        Ok(Self {
            n_samples: samples.len(),
            metrics,
        })
    }

    /// Statistics of the metric called `name`.
    pub fn get(&self, name: &str) -> Option<&MetricStats> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record whose k-th metric is `base + k`.
    pub(crate) fn record(id: &str, base: f64) -> SampleMetrics {
        let mut value = serde_json::json!({ "sample_id": id });
        for (k, name) in SampleMetrics::METRIC_NAMES.iter().enumerate() {
            value[*name] = (base + k as f64).into();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn statistics_by_hand() {
        let samples: Vec<_> = [1.0, 2.0, 3.0, 4.0]
            .iter()
            .map(|&b| record("s", b))
            .collect();
        let s = Summary::from_samples(&samples).unwrap();
        assert_eq!(s.n_samples, 4);
        assert_eq!(s.metrics.len(), SampleMetrics::METRIC_NAMES.len());
        let last = SampleMetrics::METRIC_NAMES.len() - 1;
        for (k, m) in [(0, &s.metrics[0]), (last, &s.metrics[last])] {
            let k = k as f64;
            assert_eq!(m.mean, 2.5 + k);
            // Population std of {1, 2, 3, 4}: √1.25 (the sample std would be √(5/3)).
            assert!((m.std - 1.25f64.sqrt()).abs() < 1e-15);
            assert_eq!((m.min, m.max), (1.0 + k, 4.0 + k));
        }
        assert_eq!(s.get("ref_mae_u"), Some(&s.metrics[0]));
        assert_eq!(s.get("k_rel_err"), Some(&s.metrics[last]));
        assert!(s.get("nonsense").is_none());
    }

    #[test]
    fn single_sample_and_empty_input() {
        let s = Summary::from_samples(&[record("x", 5.0)]).unwrap();
        assert_eq!((s.metrics[1].mean, s.metrics[1].std), (6.0, 0.0));
        assert!(matches!(
            Summary::from_samples(&[]),
            Err(EvalError::NoSamples)
        ));
    }

    #[test]
    fn json_round_trip_keeps_order() {
        let samples = vec![record("a", 1.0), record("b", -2.5e-7)];
        let s = Summary::from_samples(&samples).unwrap();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&text).unwrap(), s);
        let text = serde_json::to_string(&samples).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<SampleMetrics>>(&text).unwrap(),
            samples
        );
        let first = text.find("\"ref_mae_u\"").unwrap();
        assert!(first < text.find("\"k_rel_err\"").unwrap());
    }
}
