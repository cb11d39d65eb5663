//! Half-way bounce-back in the pull step (Ladd 1994): where the upwind neighbour of a fluid
//! cell in direction q is fibre, the cell pulls its own population of the opposite
//! direction instead. The links of `WORD` consecutive cells of one direction are one
//! masked vector copy from the cells' own opposite-direction run: a load and a masked
//! store per word, where a list of single links cost a scalar load and store per link
//! (≈ 1.8 links per fluid cell at 64²). Only words with links are listed, so the cost
//! follows the wall area: sparse walls (large fibres) list few words.

/// Cells per link word: one AVX-512 vector of f32.
pub const WORD: usize = 16;

/// Bounce-back links of `WORD` consecutive cells: for each set bit i of `mask`,
/// `buf[dst + i] = f[src + i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Links {
    /// Index of the word's first cell in the gather buffer.
    pub dst: u32,
    /// Index of the same cell's opposite-direction population in the lattice.
    pub src: u32,
    pub mask: u16,
}

/// Applies every word of `links`; each word's `WORD` cells must lie inside `buf` and `f`.
pub fn apply(buf: &mut [f32], f: &[f32], links: &[Links]) {
    if links.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { x86::avx512(buf, f, links) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { x86::avx2(buf, f, links) };
        }
    }
    scalar(buf, f, links);
}

/// One set bit at a time, for machines without the vector paths.
fn scalar(buf: &mut [f32], f: &[f32], links: &[Links]) {
    for l in links {
        let (d, s) = (word_mut(buf, l.dst), word(f, l.src));
        let mut bits = l.mask;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            d[i] = s[i];
            bits &= bits - 1;
        }
    }
}

/// The `WORD` cells from `at` (bounds-checked, so the vector paths stay in bounds).
fn word(v: &[f32], at: u32) -> &[f32] {
    &v[at as usize..][..WORD]
}

fn word_mut(v: &mut [f32], at: u32) -> &mut [f32] {
    &mut v[at as usize..][..WORD]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Links, word, word_mut};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(buf: &mut [f32], f: &[f32], links: &[Links]) {
        for l in links {
            let (d, s) = (word_mut(buf, l.dst), word(f, l.src));
            // SAFETY: both pointers address WORD = 16 in-bounds floats.
            unsafe { _mm512_mask_storeu_ps(d.as_mut_ptr(), l.mask, _mm512_loadu_ps(s.as_ptr())) };
        }
    }

    /// Two 8-lane halves, with the mask bits spread to lanes, each blended into the buffer's
    /// own values and stored whole. AVX2's masked store (`vmaskmovps`) is microcoded on AMD
    /// cores, where it took 15 % of a 64² solve; LLVM turns a blend of the destination's
    /// own load followed by a store to it back into that masked store, hence the store in
    /// assembly. The buffer is the calling thread's own, so rewriting its unlinked lanes
    /// with their own values is safe.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(buf: &mut [f32], f: &[f32], links: &[Links]) {
        let lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        for l in links {
            let (d, s) = (word_mut(buf, l.dst), word(f, l.src));
            for half in 0..2 {
                let bits = _mm256_set1_epi32(i32::from((l.mask >> (8 * half)) & 0xff));
                let select = _mm256_cmpeq_epi32(_mm256_and_si256(bits, lane_bits), lane_bits);
                let (d, s) = (d[8 * half..].as_mut_ptr(), s[8 * half..].as_ptr());
                // SAFETY: both pointers address 8 of the word's 16 in-bounds floats, and the
                // store writes exactly those 32 bytes of `buf`.
                unsafe {
                    let kept = _mm256_loadu_ps(d);
                    let pulled = _mm256_loadu_ps(s);
                    let v = _mm256_blendv_ps(kept, pulled, _mm256_castsi256_ps(select));
                    std::arch::asm!(
                        "vmovups ymmword ptr [{d}], {v}",
                        d = in(reg) d,
                        v = in(ymm_reg) v,
                        options(nostack, preserves_flags)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words at random places of a buffer and a lattice, the first and last possible
    /// included, with empty, full and random masks.
    fn case() -> (Vec<f32>, Vec<f32>, Vec<Links>) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (nb, nf) = (1000usize, 3001usize);
        let buf = (0..nb).map(|i| -(i as f32) - 1.0).collect();
        let f = (0..nf).map(|i| i as f32 + 0.5).collect();
        let mut links = vec![
            Links {
                dst: 0,
                src: (nf - WORD) as u32,
                mask: u16::MAX,
            },
            Links {
                dst: (nb - WORD) as u32,
                src: 0,
                mask: 0b1000_0000_0000_0001,
            },
            Links {
                dst: 40,
                src: 7,
                mask: 0,
            },
        ];
        for _ in 0..50 {
            let r = next();
            links.push(Links {
                dst: (r % (nb - WORD) as u64) as u32,
                src: ((r >> 20) % (nf - WORD) as u64) as u32,
                mask: (r >> 40) as u16,
            });
        }
        (buf, f, links)
    }

    /// What `apply` must do, one link at a time in list order.
    fn expected(buf: &[f32], f: &[f32], links: &[Links]) -> Vec<f32> {
        let mut out = buf.to_vec();
        for l in links {
            for i in (0..WORD).filter(|i| l.mask >> i & 1 == 1) {
                out[l.dst as usize + i] = f[l.src as usize + i];
            }
        }
        out
    }

    #[test]
    fn every_path_this_cpu_has_copies_exactly_the_linked_cells() {
        type Path = fn(&mut [f32], &[f32], &[Links]);
        let mut paths: Vec<(&str, Path)> = vec![("dispatch", apply), ("scalar", scalar)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the feature.
                paths.push(("avx512", |b, f, l| unsafe { x86::avx512(b, f, l) }));
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has the feature.
                paths.push(("avx2", |b, f, l| unsafe { x86::avx2(b, f, l) }));
            }
        }
        let (buf, f, links) = case();
        let want = expected(&buf, &f, &links);
        for (name, path) in paths {
            let mut got = buf.clone();
            path(&mut got, &f, &links);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_word_past_the_end_is_refused() {
        let (mut buf, f) = (vec![0.0; 20], vec![1.0; 20]);
        let past = Links {
            dst: 5,
            src: 0,
            mask: 1,
        };
        let r = std::panic::catch_unwind(move || apply(&mut buf, &f, &[past]));
        assert!(r.is_err());
    }
}
