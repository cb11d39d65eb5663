//! Metrics of predicted 3D flow fields against the truth, and an exact divergence-free
//! projection; no ML dependency.
//!
//! Inputs follow `fiberflow_geometry::layout`: velocity `(S, 3, H, W)` in m/s (vx, vy, vz;
//! flow along +x), mask `(S, 1, H, W)` with 1 = fluid, 0 = fibre, as f32 `ArrayView4`s.
//! Shapes, NaN/Inf, non-binary masks and masks without fluid are errors ([`EvalError`]).
//! [`evaluate_sample`] returns every metric of one sample as a flat [`SampleMetrics`]
//! record; [`Summary`] aggregates records (mean, population std, min, max) and
//! [`write_csv`] writes one row per sample; both records and summaries are serde types for
//! the JSON report.
//!
//! # Reference metrics (`ref_*`)
//! Computed exactly as the Python reference does (`scripts/eval_testset_end2end.py` of
//! `Ruby-004/Diffusion_model_project`), so numbers compare with its published ones, flaws
//! included ([`mod@reference`]):
//! * `ref_mae/mse/rmse_{u,v,w,total}`: fluid-masked errors Σ(e·m)/(Σm + 1e-8); totals are
//!   the means of the components (rmse_total = √mse_total).
//! * `ref_nmae/nmse_*`: divided by the dataset's max |c| (+1e-8, or max² + 1e-8). The
//!   maximum is far above typical velocities, so these look small whatever the error.
//! * `ref_cosine_similarity`: per-voxel cosine with an absolute eps of 1e-8 m²/s², of the
//!   order of |p||t| at these speeds, so even a perfect prediction scores well below 1.
//! * `ref_iou_top10/top5`: thresholds at index int(n·(100 − k)/100) of the descending sort,
//!   which keeps the top ~90 % / ~95 % of voxels: the IoU is near 1 for almost any field.
//! * `ref_accuracy_score` = 1/(1 + ref_nmae_total), inflated with nMAE.
//!
//! # Corrected metrics
//! Scale-free, normalised by the same sample's truth ([`corrected`], [`physics`]):
//! * `rel_l2_{u,v,w,total}` = ‖p − t‖/‖t‖ over the fluid: 0 perfect, 1 for a zero field.
//! * `iou_top10/top5`: IoU of the fluid voxels holding the truly largest k % of speeds.
//! * `cosine_similarity`: eps = 1e-6·mean|t|², relative to the sample's own velocity scale.
//! * `div_rel_{pred,true}`: mean fluid |∇·u| with central differences at the true spacing
//!   (dz ≈ 25.6 dx in the reference data; the reference's physics metrics use index units),
//!   over mean|u_true|/dx. The truth's value shows what the slice sampling itself allows.
//! * `fibre_rms_pred`: RMS speed inside fibres (no-slip violation), m/s.
//! * `flow_cv_{pred,true}`: std over x of Q(x) = Σ vx over slices and rows, over the true
//!   mean Q; zero for incompressible flow.
//! * `k_{pred,true}_m2`, `k_rel_err`: Darcy permeability K = μ⟨vx⟩/G (whole-volume mean,
//!   fibres 0) and its signed relative error.
//!
//! # Projection
//! [`project_divergence_free`] returns the least-squares closest field that is zero in
//! fibres and has zero discrete divergence (the metric's own operator) at every fluid
//! voxel, by a matrix-free conjugate-gradient Poisson solve ([`projection`]).

pub mod corrected;
mod csv_writer;
mod error;
mod input;
pub mod physics;
pub mod projection;
mod record;
pub mod reference;
mod stencil;
mod summary;

pub use csv_writer::{write_csv, write_csv_to};
pub use error::{EvalError, Result};
pub use input::{Comparison, Dims, Flow};
pub use projection::{Projection, ProjectionConfig, project_divergence_free};
pub use record::{
    DEFAULT_PRESSURE_GRADIENT_PA_PER_M, DEFAULT_VISCOSITY_PA_S, EvalConfig, SampleMetrics,
    evaluate_sample,
};
pub use summary::{MetricStats, Summary};
