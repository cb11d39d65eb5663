//! Validated inputs: a velocity field `(S, 3, H, W)` (m/s) with its fluid mask
//! `(S, 1, H, W)` (1 = fluid, 0 = fibre), the layout of `fiberflow_geometry::layout` and of
//! the stored `U` and `domain` fields.
//!
//! Every check happens once, here, so the metrics can assume finite values, a binary mask
//! and at least one fluid voxel. Values are widened to f64 on the way in: sums over ~10⁶
//! voxels then keep full f32 input precision.

use fiberflow_geometry::layout::VoxelSize;
use ndarray::{ArrayView4, Axis};

use crate::error::{EvalError, Result, positive};

/// Grid extent: `S` slices (z) of `H` rows (y) by `W` columns (x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub slices: usize,
    pub height: usize,
    pub width: usize,
}

impl Dims {
    /// Number of voxels `S·H·W`.
    pub fn voxels(&self) -> usize {
        self.slices * self.height * self.width
    }
}

/// A validated velocity field and its fluid mask, flattened C-order over `(S, H, W)`.
#[derive(Debug, Clone)]
pub struct Flow {
    dims: Dims,
    /// `[vx, vy, vz]`, each `S·H·W` values, as given (fibre voxels included).
    velocity: [Vec<f64>; 3],
    fluid: Vec<bool>,
    n_fluid: usize,
}

impl Flow {
    /// Checks shapes, finiteness and the mask, then copies the field to f64.
    pub fn new(velocity: ArrayView4<f32>, mask: ArrayView4<f32>) -> Result<Self> {
        let dims = velocity_dims("velocity", velocity)?;
        let fluid = read_mask(mask, dims)?;
        Ok(Self::from_parts(
            dims,
            read_velocity("velocity", velocity)?,
            fluid,
        ))
    }

    fn from_parts(dims: Dims, velocity: [Vec<f64>; 3], fluid: Vec<bool>) -> Self {
        let n_fluid = fluid.iter().filter(|&&f| f).count();
        Self {
            dims,
            velocity,
            fluid,
            n_fluid,
        }
    }

    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Component `c` (0 = vx, 1 = vy, 2 = vz) over all voxels, fibres included.
    pub fn component(&self, c: usize) -> &[f64] {
        &self.velocity[c]
    }

    /// Fluid flag per voxel.
    pub fn fluid(&self) -> &[bool] {
        &self.fluid
    }

    /// Number of fluid voxels (at least 1).
    pub fn n_fluid(&self) -> usize {
        self.n_fluid
    }

    /// Velocity at voxel `i`.
    pub(crate) fn at(&self, i: usize) -> [f64; 3] {
        [
            self.velocity[0][i],
            self.velocity[1][i],
            self.velocity[2][i],
        ]
    }

    /// The field with fibre voxels set to zero (no-slip), `M u`.
    pub(crate) fn masked(&self) -> [Vec<f64>; 3] {
        self.velocity.clone().map(|mut c| {
            for (v, &f) in c.iter_mut().zip(&self.fluid) {
                if !f {
                    *v = 0.0;
                }
            }
            c
        })
    }
}

/// A prediction and its ground truth on the same grid and mask.
#[derive(Debug, Clone)]
pub struct Comparison {
    pred: Flow,
    truth: Flow,
}

impl Comparison {
    /// Checks both fields against each other and the mask.
    pub fn new(
        pred: ArrayView4<f32>,
        truth: ArrayView4<f32>,
        mask: ArrayView4<f32>,
    ) -> Result<Self> {
        let dims = velocity_dims("prediction", pred)?;
        if truth.shape() != pred.shape() {
            return Err(EvalError::Shape {
                name: "truth",
                expected: format!("the prediction's {:?}", pred.shape()),
                found: truth.shape().to_vec(),
            });
        }
        let fluid = read_mask(mask, dims)?;
        Ok(Self {
            pred: Flow::from_parts(dims, read_velocity("prediction", pred)?, fluid.clone()),
            truth: Flow::from_parts(dims, read_velocity("truth", truth)?, fluid),
        })
    }

    pub fn pred(&self) -> &Flow {
        &self.pred
    }

    pub fn truth(&self) -> &Flow {
        &self.truth
    }
}

/// Checks that a voxel size is usable as finite-difference spacing.
pub(crate) fn check_voxel(voxel: &VoxelSize) -> Result<()> {
    positive("voxel dx_m", voxel.dx_m)?;
    positive("voxel dy_m", voxel.dy_m)?;
    positive("voxel dz_m", voxel.dz_m)?;
    Ok(())
}

fn velocity_dims(name: &'static str, u: ArrayView4<f32>) -> Result<Dims> {
    let (slices, channels, height, width) = u.dim();
    if channels != 3 || slices == 0 || height == 0 || width == 0 {
        return Err(EvalError::Shape {
            name,
            expected: "(S, 3, H, W) with S, H, W ≥ 1".into(),
            found: u.shape().to_vec(),
        });
    }
    Ok(Dims {
        slices,
        height,
        width,
    })
}

fn read_velocity(name: &'static str, u: ArrayView4<f32>) -> Result<[Vec<f64>; 3]> {
    if let Some((index, &value)) = u.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(EvalError::NonFinite {
            name,
            index: [index.0, index.1, index.2, index.3],
            value,
        });
    }
    Ok([0, 1, 2].map(|c| {
        u.index_axis(Axis(1), c)
            .iter()
            .map(|&v| f64::from(v))
            .collect()
    }))
}

fn read_mask(mask: ArrayView4<f32>, dims: Dims) -> Result<Vec<bool>> {
    let expected = [dims.slices, 1, dims.height, dims.width];
    if mask.shape() != expected {
        return Err(EvalError::Shape {
            name: "mask",
            expected: format!("{expected:?} (S, 1, H, W) matching the velocity"),
            found: mask.shape().to_vec(),
        });
    }
    let mut fluid = Vec::with_capacity(dims.voxels());
    for (index, &value) in mask.indexed_iter() {
        let index = [index.0, index.1, index.2, index.3];
        if value == 1.0 {
            fluid.push(true);
        } else if value == 0.0 {
            fluid.push(false);
        } else if value.is_finite() {
            return Err(EvalError::NonBinaryMask { index, value });
        } else {
            return Err(EvalError::NonFinite {
                name: "mask",
                index,
                value,
            });
        }
    }
    if !fluid.contains(&true) {
        return Err(EvalError::NoFluid);
    }
    Ok(fluid)
}

#[cfg(test)]
mod tests {
    use ndarray::Array4;

    use super::*;

    fn ones(shape: [usize; 4]) -> Array4<f32> {
        Array4::ones(shape)
    }

    #[test]
    fn layout_is_slice_row_column() {
        let u = Array4::from_shape_fn([2, 3, 2, 3], |(s, c, y, x)| {
            (100 * c + 9 * s + 3 * y + x) as f32
        });
        let f = Flow::new(u.view(), ones([2, 1, 2, 3]).view()).unwrap();
        // Voxel (s=1, y=1, x=2) is flat index (1·2 + 1)·3 + 2 = 11.
        assert_eq!(f.at(11), [9.0 + 3.0 + 2.0, 114.0, 214.0]);
        assert_eq!(f.n_fluid(), 12);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let u = ones([2, 3, 4, 5]);
        let m = ones([2, 1, 4, 5]);
        let two_channels = ones([2, 2, 4, 5]);
        assert!(matches!(
            Flow::new(two_channels.view(), m.view()),
            Err(EvalError::Shape {
                name: "velocity",
                ..
            })
        ));
        assert!(matches!(
            Flow::new(u.view(), ones([2, 1, 5, 4]).view()),
            Err(EvalError::Shape { name: "mask", .. })
        ));
        assert!(matches!(
            Comparison::new(u.view(), ones([2, 3, 4, 4]).view(), m.view()),
            Err(EvalError::Shape { name: "truth", .. })
        ));
        let mut nan = u.clone();
        nan[[1, 2, 3, 4]] = f32::NAN;
        assert!(matches!(
            Comparison::new(u.view(), nan.view(), m.view()),
            Err(EvalError::NonFinite {
                name: "truth",
                index: [1, 2, 3, 4],
                ..
            })
        ));
        let mut half = m.clone();
        half[[0, 0, 1, 1]] = 0.5;
        assert!(matches!(
            Flow::new(u.view(), half.view()),
            Err(EvalError::NonBinaryMask {
                index: [0, 0, 1, 1],
                ..
            })
        ));
        let mut inf = m.clone();
        inf[[0, 0, 0, 0]] = f32::INFINITY;
        assert!(matches!(
            Flow::new(u.view(), inf.view()),
            Err(EvalError::NonFinite { name: "mask", .. })
        ));
        assert!(matches!(
            Flow::new(u.view(), Array4::zeros([2, 1, 4, 5]).view()),
            Err(EvalError::NoFluid)
        ));
        assert!(check_voxel(&VoxelSize::from_um(0.2, 5.0)).is_ok());
        assert!(check_voxel(&VoxelSize::from_um(0.2, 0.0)).is_err());
        assert!(check_voxel(&VoxelSize::from_um(f64::NAN, 5.0)).is_err());
    }
}
