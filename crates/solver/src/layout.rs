//! The memory order a 3D lattice is stepped in: fibre axis (z) fastest.
//!
//! The kernel steps runs of consecutive cells and skips long fibre runs (see
//! `kernel::fluid_runs`). In the natural (z, y, x) order a run crosses a fibre in a few
//! dozen cells: at 256², with fibre runs of 32 cells or more skipped, 74 % of the cells are
//! still stepped, in runs of 92 cells on average, and shorter skipped runs cost more in
//! per-run overhead than they save. The fibres run along z, nearly straight, so in
//! (y, x, z) order the runs follow them: whole fibre columns are skipped and the fluid runs
//! are hundreds of cells long. D3Q19 is symmetric under axis permutations, so the lattice
//! solves the same flow with the body force along its middle axis, the geometry's x.

use crate::coarse::Start;
use crate::kernel::Grid;
use ndarray::ArrayView3;

/// The lattice axis the geometry's x becomes, i.e. the axis the flow is driven along.
pub const FLOW_AXIS: usize = 1;

/// A `(z, y, x)` mask seen in the lattice's memory order, `(y, x, z)`: the same permutation
/// as [`FibreFast`], for callers that hold the mask as an array.
pub fn lattice_mask(mask: ArrayView3<u8>) -> ArrayView3<u8> {
    mask.permuted_axes([1, 2, 0])
}

/// The permutation between a geometry grid (z, y, x) and its lattice (y, x, z).
#[derive(Debug, Clone, Copy)]
pub struct FibreFast {
    geometry: Grid,
}

impl FibreFast {
    pub fn new(geometry: Grid) -> Self {
        Self { geometry }
    }

    /// The lattice extent: x' = z, y' = x, z' = y.
    pub fn lattice(self) -> Grid {
        let g = self.geometry;
        Grid {
            nx: g.nz,
            ny: g.nx,
            nz: g.ny,
        }
    }

    /// Lattice cell of geometry cell (z, y, x), visited in geometry order.
    fn lattice_cells(self) -> impl Iterator<Item = usize> {
        let Grid { nx, ny, nz } = self.geometry;
        (0..nz).flat_map(move |z| {
            (0..ny).flat_map(move |y| (0..nx).map(move |x| (y * nx + x) * nz + z))
        })
    }

    /// A per-cell field in geometry order, reordered for the lattice.
    pub fn lattice_order<T: Copy + Default>(self, field: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); field.len()];
        for (&v, c) in field.iter().zip(self.lattice_cells()) {
            out[c] = v;
        }
        out
    }

    /// A per-cell lattice field back in geometry order.
    pub fn geometry_order<T: Copy>(self, field: &[T]) -> Vec<T> {
        self.lattice_cells().map(|c| field[c]).collect()
    }

    /// Geometry vector (vx, vy, vz) in lattice components (vz, vx, vy).
    pub fn vector_to_lattice<T: Copy>([x, y, z]: [T; 3]) -> [T; 3] {
        [z, x, y]
    }

    /// Lattice vector back in geometry components.
    pub fn vector_to_geometry<T: Copy>([a, b, c]: [T; 3]) -> [T; 3] {
        [b, c, a]
    }

    /// A start state reordered for the lattice.
    pub fn start_in_lattice_order(self, start: &Start) -> Start {
        let velocity: Vec<[f32; 3]> = start
            .velocity
            .iter()
            .map(|&v| Self::vector_to_lattice(v))
            .collect();
        Start {
            velocity: self.lattice_order(&velocity),
            pressure: self.lattice_order(&start.pressure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_components_round_trip_to_the_hand_computed_places() {
        let geometry = Grid {
            nx: 4,
            ny: 3,
            nz: 2,
        };
        let t = FibreFast::new(geometry);
        assert_eq!(
            t.lattice(),
            Grid {
                nx: 2,
                ny: 4,
                nz: 3
            }
        );
        let field: Vec<usize> = (0..24).collect();
        let lattice = t.lattice_order(&field);
        // Lattice cell (z', y', x'): nz' = 3 planes of ny' = 4 rows of nx' = 2.
        let at = |z: usize, y: usize, x: usize| (z * 4 + y) * 2 + x;
        // Geometry cell (z 1, y 2, x 3) = 12 + 8 + 3 = 23 sits at lattice (z' 2, y' 3, x' 1).
        assert_eq!(lattice[at(2, 3, 1)], 23);
        // Geometry cell (z 1, y 0, x 1) = 13 sits at lattice (z' 0, y' 1, x' 1).
        assert_eq!(lattice[at(0, 1, 1)], 13);
        assert_eq!(t.geometry_order(&lattice), field);
        // The array view puts the same values in the same order.
        let mask =
            ndarray::Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 12 + y * 4 + x) as u8);
        let viewed: Vec<u8> = lattice_mask(mask.view()).iter().copied().collect();
        let expected: Vec<u8> = lattice.iter().map(|&v| v as u8).collect();
        assert_eq!(viewed, expected);
        let v = [1.0, 2.0, 3.0];
        let lv = FibreFast::vector_to_lattice(v);
        assert_eq!(lv[FLOW_AXIS], 1.0, "geometry x is the lattice's flow axis");
        assert_eq!(FibreFast::vector_to_geometry(lv), v);
    }
}
