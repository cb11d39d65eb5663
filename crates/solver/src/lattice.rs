//! Discrete velocity sets. Direction 0 is the rest population; directions 2k−1 and 2k
//! are opposite, which the TRT collision and bounce-back rely on.

/// A velocity set with `Q` directions in (x, y, z) order; 2D sets have c_z = 0. The
/// directions and weights are associated constants so the kernels unroll over them with
/// every coefficient known at compile time.
pub trait VelocitySet<const Q: usize>: Sync {
    const NAME: &'static str;
    const C: [[i32; 3]; Q];
    const W: [f32; Q];
    /// `C` as floats, so kernels never convert at run time.
    const CF: [[f32; 3]; Q] = to_f32(Self::C);
}

const fn to_f32<const Q: usize>(c: [[i32; 3]; Q]) -> [[f32; 3]; Q] {
    let mut out = [[0.0; 3]; Q];
    let mut q = 0;
    while q < Q {
        let mut a = 0;
        while a < 3 {
            out[q][a] = c[q][a] as f32;
            a += 1;
        }
        q += 1;
    }
    out
}

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

const A: f32 = 1.0 / 9.0;
const D: f32 = 1.0 / 36.0;

/// D2Q9 (Qian, d'Humières & Lallemand 1992).
pub struct D2Q9;

impl VelocitySet<9> for D2Q9 {
    const NAME: &'static str = "D2Q9";
    const C: [[i32; 3]; 9] = [
        [0, 0, 0],
        [1, 0, 0],
        [-1, 0, 0],
        [0, 1, 0],
        [0, -1, 0],
        [1, 1, 0],
        [-1, -1, 0],
        [1, -1, 0],
        [-1, 1, 0],
    ];
    const W: [f32; 9] = [4.0 / 9.0, A, A, A, A, D, D, D, D];
}

const S: f32 = 1.0 / 18.0;

/// D3Q19 (Qian, d'Humières & Lallemand 1992).
pub struct D3Q19;

impl VelocitySet<19> for D3Q19 {
    const NAME: &'static str = "D3Q19";
    const C: [[i32; 3]; 19] = [
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
    ];
    const W: [f32; 19] = [
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
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lattice isotropy up to second order: Σw = 1, Σw c = 0, Σw cα cβ = δαβ/3, and opposites.
    fn check<const Q: usize, V: VelocitySet<Q>>(dims: usize) {
        let sum: f32 = V::W.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        for a in 0..3 {
            let m1: f32 = (0..Q).map(|q| V::W[q] * V::C[q][a] as f32).sum();
            assert!(m1.abs() < 1e-7);
            for b in 0..3 {
                let m2: f32 = (0..Q)
                    .map(|q| V::W[q] * (V::C[q][a] * V::C[q][b]) as f32)
                    .sum();
                let expect = if a == b && a < dims { 1.0 / 3.0 } else { 0.0 };
                assert!((m2 - expect).abs() < 1e-6, "{a}{b}: {m2}");
            }
        }
        for q in 0..Q {
            let o = opposite(q);
            for a in 0..3 {
                assert_eq!(V::C[q][a], -V::C[o][a]);
                assert_eq!(V::CF[q][a], V::C[q][a] as f32);
            }
            assert_eq!(V::W[q], V::W[o]);
        }
    }

    #[test]
    fn d2q9_is_isotropic() {
        check::<9, D2Q9>(2);
    }

    #[test]
    fn d3q19_is_isotropic() {
        check::<19, D3Q19>(3);
    }
}
