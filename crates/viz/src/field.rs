//! Shape, finiteness and mask checks for the `(S, C, H, W)` arrays of the shared layout
//! (`fiberflow_geometry::layout`), and the velocity magnitude every output shows.

use fiberflow_geometry::layout::VoxelSize;
use ndarray::{Array4, ArrayView4, Axis, Zip};

use crate::error::{Result, VizError};

/// The `(S, H, W)` grid a set of arrays lives on: slices along z, rows along y, columns
/// along x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grid {
    pub slices: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Grid {
    /// Points in the grid.
    pub fn points(&self) -> usize {
        self.slices * self.rows * self.cols
    }
}

/// Checks that `a` is `(S, channels, H, W)` with no empty axis and, when `grid` is given,
/// on that grid; returns its grid.
pub(crate) fn check_shape(
    name: &str,
    a: &ArrayView4<f32>,
    channels: usize,
    grid: Option<Grid>,
) -> Result<Grid> {
    let (slices, c, rows, cols) = a.dim();
    let found = Grid { slices, rows, cols };
    let fits = c == channels && found.points() > 0 && grid.is_none_or(|g| g == found);
    if !fits {
        let expected = match grid {
            Some(g) => format!("({}, {channels}, {}, {})", g.slices, g.rows, g.cols),
            None => format!("(S, {channels}, H, W) with S, H, W > 0"),
        };
        return Err(VizError::Shape {
            name: name.to_string(),
            expected,
            found: a.shape().to_vec(),
        });
    }
    Ok(found)
}

/// Errors unless dx, dy and dz are finite and positive (metres).
pub(crate) fn check_voxel(voxel: &VoxelSize) -> Result<()> {
    let spacing = voxel.as_array();
    if spacing.iter().all(|d| d.is_finite() && *d > 0.0) {
        Ok(())
    } else {
        Err(VizError::invalid(
            "voxel size",
            format!("dx, dy, dz must be finite and positive metres, got {spacing:?}"),
        ))
    }
}

/// Errors on the first NaN or ±Inf of `a`, naming its `(s, c, i, j)` index.
pub(crate) fn check_finite(name: &str, a: &ArrayView4<f32>) -> Result<()> {
    match a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        None => Ok(()),
        Some(((s, c, i, j), &v)) => Err(VizError::NonFinite {
            name: name.to_string(),
            index: vec![s, c, i, j],
            value: f64::from(v),
        }),
    }
}

/// Errors unless every value of the mask `a` is exactly 0 (fibre) or 1 (fluid).
pub(crate) fn check_mask(name: &str, a: &ArrayView4<f32>) -> Result<()> {
    match a.indexed_iter().find(|(_, v)| **v != 0.0 && **v != 1.0) {
        None => Ok(()),
        Some(((s, c, i, j), v)) => Err(VizError::invalid(
            name,
            format!("a mask holds only 0 (fibre) and 1 (fluid), found {v} at [{s}, {c}, {i}, {j}]"),
        )),
    }
}

/// Velocity magnitude `|U| = sqrt(vx² + vy² + vz²)` of an `(S, 3, H, W)` field, as
/// `(S, 1, H, W)` in the field's unit; NaN and Inf propagate.
pub fn magnitude(velocity: ArrayView4<f32>) -> Result<Array4<f32>> {
    let grid = check_shape("velocity", &velocity, 3, None)?;
    let mut out = Array4::zeros((grid.slices, 1, grid.rows, grid.cols));
    Zip::from(out.index_axis_mut(Axis(1), 0))
        .and(velocity.index_axis(Axis(1), 0))
        .and(velocity.index_axis(Axis(1), 1))
        .and(velocity.index_axis(Axis(1), 2))
        .for_each(|m, &x, &y, &z| *m = (x * x + y * y + z * z).sqrt());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn magnitude_of_a_3_4_12_vector_is_13() {
        let mut v = Array4::<f32>::zeros((1, 3, 1, 2));
        v[[0, 0, 0, 1]] = 3.0;
        v[[0, 1, 0, 1]] = -4.0;
        v[[0, 2, 0, 1]] = 12.0;
        let m = magnitude(v.view()).unwrap();
        assert_eq!(m.shape(), &[1, 1, 1, 2]);
        assert_eq!(m[[0, 0, 0, 0]], 0.0);
        assert_eq!(m[[0, 0, 0, 1]], 13.0);
    }

    #[test]
    fn wrong_channel_count_and_grid_are_shape_errors() {
        let a = Array4::<f32>::zeros((2, 2, 3, 4));
        let err = check_shape("U_pred", &a.view(), 3, None).unwrap_err();
        assert!(err.to_string().contains("U_pred"), "{err}");
        let grid = Grid {
            slices: 2,
            rows: 4,
            cols: 3,
        };
        let b = Array4::<f32>::zeros((2, 3, 3, 4));
        assert!(check_shape("b", &b.view(), 3, Some(grid)).is_err());
        assert!(check_shape("empty", &Array4::<f32>::zeros((0, 3, 3, 4)).view(), 3, None).is_err());
        assert!(magnitude(a.view()).is_err());
    }

    #[test]
    fn first_non_finite_value_is_located() {
        let mut a = Array4::<f32>::zeros((2, 1, 3, 4));
        a[[1, 0, 2, 3]] = f32::INFINITY;
        a[[1, 0, 1, 0]] = f32::NAN;
        match check_finite("U_true", &a.view()).unwrap_err() {
            VizError::NonFinite { index, .. } => assert_eq!(index, vec![1, 0, 1, 0]),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn masks_hold_only_zero_and_one() {
        let mut a = Array4::<f32>::ones((1, 1, 2, 2));
        a[[0, 0, 0, 0]] = 0.0;
        check_mask("mask", &a.view()).unwrap();
        a[[0, 0, 1, 1]] = 0.5;
        assert!(check_mask("mask", &a.view()).is_err());
    }
}
