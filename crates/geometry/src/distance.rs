//! Periodic Euclidean distance transforms and the signed-distance interpolation that
//! fills the 3D lattice between the slices of a user image stack.
//!
//! The exact transform is the separable lower-envelope algorithm of Felzenszwalb &
//! Huttenlocher, "Distance Transforms of Sampled Functions", Theory of Computing 8 (2012).
//! Periodicity is handled by running each 1D pass over three copies of the line.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

/// Squared distance transform of one line, f given per sample (0 at features, ∞ elsewhere).
fn edt_1d(f: &[f64], out: &mut [f64]) {
    let n = f.len();
    let mut v = vec![0usize; n];
    let mut z = vec![0.0f64; n + 1];
    let mut k = 0usize;
    let mut first = None;
    for (q, &fq) in f.iter().enumerate() {
        if fq.is_infinite() {
            continue;
        }
        match first {
            None => {
                first = Some(q);
                v[0] = q;
                z[0] = f64::NEG_INFINITY;
                z[1] = f64::INFINITY;
            }
            Some(_) => loop {
                let p = v[k];
                let s = ((fq + (q * q) as f64) - (f[p] + (p * p) as f64)) / (2.0 * (q - p) as f64);
                if s <= z[k] && k > 0 {
                    k -= 1;
                    continue;
                }
                if s <= z[k] {
                    // k == 0 and the new parabola dominates everywhere.
                    v[0] = q;
                    z[1] = f64::INFINITY;
                    break;
                }
                k += 1;
                v[k] = q;
                z[k] = s;
                z[k + 1] = f64::INFINITY;
                break;
            },
        }
    }
    if first.is_none() {
        out.fill(f64::INFINITY);
        return;
    }
    let mut k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let d = q as f64 - v[k] as f64;
        *o = d * d + f[v[k]];
    }
}

/// One periodic pass along the last axis of a row-major `(rows, n)` buffer.
fn periodic_pass(buf: &mut [f64], n: usize) {
    buf.par_chunks_mut(n).for_each(|row| {
        let tripled: Vec<f64> = row
            .iter()
            .chain(row.iter())
            .chain(row.iter())
            .copied()
            .collect();
        let mut out = vec![0.0; 3 * n];
        edt_1d(&tripled, &mut out);
        row.copy_from_slice(&out[n..2 * n]);
    });
}

/// Periodic Euclidean distance (in pixels) from every pixel to the nearest pixel where
/// `is_feature` holds; ∞ everywhere if there is none.
pub fn periodic_edt(plane: ArrayView2<u8>, is_feature: impl Fn(u8) -> bool) -> Array2<f64> {
    let (h, w) = plane.dim();
    let mut buf: Vec<f64> = plane
        .iter()
        .map(|&v| if is_feature(v) { 0.0 } else { f64::INFINITY })
        .collect();
    periodic_pass(&mut buf, w);
    let mut t = Array2::from_shape_vec((h, w), buf)
        .expect("shape from plane")
        .reversed_axes()
        .as_standard_layout()
        .into_owned();
    let slice = t.as_slice_mut().expect("standard layout");
    periodic_pass(slice, h);
    t.reversed_axes()
        .mapv(f64::sqrt)
        .as_standard_layout()
        .into_owned()
}

/// Signed distance in pixels: positive in fluid (distance to the nearest fibre pixel),
/// negative in fibre (minus the distance to the nearest fluid pixel). A plane without
/// fibre (or without fluid) gets ±(H + W), farther than any real distance, so that
/// interpolation stays finite.
pub fn signed_distance(plane: ArrayView2<u8>) -> Array2<f64> {
    let far = (plane.nrows() + plane.ncols()) as f64;
    let to_solid = periodic_edt(plane, |v| v == 0);
    let to_fluid = periodic_edt(plane, |v| v != 0);
    let mut out = to_solid;
    out.zip_mut_with(&to_fluid, |s, &f| *s = s.min(far) - f.min(far));
    out
}

/// Fills `planes` equally spaced lattice planes over the z period of a periodic stack of
/// `(S, H, W)` slices by linear interpolation of each slice's signed distance. Plane j sits
/// at z = j·S/planes in slice units; a fibre boundary that moves between two slices moves
/// smoothly through the planes between them.
pub fn interpolate_planes(stack: ArrayView3<u8>, planes: usize) -> Array3<u8> {
    let (s, h, w) = stack.dim();
    let sdf: Vec<Array2<f64>> = stack
        .axis_iter(Axis(0))
        .into_par_iter()
        .map(signed_distance)
        .collect();
    let mut out = Array3::<u8>::zeros((planes, h, w));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(j, mut plane)| {
            let zs = j as f64 * s as f64 / planes as f64;
            let k = (zs.floor() as usize).min(s - 1);
            let t = zs - k as f64;
            let k1 = (k + 1) % s;
            let nearest = if t < 0.5 { k } else { k1 };
            for ((y, x), v) in plane.indexed_iter_mut() {
                let d = (1.0 - t) * sdf[k][[y, x]] + t * sdf[k1][[y, x]];
                *v = u8::from(d > 0.0 || (d == 0.0 && stack[[nearest, y, x]] != 0));
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn brute(plane: ArrayView2<u8>) -> Array2<f64> {
        let (h, w) = plane.dim();
        Array2::from_shape_fn((h, w), |(y, x)| {
            let mut best = f64::INFINITY;
            for ((yy, xx), &v) in plane.indexed_iter() {
                if v == 0 {
                    let dy = (y as f64 - yy as f64).abs();
                    let dx = (x as f64 - xx as f64).abs();
                    let dy = dy.min(h as f64 - dy);
                    let dx = dx.min(w as f64 - dx);
                    best = best.min(dx.hypot(dy));
                }
            }
            best
        })
    }

    #[test]
    fn matches_brute_force_periodic_distance() {
        let mut state = 12345u64;
        let plane = Array2::from_shape_fn((13, 17), |_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            u8::from(!(state >> 33).is_multiple_of(7))
        });
        let fast = periodic_edt(plane.view(), |v| v == 0);
        let slow = brute(plane.view());
        for (a, b) in fast.iter().zip(slow.iter()) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn no_feature_gives_infinity() {
        let plane = Array2::<u8>::ones((4, 4));
        assert!(
            periodic_edt(plane.view(), |v| v == 0)
                .iter()
                .all(|d| d.is_infinite())
        );
    }

    #[test]
    fn fibre_free_slice_interpolates_without_nan() {
        let mut stack = Array3::<u8>::ones((2, 8, 8));
        stack.slice_mut(ndarray::s![0, 2..6, 2..6]).fill(0);
        let planes = interpolate_planes(stack.view(), 8);
        assert_eq!(planes.index_axis(Axis(0), 4), stack.index_axis(Axis(0), 1));
        assert_eq!(planes.index_axis(Axis(0), 0), stack.index_axis(Axis(0), 0));
        // Towards the empty slice the fibre only shrinks.
        let solid = |k: usize| {
            planes
                .index_axis(Axis(0), k)
                .iter()
                .filter(|&&v| v == 0)
                .count()
        };
        assert!((1..4).all(|k| solid(k) <= solid(k - 1)));
    }

    #[test]
    fn interpolation_reproduces_slices_and_moves_a_disk_halfway() {
        // A square fibre that shifts by 4 px between two slices.
        let mut stack = Array3::<u8>::ones((2, 16, 32));
        stack.slice_mut(ndarray::s![0, 4..12, 4..12]).fill(0);
        stack.slice_mut(ndarray::s![1, 4..12, 8..16]).fill(0);
        let planes = interpolate_planes(stack.view(), 4);
        assert_eq!(planes.index_axis(Axis(0), 0), stack.index_axis(Axis(0), 0));
        assert_eq!(planes.index_axis(Axis(0), 2), stack.index_axis(Axis(0), 1));
        // Halfway between, the fibre spans columns 6..14.
        let mid = planes.index_axis(Axis(0), 1);
        let cols: Vec<usize> = (0..32).filter(|&x| mid[[8, x]] == 0).collect();
        assert_eq!(cols, (6..14).collect::<Vec<_>>());
    }
}
