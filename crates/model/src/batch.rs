//! From dataset batches to normalised tensors: velocities `(B, 3, S, H, W)` divided per
//! component by factors from the training statistics, masks `(B, 1, S, H, W)`.

use crate::error::ModelError;
use burn::prelude::*;
use burn::tensor::TensorData;
use fiberflow_data::features::{geometry_features, pressure_change};
use fiberflow_data::{Batch, Field, Statistics};
use ndarray::{Array4, Array5, Axis};
use serde::{Deserialize, Serialize};

/// How the per-component velocity scales are chosen from the training statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// Root mean square of each component of U over the fluid: every channel has unit
    /// scale, which is what a network's initialisation and a fixed learning rate assume.
    /// Flow fields are heavy-tailed (max |vx| ≈ 20 × rms), so dividing by the maximum
    /// leaves typical values near 0.05 and training starts far from the data.
    #[default]
    Rms,
    /// Largest |component| of U and U_2d over the training split (the reference's choice;
    /// each component then spans [−1, 1]).
    Max,
}

/// Per-component scale of the velocities (vx, vy, vz), m/s; each is divided by its own
/// factor so the sparse vz is not drowned by vx.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    pub factors: [f64; 3],
}

impl Normalizer {
    pub fn from_statistics(stats: &Statistics, kind: Normalization) -> Result<Self, ModelError> {
        let (u, u2d) = (&stats.u, &stats.u2d);
        let rms = |c: &fiberflow_data::statistics::ComponentStats| c.std.hypot(c.mean);
        let factors = match kind {
            Normalization::Rms => [rms(&u.vx), rms(&u.vy), rms(&u.vz)],
            Normalization::Max => [
                u.vx.max_abs.max(u2d.vx.max_abs),
                u.vy.max_abs.max(u2d.vy.max_abs),
                u.vz.max_abs.max(u2d.vz.max_abs),
            ],
        };
        if let Some(c) = factors.iter().position(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(ModelError::Input(format!(
                "the training split has no {} velocity (scale {}); a 3D flow dataset is needed",
                ["vx", "vy", "vz"][c],
                factors[c]
            )));
        }
        Ok(Self { factors })
    }

    fn scale(&self, device: &Device) -> Tensor<5> {
        let f: Vec<f32> = self.factors.iter().map(|&v| v as f32).collect();
        Tensor::from_data(TensorData::new(f, [1, 3, 1, 1, 1]), device)
    }

    /// Velocities in m/s → normalised units.
    pub fn normalize(&self, u: Tensor<5>) -> Tensor<5> {
        let device = u.device();
        u / self.scale(&device)
    }

    /// Normalised units → m/s.
    pub fn denormalize(&self, u: Tensor<5>) -> Tensor<5> {
        let device = u.device();
        u * self.scale(&device)
    }
}

/// One batch on a device.
pub struct TensorBatch {
    /// 3D flow, normalised, `(B, 3, S, H, W)`.
    pub u: Tensor<5>,
    /// 2D flow (vz = 0), normalised, `(B, 3, S, H, W)`.
    pub u2d: Tensor<5>,
    /// Fluid mask, `(B, 1, S, H, W)`.
    pub mask: Tensor<5>,
    /// Microstructure features (mask, scaled distance to the nearest fibre),
    /// `(B, 2, S, H, W)`; see `fiberflow_data::features`.
    pub geometry: Tensor<5>,
    /// Slice-to-slice change of the 2D pressure (`fiberflow_data::features::pressure_change`),
    /// `(B, 1, S, H, W)`, when every sample of the batch has `p_2d`.
    pub pressure: Option<Tensor<5>>,
    /// Voxel size `[dx, dy, dz]` in metres, shared by every sample of the batch.
    pub dxyz: [f64; 3],
}

/// `(B, S, C, H, W)` array → `(B, C, S, H, W)` tensor on `device`.
pub(crate) fn channel_first(a: Array5<f32>, device: &Device) -> Tensor<5> {
    let shape: [usize; 5] = a.shape().try_into().expect("a 5-D array");
    let data = TensorData::new(a.as_standard_layout().iter().copied().collect(), shape);
    Tensor::<5>::from_data(data, device).permute([0, 2, 1, 3, 4])
}

/// Sample `b` of a `(B, C, S, H, W)` tensor as an `(S, C, H, W)` array in the shared
/// layout (`fiberflow_geometry::layout`).
pub fn sample_array(t: Tensor<5>, b: usize) -> Result<Array4<f32>, ModelError> {
    let [_, c, s, h, w] = t.dims();
    let values: Vec<f32> = t
        .narrow(0, b, 1)
        .permute([0, 2, 1, 3, 4])
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .map_err(|e| ModelError::Input(format!("{e:?}")))?;
    Array4::from_shape_vec((s, c, h, w), values).map_err(|e| ModelError::Input(e.to_string()))
}

/// Stacks a batch's fields as channel-first tensors on `device`.
pub fn to_tensors(
    batch: &Batch,
    norm: &Normalizer,
    device: &Device,
) -> Result<TensorBatch, ModelError> {
    let field = |f: Field| -> Result<Tensor<5>, ModelError> {
        let a = batch
            .stack(f)
            .map_err(|e| ModelError::Input(e.to_string()))?;
        Ok(channel_first(a, device))
    };
    let input = |e: fiberflow_data::DataError| ModelError::Input(e.to_string());
    let stack = |arrays: Vec<Array4<f32>>| -> Result<Tensor<5>, ModelError> {
        let views: Vec<_> = arrays.iter().map(|f| f.view()).collect();
        let stacked =
            ndarray::stack(Axis(0), &views).map_err(|e| ModelError::Input(e.to_string()))?;
        Ok(channel_first(stacked, device))
    };
    let features = batch
        .samples
        .iter()
        .map(|s| geometry_features(s.domain.view(), s.dxyz[0]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(input)?;
    let pressure = batch
        .samples
        .iter()
        .map(|s| {
            s.p2d
                .as_ref()
                .map(|p| pressure_change(p.view(), s.domain.view()).map_err(input))
        })
        .collect::<Option<Result<Vec<_>, _>>>()
        .transpose()?
        .map(stack)
        .transpose()?;
    let dxyz = batch.samples.first().map(|s| s.dxyz).unwrap_or_default();
    if batch.samples.iter().any(|s| s.dxyz != dxyz) {
        return Err(ModelError::Input(
            "the samples of a batch have different voxel sizes".into(),
        ));
    }
    Ok(TensorBatch {
        dxyz,
        u: norm.normalize(field(Field::U)?),
        u2d: norm.normalize(field(Field::U2d)?),
        mask: field(Field::Domain)?,
        geometry: stack(features)?,
        pressure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fiberflow_data::{Mirror, Sample};
    use ndarray::Array4;

    #[test]
    fn tensors_are_channel_first_and_normalised_per_component() {
        let (s, h, w) = (2, 3, 4);
        let u = Array4::from_shape_fn((s, 3, h, w), |(k, c, y, x)| {
            (1 + c) as f32 * 0.001 * (k * 100 + y * 10 + x) as f32
        });
        let sample = Sample {
            domain: Array4::ones((s, 1, h, w)),
            u2d: u.clone(),
            u,
            p: Array4::zeros((s, 1, h, w)),
            p2d: Some(Array4::from_shape_fn((s, 1, h, w), |(k, _, y, x)| {
                (k * 7 + y * 3 + x) as f32
            })),
            dxyz: [1e-6, 1e-6, 5e-6],
        };
        let mut batch = Batch {
            indices: vec![0],
            samples: vec![sample.clone()],
            mirrors: vec![Mirror::default()],
        };
        let norm = Normalizer {
            factors: [2.0, 4.0, 8.0],
        };
        let t = to_tensors(&batch, &norm, &Device::flex()).unwrap();
        let change =
            pressure_change(sample.p2d.as_ref().unwrap().view(), sample.domain.view()).unwrap();
        let p: Vec<f32> = t.pressure.unwrap().into_data().try_into_vec().unwrap();
        assert_eq!(
            p,
            change.iter().copied().collect::<Vec<_>>(),
            "S = C = 1 axes"
        );
        batch.samples[0].p2d = None;
        let without = to_tensors(&batch, &norm, &Device::flex()).unwrap();
        assert!(without.pressure.is_none());
        assert_eq!(t.u.dims(), [1, 3, s, h, w]);
        assert_eq!(t.mask.dims(), [1, 1, s, h, w]);
        let v: Vec<f32> = t.u.into_data().try_into_vec().unwrap();
        // Element (b=0, c=2, k=1, y=2, x=3).
        let at = ((2 * s + 1) * h + 2) * w + 3;
        let expect = sample.u[[1, 2, 2, 3]] / 8.0;
        assert!((v[at] - expect).abs() < 1e-9, "{} vs {expect}", v[at]);
        let back: Vec<f32> = norm
            .denormalize(norm.normalize(Tensor::<5>::ones([1, 3, 1, 1, 1], &Device::flex())))
            .into_data()
            .try_into_vec()
            .unwrap();
        assert!(back.iter().all(|&x| (x - 1.0).abs() < 1e-7));
    }

    #[test]
    fn sample_arrays_come_back_in_the_shared_layout() {
        let (s, h, w) = (2, 3, 4);
        let u = Array4::from_shape_fn((s, 3, h, w), |(k, c, y, x)| {
            (k * 1000 + c * 100 + y * 10 + x) as f32
        });
        let batch = Batch {
            indices: vec![0],
            samples: vec![Sample {
                domain: Array4::ones((s, 1, h, w)),
                u2d: u.clone(),
                u: u.clone(),
                p: Array4::zeros((s, 1, h, w)),
                p2d: None,
                dxyz: [1e-6, 1e-6, 5e-6],
            }],
            mirrors: vec![Mirror::default()],
        };
        let norm = Normalizer { factors: [1.0; 3] };
        let t = to_tensors(&batch, &norm, &Device::flex()).unwrap();
        assert_eq!(sample_array(t.u, 0).unwrap(), u);
    }
}
