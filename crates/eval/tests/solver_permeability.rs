//! The metric code's permeability K = μ⟨vx⟩/G of a solver field equals the solver's own K:
//! per slice for the 2D solves, and for the volume when every lattice plane is a slice.

use fiberflow_eval::Flow;
use fiberflow_eval::physics::permeability;
use fiberflow_geometry::layout::{SliceGrid, VoxelSize};
use fiberflow_geometry::packing::{Microstructure, PackingConfig};
use fiberflow_solver::config::FlowConfig;
use fiberflow_solver::sample::solve_sample;
use ndarray::{Array4, Axis, s};

#[test]
fn metric_permeability_equals_the_solvers() {
    let packing = PackingConfig {
        window_um: 12.0,
        radius_mean_um: 2.0,
        radius_std_um: 0.1,
        vf: 0.35,
        tilt_std_deg: 3.0,
        ..PackingConfig::default()
    };
    // Slice pitch = pixel size, so the 3D lattice planes are exactly the slices.
    let grid = SliceGrid {
        size: 24,
        slices: 24,
        pitch_um: 0.5,
    };
    let (micro, _) = Microstructure::generate(&packing, grid.z_period_um(), 0.5, 3).unwrap();
    let (slices, planes) = micro.sample_masks(&grid);
    assert_eq!(slices.dim(), planes.dim());
    let voxel = VoxelSize::from_um(0.5, 0.5);
    let cfg = FlowConfig::default();
    let out = solve_sample(slices.view(), Some(planes.view()), voxel, &cfg, None).unwrap();
    let (mu, g) = (
        cfg.physics.viscosity_pa_s,
        cfg.physics.pressure_gradient_pa_per_m,
    );
    let mask: Array4<f32> = slices.mapv(f32::from).insert_axis(Axis(1));
    for k in 0..grid.slices {
        let u = out.u2d.slice(s![k..k + 1, .., .., ..]);
        let m = mask.slice(s![k..k + 1, .., .., ..]);
        let got = permeability(&Flow::new(u, m).unwrap(), mu, g).unwrap();
        let want = out.report.k_2d_m2[k];
        assert!(
            (got - want).abs() < 1e-5 * want,
            "slice {k}: {got} vs {want}"
        );
    }
    let u = out.u.as_ref().unwrap();
    let got = permeability(&Flow::new(u.view(), mask.view()).unwrap(), mu, g).unwrap();
    let want = out.report.k_3d_m2.unwrap();
    assert!((got - want).abs() < 1e-5 * want, "volume: {got} vs {want}");
}
