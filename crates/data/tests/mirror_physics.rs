//! Mirror augmentation against the solver: mirroring a solved sample must give the flow the
//! solver computes on the mirrored geometry (driven along +x like every sample).

use fiberflow_data::{Mirror, Sample};
use fiberflow_geometry::layout::VoxelSize;
use fiberflow_solver::sample::solve_sample;
use fiberflow_solver::{FlowConfig, LbmConfig};
use ndarray::{Array3, Axis, s};

/// An asymmetric periodic packing of 3 leaning square "fibres", as (S, H, W) slices.
fn geometry() -> Array3<u8> {
    let (ns, n) = (4usize, 24usize);
    Array3::from_shape_fn((ns, n, n), |(z, y, x)| {
        let blocks = [(3 + z, 4, 5usize), (13, 12 + z, 6), (5, 16, 4 + z / 2)];
        u8::from(
            !blocks
                .iter()
                .any(|&(bx, by, size)| (x + n - bx) % n < size && (y + n - by) % n < size),
        )
    })
}

fn solve(slices: &Array3<u8>) -> Sample {
    let cfg = FlowConfig {
        lbm: LbmConfig {
            tol: 1e-7,
            field_tol: 1e-6,
            ..Default::default()
        },
        ..Default::default()
    };
    let voxel = VoxelSize::from_um(1.0, 1.0);
    let out = solve_sample(slices.view(), Some(slices.view()), voxel, &cfg, None).unwrap();
    Sample {
        domain: slices.mapv(f32::from).insert_axis(Axis(1)),
        u2d: out.u2d,
        u: out.u.unwrap(),
        p: out.p,
        p2d: Some(out.p2d),
        dxyz: voxel.as_array(),
    }
}

fn max_abs(a: &ndarray::Array4<f32>) -> f32 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[test]
fn every_mirror_matches_a_solve_of_the_mirrored_geometry() {
    let geo = geometry();
    let base = solve(&geo);
    assert!(max_abs(&base.u.slice(s![.., 2..3, .., ..]).to_owned()) > 0.01 * max_abs(&base.u));
    for m in [
        Mirror {
            x: true,
            y: false,
            z: false,
        },
        Mirror {
            x: false,
            y: true,
            z: false,
        },
        Mirror {
            x: false,
            y: false,
            z: true,
        },
    ] {
        let mut mirrored = base.clone();
        m.apply(&mut mirrored);
        let mut g = geo.view();
        for (on, axis) in [(m.x, 2), (m.y, 1), (m.z, 0)] {
            if on {
                g.invert_axis(Axis(axis));
            }
        }
        // z mirror of a periodic stack maps slice k to S−1−k, which is a plane of the
        // 3D lattice only when the lattice planes are the slices themselves (here).
        let direct = solve(&g.to_owned());
        for (name, a, b) in [
            ("U", &mirrored.u, &direct.u),
            ("U_2d", &mirrored.u2d, &direct.u2d),
            ("p", &mirrored.p, &direct.p),
            (
                "p_2d",
                mirrored.p2d.as_ref().unwrap(),
                direct.p2d.as_ref().unwrap(),
            ),
        ] {
            let err = max_abs(&(a - b));
            assert!(
                err < 1e-4 * max_abs(b),
                "{m:?} {name}: max error {err} vs scale {}",
                max_abs(b)
            );
        }
    }
}
