//! Whether the fluid connects across the periodic domain along x, the flow direction.
//!
//! A flood fill records each cell's unwrapped x; reaching a cell again with a different
//! unwrapped x means the fluid winds around the periodic x direction, i.e. it percolates.
//! Face neighbours only: pixels that touch at a corner block flow.

use ndarray::ArrayView3;
use std::collections::VecDeque;

/// True if the fluid (value ≠ 0) of a periodic `(S, H, W)` volume percolates along x (W).
pub fn percolates_x(mask: ArrayView3<u8>) -> bool {
    let (s, h, w) = mask.dim();
    let mut seen: Vec<Option<i64>> = vec![None; s * h * w];
    let idx = |z: usize, y: usize, x: usize| (z * h + y) * w + x;
    let mut queue = VecDeque::new();
    for z in 0..s {
        for y in 0..h {
            if mask[[z, y, 0]] == 0 || seen[idx(z, y, 0)].is_some() {
                continue;
            }
            seen[idx(z, y, 0)] = Some(0);
            queue.push_back((z, y, 0usize, 0i64));
            while let Some((z, y, x, ux)) = queue.pop_front() {
                let steps: [(usize, usize, usize, i64); 6] = [
                    (z, y, (x + 1) % w, ux + 1),
                    (z, y, (x + w - 1) % w, ux - 1),
                    (z, (y + 1) % h, x, ux),
                    (z, (y + h - 1) % h, x, ux),
                    ((z + 1) % s, y, x, ux),
                    ((z + s - 1) % s, y, x, ux),
                ];
                for (nz, ny, nx, nux) in steps {
                    if mask[[nz, ny, nx]] == 0 {
                        continue;
                    }
                    match seen[idx(nz, ny, nx)] {
                        Some(prev) if prev != nux => return true,
                        Some(_) => {}
                        None => {
                            seen[idx(nz, ny, nx)] = Some(nux);
                            queue.push_back((nz, ny, nx, nux));
                        }
                    }
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn open_channel_percolates_blocked_one_does_not() {
        let mut m = Array3::<u8>::zeros((1, 5, 8));
        m.slice_mut(ndarray::s![0, 2, ..]).fill(1);
        assert!(percolates_x(m.view()));
        m[[0, 2, 4]] = 0;
        assert!(!percolates_x(m.view()));
    }

    #[test]
    fn channel_along_y_only_does_not_percolate_along_x() {
        let mut m = Array3::<u8>::zeros((1, 6, 6));
        m.slice_mut(ndarray::s![0, .., 3]).fill(1);
        assert!(!percolates_x(m.view()));
    }

    #[test]
    fn diagonal_staircase_blocks_but_step_through_z_percolates() {
        // Fluid touches only at corners in-plane: blocked.
        let mut m = Array3::<u8>::zeros((2, 4, 4));
        for i in 0..4 {
            m[[0, i, i]] = 1;
        }
        assert!(!percolates_x(m.view()));
        // Path that leaves the plane and comes back through z.
        let mut m = Array3::<u8>::zeros((2, 3, 4));
        m[[0, 1, 0]] = 1;
        m[[0, 1, 1]] = 1;
        m[[1, 1, 1]] = 1;
        m[[1, 1, 2]] = 1;
        m[[1, 1, 3]] = 1;
        m[[0, 1, 3]] = 1;
        assert!(percolates_x(m.view()));
        // Same path with the z link cut.
        m[[1, 1, 1]] = 0;
        assert!(!percolates_x(m.view()));
    }
}
