//! Full-resolution refinement of a decoded prediction: a small residual U-Net (Ronneberger
//! et al., MICCAI 2015) that sees the point estimate beside the inputs at full resolution
//! (the in-plane 2D flow, the microstructure, the 2D pressure change) and adds a
//! correction. The latent networks see the 2D flow only through E2D's latent, 4× coarser
//! in H and W, so detail that the 2D flow holds pixel by pixel (the boundary layers along
//! each fibre) reaches the prediction only as D3D can guess it back. A learned correction
//! of a cheaper predictor's output, as in Um et al., "Solver-in-the-Loop", NeurIPS 2020,
//! and the deterministic counterpart of the super-resolution stage of cascaded diffusion
//! models (Ho et al., JMLR 2022).
//!
//! Cost: the input is folded 2×2 into channels (Shi et al., CVPR 2016) so no convolution
//! runs at full resolution; the output is unfolded the same way. The last convolution
//! starts at zero, so an untrained refiner returns its input.

mod network;

pub use network::{Refiner, RefinerConfig, refiner_inputs};
