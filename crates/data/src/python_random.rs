//! CPython's `random.Random` for the few calls the reference split makes, so fiberflow can
//! reproduce `idx = list(range(N)); random.Random(2024).shuffle(idx)` bit for bit.
//!
//! CPython seeds MT19937 with `init_by_array` over the 32-bit little-endian words of
//! `abs(seed)` (at least one word), which is `rand_mt::Mt::new_with_key`. On top of the
//! generator: `getrandbits(k)` takes `k` bits from the top of successive 32-bit outputs,
//! least significant word first; `_randbelow(n)` draws `n.bit_length()` bits until the
//! value is below `n`; `shuffle` is Fisher–Yates from the end. Stable since CPython 3.2.

use rand_mt::Mt;

/// A `random.Random(seed)` instance (non-negative integer seeds).
pub struct PythonRandom {
    mt: Mt,
}

impl PythonRandom {
    /// `random.Random(seed)`.
    pub fn new(seed: u64) -> Self {
        // The words of abs(seed), least significant first; 0 still gives one word.
        let (low, high) = (seed as u32, (seed >> 32) as u32);
        let key: &[u32] = if high == 0 { &[low] } else { &[low, high] };
        Self {
            mt: Mt::new_with_key(key.iter().copied()),
        }
    }

    /// `getrandbits(k)` for `k <= 64`.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        let k = k.min(64);
        if k <= 32 {
            // `>> 32` of a u32 is an overflow, so do it in u64.
            return u64::from(self.mt.next_u32()) >> (32 - k);
        }
        let low = u64::from(self.mt.next_u32());
        let high = u64::from(self.mt.next_u32()) >> (64 - k);
        low | (high << 32)
    }

    /// `_randbelow(n)`: uniform in `0..n` by rejection; 0 for `n == 0`.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = u64::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `shuffle(x)` in place.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shuffled(n: usize, seed: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        PythonRandom::new(seed).shuffle(&mut idx);
        idx
    }

    #[test]
    fn raw_bits_match_cpython() {
        // python3 -c 'import random; r=random.Random(2024);
        //   print([r.getrandbits(32) for _ in range(3)], [r.getrandbits(5) for _ in range(3)],
        //         r.getrandbits(40), r.getrandbits(64))'
        let mut r = PythonRandom::new(2024);
        let words: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(words, [2019024262, 780421486, 3127871324]);
        let small: Vec<u64> = (0..3).map(|_| r.getrandbits(5)).collect();
        assert_eq!(small, [18, 9, 6]);
        assert_eq!(r.getrandbits(40), 798379866790);
        assert_eq!(r.getrandbits(64), 13968189952886542551);
        // python3 -c 'import random; r=random.Random(2**40+5); print([r.getrandbits(32) for _ in range(2)])'
        let mut r = PythonRandom::new((1 << 40) + 5);
        assert_eq!(
            [r.getrandbits(32), r.getrandbits(32)],
            [2166296868, 2220160828]
        );
        // python3 -c 'import random; r=random.Random(0); print([r.getrandbits(32) for _ in range(2)])'
        let mut r = PythonRandom::new(0);
        assert_eq!(
            [r.getrandbits(32), r.getrandbits(32)],
            [3626764237, 1654615998]
        );
    }

    #[test]
    fn randbelow_matches_cpython() {
        // python3 -c 'import random; r=random.Random(2024); print([r._randbelow(n) for n in (1,2,3,100,2**33+1)])'
        let mut r = PythonRandom::new(2024);
        let got: Vec<u64> = [1, 2, 3, 100, (1 << 33) + 1]
            .iter()
            .map(|&n| r.randbelow(n))
            .collect();
        assert_eq!(got, [0, 0, 2, 74, 1304602151]);
    }

    #[test]
    fn shuffle_matches_cpython() {
        // python3 -c 'import random; idx=list(range(N)); random.Random(SEED).shuffle(idx); print(idx)'
        assert_eq!(
            &shuffled(100, 2024)[..11],
            [3, 64, 99, 34, 62, 30, 73, 95, 49, 0, 48]
        );
        assert_eq!(shuffled(10, 2024), [6, 0, 9, 8, 3, 5, 1, 4, 2, 7]);
        assert_eq!(shuffled(7, 0), [4, 2, 1, 0, 5, 3, 6]);
        assert_eq!(shuffled(3, 1), [1, 2, 0]);
        let s = shuffled(20, 42);
        assert_eq!(&s[..12], [19, 5, 14, 4, 9, 13, 15, 18, 6, 12, 17, 10]);
        assert_eq!(&s[15..], [16, 7, 8, 0, 3]);
        let s = shuffled(37, (1 << 40) + 5);
        assert_eq!(&s[..12], [9, 11, 19, 24, 8, 31, 13, 16, 30, 23, 18, 5]);
        assert_eq!(&s[32..], [2, 1, 17, 33, 32]);
        let s = shuffled(1000, 2024);
        assert_eq!(
            &s[..12],
            [525, 284, 771, 351, 246, 797, 94, 116, 663, 800, 153, 615]
        );
        assert_eq!(&s[995..], [311, 592, 745, 186, 481]);
    }
}
