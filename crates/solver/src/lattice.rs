//! Discrete velocity sets. Direction 0 is the rest population; directions 2k−1 and 2k
//! are opposite, which the TRT collision and bounce-back rely on.

/// A velocity set with `Q` directions in (x, y, z) order; 2D sets have c_z = 0.
pub struct VelocitySet<const Q: usize> {
    pub c: [[i32; 3]; Q],
    pub w: [f32; Q],
}

impl<const Q: usize> VelocitySet<Q> {
    /// Index of the direction opposite to `q`.
    pub const fn opposite(q: usize) -> usize {
        if q == 0 {
            0
        } else if q % 2 == 1 {
            q + 1
        } else {
            q - 1
        }
    }
}

const A: f32 = 1.0 / 9.0;
const D: f32 = 1.0 / 36.0;

/// D2Q9 (Qian, d'Humières & Lallemand 1992).
pub const D2Q9: VelocitySet<9> = VelocitySet {
    c: [
        [0, 0, 0],
        [1, 0, 0],
        [-1, 0, 0],
        [0, 1, 0],
        [0, -1, 0],
        [1, 1, 0],
        [-1, -1, 0],
        [1, -1, 0],
        [-1, 1, 0],
    ],
    w: [4.0 / 9.0, A, A, A, A, D, D, D, D],
};

const S: f32 = 1.0 / 18.0;

/// D3Q19 (Qian, d'Humières & Lallemand 1992).
pub const D3Q19: VelocitySet<19> = VelocitySet {
    c: [
        [0, 0, 0],
        [1, 0, 0],
        [-1, 0, 0],
        [0, 1, 0],
        [0, -1, 0],
        [0, 0, 1],
        [0, 0, -1],
        [1, 1, 0],
        [-1, -1, 0],
        [1, -1, 0],
        [-1, 1, 0],
        [1, 0, 1],
        [-1, 0, -1],
        [1, 0, -1],
        [-1, 0, 1],
        [0, 1, 1],
        [0, -1, -1],
        [0, 1, -1],
        [0, -1, 1],
    ],
    w: [
        1.0 / 3.0,
        S,
        S,
        S,
        S,
        S,
        S,
        D,
        D,
        D,
        D,
        D,
        D,
        D,
        D,
        D,
        D,
        D,
        D,
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Lattice isotropy up to second order: Σw = 1, Σw c = 0, Σw cα cβ = δαβ/3, and opposites.
    fn check<const Q: usize>(set: &VelocitySet<Q>, dims: usize) {
        let sum: f32 = set.w.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        for a in 0..3 {
            let m1: f32 = (0..Q).map(|q| set.w[q] * set.c[q][a] as f32).sum();
            assert!(m1.abs() < 1e-7);
            for b in 0..3 {
                let m2: f32 = (0..Q)
                    .map(|q| set.w[q] * (set.c[q][a] * set.c[q][b]) as f32)
                    .sum();
                let expect = if a == b && a < dims { 1.0 / 3.0 } else { 0.0 };
                assert!((m2 - expect).abs() < 1e-6, "{a}{b}: {m2}");
            }
        }
        for q in 0..Q {
            let o = VelocitySet::<Q>::opposite(q);
            for a in 0..3 {
                assert_eq!(set.c[q][a], -set.c[o][a]);
            }
            assert_eq!(set.w[q], set.w[o]);
        }
    }

    #[test]
    fn d2q9_is_isotropic() {
        check(&D2Q9, 2);
    }

    #[test]
    fn d3q19_is_isotropic() {
        check(&D3Q19, 3);
    }
}
