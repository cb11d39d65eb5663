//! Coarse-grid correction of the slow modes during a solve: a two-grid cycle (Brandt
//! 1977, "Multi-level adaptive solutions to boundary-value problems"; for the steady
//! lattice Boltzmann equation, Mavriplis 2006, Computers & Fluids 35) with the lattice
//! Boltzmann step as smoother.
//!
//! Why: after the first few hundred steps the error is smooth, pressure spreading through
//! the medium, and it decays at a rate set by the longest axis (a factor of about 4 per
//! 300 steps at 128²). On a lattice coarsened 2× the same flow settles in half the steps,
//! each an eighth as dear.
//!
//! The collision is linear (Stokes equilibrium), so a solve iterates f ← A f + b towards
//! f* = A f* + b. Every `coarse_correction_every` steps, from a state f:
//! 1. two fine steps give g = A(A f + b) + b; d = R(g − f), with R the mean over each coarse
//!    cell's fine fluid cells (two steps, because A has an undamped period-2 mode that a
//!    one-step difference would hold at full size);
//! 2. the coarse lattice, at the same sound speed and half the viscosity in its own units
//!    (cells and steps twice as long, about twice on an odd axis, so one coarse step
//!    stands for two fine steps),
//!    solves (I − A_c) δ = d by `coarse_correction_steps` steps of δ ← A_c δ + d;
//! 3. for a smooth error e = f − f*, d ≈ (A_c − I) R e, so δ ≈ −R e: g is corrected by the
//!    prolonged δ − d (piecewise constant), which leaves the fine fixed point fixed (there
//!    d = 0) and removes the smooth error up to the coarse lattice's discretisation error.
//!
//! The body force cancels from the correction equation, so the coarse lattice runs
//! without one. Mass: each connected piece of the coarse fluid conserves its own, so the
//! source's net mass is removed piece by piece (else δ would grow without bound there),
//! and the correction added to the fine lattice is made mass-neutral over each piece's
//! fine cells. Where a correction does not help (the next clean window changes the field
//! more than the window before it) or the coarse solve is not finite, corrections stop
//! for the rest of the solve.

use crate::coarse::{self, MIN_COARSE_CELLS};
use crate::config::LbmConfig;
use crate::kernel::{self, Grid, Streaming, Trt};
use crate::lattice::VelocitySet;
use ndarray::ArrayView3;
use rayon::prelude::*;

/// Coarse steps between additions of the source: the source added as k·d every k steps
/// costs a fifth of the memory traffic of adding it every step and solves the same
/// equation for the smooth modes ((I − A_c⁵) ≈ 5 (I − A_c) there); k is odd so that the
/// period-2 mode (A_c = −1) stays bounded. Same steps and error as k = 1 at 128².
const SOURCE_EVERY: usize = 5;

/// Corrections stop when the first clean check window after one changes the field by
/// more than this times the window before it, i.e. the correction did not reduce the
/// change at all (at 128² each one cut it 5–10×).
const WORSE: f64 = 1.0;

/// Least in-plane extent of a volume's coarse lattice: from 63² the 3D solve is corrected
/// (fibres of the default packing about five coarse cells across). On the 64² sample the
/// corrections took the 3D solve from 768 to 382 fine steps at a smaller error (field
/// 2.7e-5 against 7.4e-5 of a tight solve) and the whole solve from 2.19–2.82 s to
/// 1.78–2.24 s on a quiet hour; a dense one (Vf 0.65) from 1 792 to 662 steps
/// (BENCHMARKS.md, "Corrections from 64²").
const MIN_VOLUME_CELLS: usize = 32;

/// In-plane extent of a volume's coarse lattice from which a correction takes all of
/// `coarse_correction_steps`; narrower ones take proportionally fewer (75 at 32 across):
/// a pressure wave crosses them in fewer steps. On 64² volumes (coarse 32 across) 75 coarse
/// steps per correction left the same fine steps as 150 (382 on the sample, 662 on a dense
/// one; 50 left the dense one 732), on a 96² volume 113 and 75 the same 382; at 128² 75
/// were worse (the error of step 366 reached only at step 471; BENCHMARKS.md). Planes take
/// them all: on 96² planes 113 cost some slices 35 more fine steps.
const FULL_STEPS_EXTENT: usize = 64;

/// Coarse steps per correction of a lattice with `Q` directions and `in_plane` cells
/// across, or `None` where its coarse lattice is too narrow to correct. Planes need 48
/// coarse cells ([`MIN_COARSE_CELLS`], as the coarse start) and take every
/// `coarse_correction_steps`: a 32² plane's corrections halved its steps (912 → 487 on
/// the 64² sample's first slice) but cost more than they saved (2D CPU time 0.46–0.58 s →
/// 0.56–0.75 s), its 150 coarse steps being a quarter of the cells each, not an eighth,
/// and so small that a step's fixed costs dominate. Volumes need [`MIN_VOLUME_CELLS`] and
/// take fewer under [`FULL_STEPS_EXTENT`].
fn coarse_steps<const Q: usize>(cfg: &LbmConfig, in_plane: usize) -> Option<usize> {
    let extent = in_plane.div_ceil(2);
    if Q == 9 {
        (extent >= MIN_COARSE_CELLS).then_some(cfg.coarse_correction_steps)
    } else {
        // Saturating: the config bounds the steps from below only.
        let steps = cfg
            .coarse_correction_steps
            .saturating_mul(extent.min(FULL_STEPS_EXTENT));
        (extent >= MIN_VOLUME_CELLS).then(|| steps.div_ceil(FULL_STEPS_EXTENT))
    }
}

/// The coarse lattice and its bookkeeping, built once per solve.
pub struct Correction {
    fine: Grid,
    coarse: Grid,
    fluid: Vec<u8>,
    /// Coarse cell of each fine cell.
    owners: Vec<u32>,
    /// Fine fluid cells of each coarse cell.
    count: Vec<u32>,
    /// Connected piece of each coarse fluid cell (see `pieces`).
    piece: Vec<u32>,
    /// Coarse fluid cells and the fine fluid cells they own, per piece.
    piece_cells: Vec<(f64, f64)>,
    trt: Trt,
    streaming: Streaming,
    every: usize,
    steps: usize,
    /// Step of the last correction.
    last: usize,
    /// Field change of the window before the last correction, and the checks seen since.
    before: Option<(f64, usize)>,
    stopped: bool,
    buffers: Buffers,
}

/// The three coarse lattices a correction works in (the source d, the solution δ and the
/// next step's), kept from one correction to the next, allocated at the first. Fresh ones
/// cost a page fault per 4 KiB at every correction, and each zero page written a TLB
/// shootdown on the other thread: 7 % of a 128² solve's time.
#[derive(Default)]
struct Buffers {
    d: Vec<f32>,
    delta: Vec<f32>,
    next: Vec<f32>,
}

impl Correction {
    /// The correction of a solve on `grid` (in the kernel's memory order) with collision
    /// `trt`, when the config asks for one and the geometry's in-plane extent `in_plane`
    /// leaves a coarse lattice wide enough (see `coarse_steps`).
    pub fn new<const Q: usize, V: VelocitySet<Q>>(
        grid: Grid,
        fluid: &[u8],
        trt: &Trt,
        (cfg, in_plane): (&LbmConfig, usize),
    ) -> Option<Self> {
        if cfg.coarse_correction_every == 0 {
            return None;
        }
        let steps = coarse_steps::<Q>(cfg, in_plane)?;
        let dims = (grid.nz, grid.ny, grid.nx);
        let half = (
            grid.nz.div_ceil(2),
            grid.ny.div_ceil(2),
            grid.nx.div_ceil(2),
        );
        let mask = ArrayView3::from_shape(dims, fluid).ok()?;
        let coarse_mask = coarse::restrict(mask, half);
        let coarse = Grid {
            nx: half.2,
            ny: half.1,
            nz: half.0,
        };
        let owners: Vec<u32> = (0..grid.cells())
            .map(|i| {
                let (z, y, x) = (i / grid.plane(), i % grid.plane() / grid.nx, i % grid.nx);
                let c = (coarse::owner(z, grid.nz, coarse.nz) * coarse.ny
                    + coarse::owner(y, grid.ny, coarse.ny))
                    * coarse.nx
                    + coarse::owner(x, grid.nx, coarse.nx);
                c as u32
            })
            .collect();
        let mut count = vec![0u32; coarse.cells()];
        for (&c, &m) in owners.iter().zip(fluid) {
            count[c as usize] += u32::from(m != 0);
        }
        let fluid: Vec<u8> = coarse_mask.iter().copied().collect();
        let piece = pieces::<Q, V>(&coarse, &fluid);
        let n_pieces = piece
            .iter()
            .filter(|&&p| p != u32::MAX)
            .max()
            .map_or(0, |&p| p as usize + 1);
        let mut piece_cells = vec![(0.0, 0.0); n_pieces];
        for (&p, &n) in piece.iter().zip(&count) {
            if p != u32::MAX {
                piece_cells[p as usize].0 += 1.0;
                piece_cells[p as usize].1 += f64::from(n);
            }
        }
        // Cells and steps twice as long: ν in lattice units halves, c_s stays.
        let tau = 0.5 + (1.0 / f64::from(trt.omega_plus) - 0.5) / 2.0;
        let trt = Trt {
            omega_plus: (1.0 / tau) as f32,
            omega_minus: (1.0 / (0.5 + cfg.magic / (tau - 0.5))) as f32,
            force: [0.0; 3],
            density_weight: trt.density_weight,
        };
        let streaming = Streaming::new::<Q, V>(&coarse, &fluid);
        Some(Self {
            fine: grid,
            coarse,
            fluid,
            owners,
            count,
            piece,
            piece_cells,
            trt,
            streaming,
            every: cfg.coarse_correction_every,
            steps,
            last: 0,
            before: None,
            stopped: false,
            buffers: Buffers::default(),
        })
    }

    /// Whether a correction is due at step `iteration`, given the field change of the check
    /// window that just ended; stops corrections for good where the last one did not help.
    pub fn due(&mut self, iteration: usize, field_change: f64) -> bool {
        if let Some((before, seen)) = self.before {
            // The first window after a correction holds its jump; the second is clean.
            if seen == 1 {
                self.before = None;
                if field_change > WORSE * before {
                    self.stopped = true;
                }
            } else {
                self.before = Some((before, seen + 1));
            }
        }
        // Not before the last correction has been judged: with one-step check windows the
        // period alone would land the next one on the jump window.
        let due = !self.stopped && self.before.is_none() && iteration - self.last >= self.every;
        if due {
            self.before = Some((field_change, 0));
        }
        due
    }

    /// Corrects `f` in place (see the module doc); returns the fine steps it took (two).
    pub fn apply<const Q: usize, V: VelocitySet<Q>>(
        &mut self,
        (trt, fluid, streaming): (&Trt, &[u8], &Streaming),
        f: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
        iteration: usize,
    ) -> usize {
        let mut b = std::mem::take(&mut self.buffers);
        if b.d.is_empty() {
            let n = Q * self.coarse.stride();
            b = Buffers {
                d: vec![0.0; n],
                delta: vec![0.0; n],
                next: vec![0.0; n],
            };
        }
        // R f into δ's buffer, which holds nothing yet.
        self.restrict::<Q>(f, fluid, &mut b.delta);
        for _ in 0..2 {
            kernel::step::<Q, V>(&self.fine, trt, f, fluid, streaming, scratch);
            std::mem::swap(f, scratch);
        }
        self.restrict::<Q>(f, fluid, &mut b.d);
        b.d.par_iter_mut().zip(&b.delta).for_each(|(a, r)| *a -= r);
        self.remove_mass::<Q, V>(&mut b.d);
        self.solve_coarse::<Q, V>(&mut b);
        let (delta, d) = (&b.delta, &b.d);
        if delta.iter().any(|v| !v.is_finite()) {
            self.stopped = true;
            self.buffers = b;
            return 2;
        }
        let cs = self.coarse.stride();
        let cells = self.fine.cells();
        // The mass the prolonged correction would add to each piece's fine cells, taken
        // out again evenly there: a solve conserves mass, and its pressure level is the
        // start's.
        let added = self.mass_per_piece::<Q>(|k| delta[k] - d[k], |c| f64::from(self.count[c]));
        let per_cell: Vec<f32> = added
            .iter()
            .zip(&self.piece_cells)
            .map(|(a, &(_, fine))| (a / fine.max(1.0)) as f32)
            .collect();
        f.par_chunks_mut(self.fine.stride())
            .enumerate()
            .for_each(|(q, dir)| {
                let (dq, sq) = (&delta[q * cs..][..cs], &d[q * cs..][..cs]);
                let w = self.trt.rho_weight::<Q, V>(q);
                for ((v, &m), &c) in dir[..cells].iter_mut().zip(fluid).zip(&self.owners) {
                    let c = c as usize;
                    if m != 0 && self.fluid[c] != 0 {
                        *v += dq[c] - sq[c] - w * per_cell[self.piece[c] as usize];
                    }
                }
            });
        self.last = iteration + 2;
        self.buffers = b;
        2
    }

    /// Mean populations over each coarse cell's fine fluid cells (zero in coarse fibre),
    /// into `out` (a coarse lattice).
    fn restrict<const Q: usize>(&self, f: &[f32], fluid: &[u8], out: &mut [f32]) {
        let (fs, cs) = (self.fine.stride(), self.coarse.stride());
        out.par_chunks_mut(cs).enumerate().for_each(|(q, dir)| {
            dir.fill(0.0);
            let src = &f[q * fs..][..self.fine.cells()];
            for ((&v, &m), &c) in src.iter().zip(fluid).zip(&self.owners) {
                if m != 0 {
                    dir[c as usize] += v;
                }
            }
            for ((o, &n), &m) in dir.iter_mut().zip(&self.count).zip(&self.fluid) {
                *o = if m != 0 { *o / n as f32 } else { 0.0 };
            }
        });
    }

    /// For each connected piece, Σ over its coarse fluid cells c of `weight(c)` times the
    /// cell's mass Σ_q `x(q·stride + c)`.
    fn mass_per_piece<const Q: usize>(
        &self,
        x: impl Fn(usize) -> f32,
        weight: impl Fn(usize) -> f64,
    ) -> Vec<f64> {
        let cs = self.coarse.stride();
        let mut mass = vec![0.0f64; self.piece_cells.len()];
        for (c, &p) in self.piece.iter().enumerate() {
            if p != u32::MAX {
                let m: f64 = (0..Q).map(|q| f64::from(x(q * cs + c))).sum();
                mass[p as usize] += m * weight(c);
            }
        }
        mass
    }

    /// Removes the source's net mass in each connected piece of the coarse fluid: the
    /// step conserves each piece's mass, so (I − A_c) is singular on it and δ would grow
    /// without bound there (the restriction's unequal fluid counts per coarse cell leave
    /// a little).
    fn remove_mass<const Q: usize, V: VelocitySet<Q>>(&self, d: &mut [f32]) {
        let cs = self.coarse.stride();
        let mass = self.mass_per_piece::<Q>(|k| d[k], |_| 1.0);
        let mean: Vec<f32> = mass
            .iter()
            .zip(&self.piece_cells)
            .map(|(m, &(coarse, _))| (m / coarse) as f32)
            .collect();
        d.par_chunks_mut(cs).enumerate().for_each(|(q, dir)| {
            let w = self.trt.rho_weight::<Q, V>(q);
            for (v, &p) in dir.iter_mut().zip(&self.piece) {
                if p != u32::MAX {
                    *v -= w * mean[p as usize];
                }
            }
        });
    }

    /// δ after `steps` coarse steps of δ ← A_c δ + d from zero (the source added
    /// `SOURCE_EVERY` steps at a time), averaged with one more step so that the period-2
    /// mode does not swing; into `b.delta`, from `b.d`.
    fn solve_coarse<const Q: usize, V: VelocitySet<Q>>(&self, b: &mut Buffers) {
        let (grid, trt, fluid, streaming) = (&self.coarse, &self.trt, &self.fluid, &self.streaming);
        let Buffers { d, delta, next } = b;
        delta.fill(0.0);
        let add = |x: &mut [f32], k: usize| {
            let k = k as f32;
            x.par_iter_mut().zip(&*d).for_each(|(a, &b)| *a += k * b);
        };
        // The last SOURCE_EVERY steps add d every step, so that the state averaged below
        // has no partial batch of source in it (5·d added at once and not yet relaxed).
        let batched = self.steps.saturating_sub(SOURCE_EVERY);
        for i in 1..=self.steps {
            kernel::step::<Q, V>(grid, trt, delta, fluid, streaming, next);
            if i > batched {
                add(next, 1);
            } else if i % SOURCE_EVERY == 0 || i == batched {
                // The steps since the last addition: SOURCE_EVERY, or fewer before the tail.
                add(next, i - (i - 1) / SOURCE_EVERY * SOURCE_EVERY);
            }
            std::mem::swap(delta, next);
        }
        kernel::step::<Q, V>(grid, trt, delta, fluid, streaming, next);
        add(next, 1);
        delta
            .par_iter_mut()
            .zip(&*next)
            .for_each(|(a, &b)| *a = 0.5 * (*a + b));
    }
}

/// Labels the connected pieces of the coarse fluid along the lattice's own links
/// (periodic), 0, 1, …; `u32::MAX` in fibre.
fn pieces<const Q: usize, V: VelocitySet<Q>>(grid: &Grid, fluid: &[u8]) -> Vec<u32> {
    let mut piece = vec![u32::MAX; grid.cells()];
    let mut next = 0u32;
    let mut stack = Vec::new();
    let wrap = |v: usize, d: i32, n: usize| (v as i64 + i64::from(d)).rem_euclid(n as i64) as usize;
    for seed in 0..grid.cells() {
        if fluid[seed] == 0 || piece[seed] != u32::MAX {
            continue;
        }
        piece[seed] = next;
        stack.push(seed);
        while let Some(c) = stack.pop() {
            let (z, y, x) = (c / grid.plane(), c % grid.plane() / grid.nx, c % grid.nx);
            for [cx, cy, cz] in V::C {
                let n = (wrap(z, cz, grid.nz) * grid.ny + wrap(y, cy, grid.ny)) * grid.nx
                    + wrap(x, cx, grid.nx);
                if fluid[n] != 0 && piece[n] == u32::MAX {
                    piece[n] = next;
                    stack.push(n);
                }
            }
        }
        next += 1;
    }
    piece
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lattice::D2Q9;

    /// A 96² plane with four disks of fibre.
    fn plane() -> (Grid, Vec<u8>) {
        let grid = Grid {
            nx: 96,
            ny: 96,
            nz: 1,
        };
        let disks = [(20.0, 24.0), (70.0, 30.0), (45.0, 75.0), (88.0, 80.0)];
        let fluid = (0..grid.cells())
            .map(|i| {
                let (x, y) = ((i % 96) as f64 + 0.5, (i / 96) as f64 + 0.5);
                u8::from(disks.iter().all(|&(cx, cy): &(f64, f64)| {
                    let dx = (x - cx).abs().min(96.0 - (x - cx).abs());
                    let dy = (y - cy).abs().min(96.0 - (y - cy).abs());
                    dx * dx + dy * dy >= 18.0 * 18.0
                }))
            })
            .collect();
        (grid, fluid)
    }

    struct Setup {
        grid: Grid,
        fluid: Vec<u8>,
        trt: Trt,
        streaming: Streaming,
        correction: Correction,
    }

    fn setup() -> Setup {
        let (grid, fluid) = plane();
        let cfg = LbmConfig::default();
        let trt = Trt::new(&cfg, 96, 0);
        let streaming = Streaming::new::<9, D2Q9>(&grid, &fluid);
        let correction =
            Correction::new::<9, D2Q9>(grid, &fluid, &trt, (&cfg, 96)).expect("96² has one");
        Setup {
            grid,
            fluid,
            trt,
            streaming,
            correction,
        }
    }

    /// The steady state, by plain steps from rest (each pair averaged at the end, see
    /// `solve::average_two_steps`).
    fn steady(s: &Setup) -> Vec<f32> {
        let mut f = kernel::equilibrium::<9, D2Q9>(&s.grid, &s.trt, &s.fluid, None);
        let mut g = vec![0.0f32; f.len()];
        for _ in 0..20_000 {
            kernel::step::<9, D2Q9>(&s.grid, &s.trt, &f, &s.fluid, &s.streaming, &mut g);
            std::mem::swap(&mut f, &mut g);
        }
        kernel::step::<9, D2Q9>(&s.grid, &s.trt, &f, &s.fluid, &s.streaming, &mut g);
        f.iter().zip(&g).map(|(a, b)| 0.5 * (a + b)).collect()
    }

    fn distance(a: &[f32], b: &[f32]) -> f64 {
        let d: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let n: f64 = b.iter().map(|&y| f64::from(y).powi(2)).sum();
        (d / n).sqrt()
    }

    /// A correction leaves the steady state where it is, and removes a smooth error (a
    /// pressure wave along x, the slow kind) much faster than plain steps: after 100
    /// smoothing steps, a correction and 50 more steps against as many plain steps as
    /// that costs (2 + 150/2 for the coarse steps, 4× fewer cells in 2D, counted at
    /// half). Measured: 2.87e-1 → 8.6e-2 against 1.8e-1.
    #[test]
    fn the_steady_state_stays_and_a_smooth_error_goes() {
        let mut s = setup();
        let exact = steady(&s);
        let lattice = (&s.trt, &s.fluid[..], &s.streaming);
        let mut f = exact.clone();
        let mut scratch = vec![0.0f32; f.len()];
        s.correction
            .apply::<9, D2Q9>(lattice, &mut f, &mut scratch, 0);
        let kept = distance(&f, &exact);
        assert!(kept < 1e-5, "the steady state moved by {kept:.2e}");

        let wave = |i: usize| (2.0 * std::f32::consts::PI * (i % 96) as f32 / 96.0).sin();
        let start = crate::coarse::Start {
            velocity: vec![[0.0; 3]; s.grid.cells()],
            pressure: (0..s.grid.cells()).map(|i| 1e-3 * wave(i)).collect(),
        };
        let error = kernel::equilibrium::<9, D2Q9>(&s.grid, &s.trt, &s.fluid, Some(&start));
        let perturbed: Vec<f32> = exact.iter().zip(&error).map(|(a, e)| a + e).collect();
        let run = |f: &mut Vec<f32>, scratch: &mut Vec<f32>, n: usize| {
            for _ in 0..n {
                kernel::step::<9, D2Q9>(&s.grid, &s.trt, f, &s.fluid, &s.streaming, scratch);
                std::mem::swap(f, scratch);
            }
        };
        let mut f = perturbed.clone();
        run(&mut f, &mut scratch, 100);
        let smoothed = distance(&f, &exact);
        let mass = |f: &[f32]| f.iter().map(|&v| f64::from(v)).sum::<f64>();
        let before = mass(&f);
        s.correction
            .apply::<9, D2Q9>(lattice, &mut f, &mut scratch, 100);
        let moved = (mass(&f) - before).abs() / before.abs().max(1e-3);
        assert!(moved < 1e-4, "a correction changed the mass by {moved:.2e}");
        run(&mut f, &mut scratch, 50);
        let corrected = distance(&f, &exact);
        let mut plain = perturbed;
        run(&mut plain, &mut scratch, 100 + 2 + 75 + 50);
        let stepped = distance(&plain, &exact);
        assert!(
            corrected < smoothed / 3.0 && corrected < stepped / 1.5,
            "error after smoothing {smoothed:.2e}, corrected {corrected:.2e}, stepped {stepped:.2e}"
        );
    }

    /// A correction's coarse lattices are kept from one correction to the next: after one
    /// correction of another state, a correction gives bit for bit what a fresh one gives.
    #[test]
    fn reused_buffers_leave_no_trace() {
        let mut used = setup();
        let mut fresh = setup().correction;
        let wave = |i: usize, k: f32| (k * std::f32::consts::PI * (i % 96) as f32 / 96.0).sin();
        let state = |k: f32| {
            let start = crate::coarse::Start {
                velocity: (0..used.grid.cells())
                    .map(|i| [1e-4 * wave(i, k), 0.0, 0.0])
                    .collect(),
                pressure: (0..used.grid.cells())
                    .map(|i| 1e-3 * wave(i + 7, k))
                    .collect(),
            };
            kernel::equilibrium::<9, D2Q9>(&used.grid, &used.trt, &used.fluid, Some(&start))
        };
        let mut scratch = vec![0.0f32; state(2.0).len()];
        let lattice = (&used.trt, &used.fluid[..], &used.streaming);
        let mut other = state(6.0);
        used.correction
            .apply::<9, D2Q9>(lattice, &mut other, &mut scratch, 0);
        let (mut a, mut b) = (state(2.0), state(2.0));
        used.correction
            .apply::<9, D2Q9>(lattice, &mut a, &mut scratch, 40);
        fresh.apply::<9, D2Q9>(lattice, &mut b, &mut scratch, 40);
        assert!(a != state(2.0), "the correction changed nothing");
        assert!(a == b, "a reused correction differs from a fresh one");
    }

    /// A coarse cell holds the mean of its fine fluid cells, so a field that is one value
    /// per coarse cell restricts to that value, whatever the fibre inside.
    #[test]
    fn restriction_is_the_mean_over_the_fluid() {
        let s = setup();
        let cs = s.correction.coarse.stride();
        let f: Vec<f32> = (0..9 * s.grid.stride())
            .map(|k| {
                let (q, i) = (k / s.grid.stride(), k % s.grid.stride());
                if i >= s.grid.cells() || s.fluid[i] == 0 {
                    // Fibre cells hold garbage that must not leak in.
                    return 1e6;
                }
                (q * 10_000 + s.correction.owners[i] as usize) as f32
            })
            .collect();
        // Garbage in the output must not survive either.
        let mut r = vec![7.0f32; 9 * cs];
        s.correction.restrict::<9>(&f, &s.fluid, &mut r);
        for q in 0..9 {
            for c in 0..s.correction.coarse.cells() {
                let want = if s.correction.fluid[c] != 0 {
                    (q * 10_000 + c) as f32
                } else {
                    0.0
                };
                assert_eq!(r[q * cs + c], want, "q {q} coarse cell {c}");
            }
        }
    }

    /// Two fluid columns walled off from each other (fine x = 0–1 and 4–5 of 8, coarse
    /// columns 0 and 2 of 4) are two pieces; each keeps its own mass, so the source's
    /// net mass goes to zero in each, not only in all.
    #[test]
    fn each_piece_of_the_fluid_keeps_its_mass() {
        let grid = Grid {
            nx: 8,
            ny: 8,
            nz: 1,
        };
        let fluid: Vec<u8> = (0..64)
            .map(|i| u8::from(matches!(i % 8, 0 | 1 | 4 | 5)))
            .collect();
        let cfg = LbmConfig::default();
        let trt = Trt::new(&cfg, 96, 0);
        let c = Correction::new::<9, D2Q9>(grid, &fluid, &trt, (&cfg, 96)).unwrap();
        // Owners by hand: fine (x, y) lies in coarse (x/2, y/2) on even axes.
        for i in 0..64 {
            assert_eq!(c.owners[i] as usize, (i / 8 / 2) * 4 + i % 8 / 2);
        }
        let labels: Vec<u32> = (0..16).map(|k| c.piece[k]).collect();
        for (k, &p) in labels.iter().enumerate() {
            match k % 4 {
                0 => assert_eq!(p, labels[0]),
                2 => assert_eq!(p, labels[2]),
                _ => assert_eq!(p, u32::MAX),
            }
        }
        assert_ne!(labels[0], labels[2]);
        let cs = c.coarse.stride();
        let mut d: Vec<f32> = (0..9 * cs)
            .map(|k| {
                if c.fluid.get(k % cs) == Some(&1) {
                    (k % 7) as f32 * 1e-3
                } else {
                    0.0
                }
            })
            .collect();
        c.remove_mass::<9, D2Q9>(&mut d);
        for column in [0, 2] {
            let m: f32 = (0..9)
                .flat_map(|q| (0..4).map(move |row| q * cs + row * 4 + column))
                .map(|k| d[k])
                .sum();
            assert!(m.abs() < 1e-6, "column {column} keeps mass {m}");
        }
    }

    /// On odd and one-cell axes (a 3D stack of 3 planes, 5 rows and one column), every fine
    /// cell has an owner by `coarse::owner`'s rule (5 → 3: 0 0 1 2 2; 3 → 2: 0 1 1) and the
    /// counts add up to the fluid.
    #[test]
    fn odd_and_thin_axes_are_covered() {
        use crate::lattice::D3Q19;
        let grid = Grid {
            nx: 1,
            ny: 5,
            nz: 3,
        };
        let fluid: Vec<u8> = (0..15).map(|i| u8::from(i != 7)).collect();
        let cfg = LbmConfig::default();
        let trt = Trt::new(&cfg, 96, 1);
        let c = Correction::new::<19, D3Q19>(grid, &fluid, &trt, (&cfg, 96)).unwrap();
        assert_eq!((c.coarse.nx, c.coarse.ny, c.coarse.nz), (1, 3, 2));
        let rows = [0, 0, 1, 2, 2];
        let planes = [0, 1, 1];
        for i in 0..15 {
            assert_eq!(
                c.owners[i] as usize,
                planes[i / 5] * 3 + rows[i % 5],
                "cell {i}"
            );
        }
        assert_eq!(c.count.iter().sum::<u32>(), 14);
    }

    /// A volume is corrected from 63 cells in-plane (a coarse lattice 32 across), a plane
    /// from 95 (48 across), and neither when the config turns corrections off. A volume's
    /// coarse lattice under 64 across takes proportionally fewer coarse steps (150·32/64,
    /// 150·48/64 rounded up), a plane's all of them.
    #[test]
    fn volumes_are_corrected_from_a_smaller_size_than_planes() {
        use crate::lattice::D3Q19;
        let cfg = LbmConfig::default();
        let off = LbmConfig {
            coarse_correction_every: 0,
            ..cfg.clone()
        };
        let steps = |c: Option<Correction>| c.map(|c| c.steps);
        for (n, volume, plane) in [
            (62, None, None),
            (63, Some(75), None),
            (95, Some(113), Some(150)),
            (130, Some(150), Some(150)),
        ] {
            let trt = Trt::new(&cfg, n, 1);
            // The volume in the solver's memory order: 8 planes along the fibres, fastest.
            let grid = Grid {
                nx: 8,
                ny: n,
                nz: n,
            };
            let fluid = vec![1u8; grid.cells()];
            let at = |c: &LbmConfig| Correction::new::<19, D3Q19>(grid, &fluid, &trt, (c, n));
            assert_eq!(steps(at(&cfg)), volume, "{n}² volume");
            assert!(at(&off).is_none());
            let grid = Grid {
                nx: n,
                ny: n,
                nz: 1,
            };
            let fluid = vec![1u8; grid.cells()];
            let at = |c: &LbmConfig| Correction::new::<9, D2Q9>(grid, &fluid, &trt, (c, n));
            assert_eq!(steps(at(&cfg)), plane, "{n}² plane");
            assert!(at(&off).is_none());
        }
    }

    /// Corrections come every `every` steps, and stop for good when the clean window after
    /// one changes more than the window before it (the window right after holds the
    /// correction's own jump and is not judged). With the default period the clean window
    /// is judged at the check where the next correction is due, before it is taken.
    #[test]
    fn corrections_stop_where_they_do_not_help() {
        let mut c = setup().correction;
        assert_eq!(c.every, 32);
        assert!(!c.due(16, 1e-2));
        assert!(c.due(32, 1e-2));
        // The solve's next checks: 2 correction steps and the average, then 16-step windows.
        c.last = 34;
        assert!(!c.due(51, 5e-1)); // the jump window
        assert!(c.due(67, 9e-3)); // clean window: smaller than before, so it helped
        assert!(!c.stopped);
        c.last = 69;
        assert!(!c.due(86, 1e-1));
        assert!(!c.due(102, 9.1e-3)); // clean window: larger than before
        assert!(c.stopped);
        assert!(!c.due(1000, 1e-3));
    }

    /// On the solve's own schedule (a check every `check_every` steps; a correction takes
    /// two steps and the average one more), every correction is judged by a clean window
    /// before the next is taken, for every period the config accepts, including one-step
    /// windows.
    #[test]
    fn every_correction_is_judged_before_the_next() {
        for check_every in [1, 2, 3, 7, 16, 50] {
            for every in 2 * check_every..=3 * check_every + 3 {
                let mut c = setup().correction;
                (c.every, c.last) = (every, 0);
                let (mut iteration, mut taken, mut windows_since) = (0, 0, None);
                while iteration < 40 * every {
                    iteration += check_every;
                    windows_since = windows_since.map(|w: usize| w + 1);
                    // Shrinking changes, so every correction helps and they go on.
                    if c.due(iteration, 1.0 / iteration as f64) {
                        assert!(
                            windows_since.is_none_or(|w| w >= 2),
                            "check_every {check_every}, every {every}: a correction on the \
                             jump window at {iteration}"
                        );
                        c.last = iteration + 2;
                        iteration += 3;
                        (taken, windows_since) = (taken + 1, Some(0));
                    }
                }
                assert!(
                    !c.stopped && taken >= 10,
                    "check_every {check_every}, every {every}: {taken} corrections"
                );
            }
        }
    }
}
