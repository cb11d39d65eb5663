//! End-to-end tests of `fiberflow geometry` and `fiberflow solve` on tiny inputs: the
//! files written, their consistency, 2D-only input, non-convergence, and clear errors.

mod common;

use common::*;
use ndarray::{Array2, Array3, Array4, ArrayD, Axis, IxDyn, s};
use ndarray_npy::{read_npy, write_npy};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// `fiberflow geometry` of the tiny packing (3 slices of 16×16, 0.75 µm pixels, 2 µm
/// pitch) into `dir/geometry`.
fn tiny_geometry(dir: &Path) -> PathBuf {
    let cfg = write_file(dir, "packing.toml", TINY_PACKING);
    let out = dir.join("geometry");
    let r = ok([
        "geometry",
        "--out",
        &p(&out),
        "--size",
        "16",
        "--slices",
        "3",
        "--pitch-um",
        "2",
        "--config",
        &p(&cfg),
        "--seed",
        SEED,
    ]);
    assert!(r.stdout.contains("fibres, Vf 0.3500"), "{}", r.stdout);
    out
}

fn solve(microstructure: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "solve".to_string(),
        "--microstructure".into(),
        p(microstructure),
        "--out".into(),
        p(out),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    ok(args)
}

fn npy4(path: &Path) -> Array4<f32> {
    read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn k_2d(perm: &Value) -> Vec<f64> {
    perm["k_2d_m2"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Superficial velocity of each slice times μ/G: the permeability the field implies.
fn k_from_field(u: &Array4<f32>, perm: &Value) -> Vec<f64> {
    let mu = perm["config"]["physics"]["viscosity_pa_s"]
        .as_f64()
        .unwrap();
    let g = perm["config"]["physics"]["pressure_gradient_pa_per_m"]
        .as_f64()
        .unwrap();
    u.outer_iter()
        .map(|slice| {
            let vx = slice.index_axis(Axis(0), 0);
            vx.iter().map(|&v| f64::from(v)).sum::<f64>() / vx.len() as f64 * mu / g
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// An aerospace-like draw at 64 px (Vf 0.65, 4° lean, 1 µm waviness) jams at the default
/// one-pixel gap with an error that names the flag to relax it, and packs with
/// `--min-gap-px 0.25`, which the file records, its fibre paths at least that far apart.
#[test]
fn geometry_that_jams_names_the_gap_flag_and_a_quarter_pixel_packs() {
    let dir = tempdir();
    let args = |out: &str, extra: &[&str]| {
        let mut v = vec![
            "geometry",
            "--size",
            "64",
            "--slices",
            "3",
            "--vf",
            "0.65",
            "--tilt-std-deg",
            "4",
            "--wave-amplitude-um",
            "1",
            "--seed",
            "3",
            "--out",
        ];
        v.push(out);
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let jammed = p(&dir.path().join("jammed"));
    fails(
        args(&jammed, &[]),
        &[
            "could not separate the fibres",
            "1 px apart",
            "`--min-gap-px 0.5` or `0.25`",
        ],
    );
    let packed = dir.path().join("packed");
    ok(args(&p(&packed), &["--min-gap-px", "0.25"]));
    let file = json(&packed.join("microstructure.json"));
    assert_eq!(file["packing"]["min_gap_px"], 0.25);
    let pixel_um = file["packing"]["window_um"].as_f64().unwrap() / 64.0;
    let closest = file["report"]["min_gap_found_um"].as_f64().unwrap();
    assert!(closest >= 0.25 * pixel_um * (1.0 - 1e-6), "{closest} µm");
    assert!((file["report"]["vf_analytic"].as_f64().unwrap() - 0.65).abs() < 1e-3);
}

#[test]
fn geometry_then_solve_writes_consistent_fields() {
    let tmp = tempdir();
    let geo = tiny_geometry(tmp.path());
    let domain: Array3<u8> = read_npy(geo.join("domain.npy")).unwrap();
    assert_eq!(domain.dim(), (3, 16, 16));
    assert!(domain.iter().all(|&v| v <= 1));
    let (fluid, solid) = (
        domain.iter().filter(|&&v| v == 1).count(),
        domain.iter().filter(|&&v| v == 0).count(),
    );
    assert!(fluid > 0 && solid > 0);
    for k in 0..3 {
        assert!(geo.join(format!("slices/slice_{k:03}.png")).is_file());
    }
    let ms = json(&geo.join("microstructure.json"));
    assert_eq!(ms["seed"], 3);
    assert_eq!(ms["grid"]["size"], 16);
    assert_eq!(ms["packing"]["window_um"], 12.0);
    assert!(
        !ms["microstructure"]["fibres"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let out = tmp.path().join("solve");
    let r = solve(&geo.join("microstructure.json"), &out, &[]);
    assert!(r.stdout.contains("K_3d = "), "{}", r.stdout);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);

    let u2d = npy4(&out.join("U_2d.npy"));
    let u = npy4(&out.join("U.npy"));
    let pressure = npy4(&out.join("p.npy"));
    let pressure_2d = npy4(&out.join("p_2d.npy"));
    assert_eq!(u2d.dim(), (3, 3, 16, 16));
    assert_eq!(u.dim(), (3, 3, 16, 16));
    assert_eq!(pressure.dim(), (3, 1, 16, 16));
    assert_eq!(pressure_2d.dim(), (3, 1, 16, 16));
    assert!(
        pressure_2d != pressure,
        "p_2d is the 2D solves', p the 3D one's"
    );
    for field in [&u2d, &u, &pressure, &pressure_2d] {
        assert!(field.iter().all(|v| v.is_finite()));
    }
    // No flow and no pressure inside fibres.
    for ((k, y, x), &m) in domain.indexed_iter() {
        if m == 0 {
            for c in 0..3 {
                assert_eq!(u2d[[k, c, y, x]], 0.0, "U_2d[{k},{c},{y},{x}] in fibre");
                assert_eq!(u[[k, c, y, x]], 0.0, "U[{k},{c},{y},{x}] in fibre");
            }
            assert_eq!(pressure[[k, 0, y, x]], 0.0, "p[{k},0,{y},{x}] in fibre");
            assert_eq!(
                pressure_2d[[k, 0, y, x]],
                0.0,
                "p_2d[{k},0,{y},{x}] in fibre"
            );
        }
    }
    // 2D flow has no vz; the 3D flow of leaning fibres does; both flow along +x.
    assert!(u2d.slice(s![.., 2, .., ..]).iter().all(|&v| v == 0.0));
    assert!(u.slice(s![.., 2, .., ..]).iter().any(|&v| v != 0.0));
    assert!(u2d.slice(s![.., 0, .., ..]).sum() > 0.0);
    assert!(u.slice(s![.., 0, .., ..]).sum() > 0.0);

    let perm = json(&out.join("permeability.json"));
    for key in [
        "k_3d_m2",
        "k_2d_m2",
        "porosity",
        "iterations",
        "converged",
        "residual",
    ] {
        assert!(perm.get(key).is_some(), "permeability.json lacks {key}");
    }
    let k2 = k_2d(&perm);
    assert_eq!(k2.len(), 3);
    let k3 = perm["k_3d_m2"].as_f64().unwrap();
    assert!(k3 > 0.0 && k2.iter().all(|&k| k > 0.0), "{perm}");
    // Fibres lean by ~1.5°, so K_3d stays close to the slice mean.
    let k2_mean = k2.iter().sum::<f64>() / 3.0;
    assert!(rel(k3, k2_mean) < 0.5, "K_3d {k3} vs K_2d {k2_mean}");
    // The permeabilities are those of the written velocity fields (Darcy: K = μ⟨u⟩/G).
    for (k, from_field) in k2.iter().zip(k_from_field(&u2d, &perm)) {
        assert!(rel(from_field, *k) < 1e-4, "{from_field} vs {k}");
    }
    let porosity = fluid as f64 / domain.len() as f64;
    assert!((perm["porosity"].as_f64().unwrap() - porosity).abs() < 1e-12);
    assert_eq!(perm["converged"], true);
    assert!(perm["iterations"].as_u64().unwrap() > 0);
    let tol = perm["config"]["lbm"]["tol"].as_f64().unwrap();
    assert!(perm["residual"].as_f64().unwrap() < tol, "{perm}");
}

#[test]
fn every_input_form_and_mode_gives_the_same_fields() {
    let tmp = tempdir();
    let geo = tiny_geometry(tmp.path());
    let json_in = geo.join("microstructure.json");
    let both = tmp.path().join("both");
    solve(&json_in, &both, &[]);
    let (u2d, u) = (npy4(&both.join("U_2d.npy")), npy4(&both.join("U.npy")));

    // 2D only: the same slice flows, no 3D field, no K_3d.
    let two = tmp.path().join("2d");
    solve(&json_in, &two, &["--mode", "2d"]);
    assert!(!two.join("U.npy").exists());
    assert_eq!(npy4(&two.join("U_2d.npy")), u2d);
    let perm = json(&two.join("permeability.json"));
    assert!(perm["k_3d_m2"].is_null(), "{perm}");
    assert_eq!(
        k_2d(&perm),
        k_2d(&json(&both.join("permeability.json"))),
        "2D permeabilities depend on the mode"
    );

    // 3D only: the same 3D field, no 2D one written.
    let three = tmp.path().join("3d");
    solve(&json_in, &three, &["--mode", "3d"]);
    assert!(!three.join("U_2d.npy").exists());
    assert_eq!(npy4(&three.join("U.npy")), u);

    // The mask written by `geometry`, as .npy and as PNG slices: identical 2D flows.
    let voxel = ["--voxel-size-um", "0.75", "--slice-pitch-um", "2"];
    let from_npy = tmp.path().join("npy");
    solve(&geo.join("domain.npy"), &from_npy, &voxel);
    assert_eq!(npy4(&from_npy.join("U_2d.npy")), u2d);
    assert_eq!(npy4(&from_npy.join("U.npy")).dim(), (3, 3, 16, 16));
    assert!(
        json(&from_npy.join("permeability.json"))["k_3d_m2"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let from_png = tmp.path().join("png");
    let mut args = voxel.to_vec();
    args.extend(["--mode", "2d"]);
    solve(&geo.join("slices"), &from_png, &args);
    assert_eq!(npy4(&from_png.join("U_2d.npy")), u2d);
}

/// A slit: `n` fluid rows between two fibre rows, 6 pixels along x.
fn slit(n: usize) -> Array2<u8> {
    Array2::from_shape_fn((n + 2, 6), |(y, _)| u8::from((1..=n).contains(&y)))
}

#[test]
fn solve_of_a_2d_npy_is_2d_only_and_matches_poiseuille() {
    let tmp = tempdir();
    let n = 8;
    let mask = slit(n);
    let input = tmp.path().join("slit.npy");
    write_npy(&input, &mask).unwrap();
    let out = tmp.path().join("out");
    let args = ["--voxel-size-um", "0.5", "--tol", "1e-7"];
    let r = solve(&input, &out, &args);
    assert!(r.stderr.contains("single slice"), "{}", r.stderr);
    assert!(!r.stdout.contains("K_3d"), "{}", r.stdout);
    assert!(!out.join("U.npy").exists(), "a 2D input wrote U.npy");
    let u2d = npy4(&out.join("U_2d.npy"));
    assert_eq!(u2d.dim(), (1, 3, n + 2, 6));
    assert_eq!(npy4(&out.join("p.npy")).dim(), (1, 1, n + 2, 6));
    let perm = json(&out.join("permeability.json"));
    assert!(perm["k_3d_m2"].is_null(), "{perm}");
    assert_eq!(perm["converged"], true);

    // Plane Poiseuille flow in SI units: u(d) = G/(2μ)·d·(h − d), and the superficial
    // K = h²/12 · h/H (× 1 + 1/(2n²), the node-sum quadrature of the lattice).
    let (dx, mu, g) = (0.5e-6, 0.1, 1e6);
    let h = n as f64 * dx;
    for j in 1..=n {
        let d = (j as f64 - 0.5) * dx;
        let exact = g / (2.0 * mu) * d * (h - d);
        let got = f64::from(u2d[[0, 0, j, 3]]);
        assert!(rel(got, exact) < 1e-2, "row {j}: {got} vs {exact}");
    }
    let k = k_2d(&perm);
    let exact = h * h / 12.0 * n as f64 / (n + 2) as f64 * (1.0 + 0.5 / (n * n) as f64);
    assert_eq!(k.len(), 1);
    assert!(rel(k[0], exact) < 1e-2, "K {} vs {exact}", k[0]);

    // Other dtypes and the flipped convention give the same answer.
    let at = |name: &str| tmp.path().join(name);
    write_npy(at("f64.npy"), &mask.mapv(f64::from)).unwrap();
    write_npy(at("bool.npy"), &mask.mapv(|v| v == 1)).unwrap();
    write_npy(at("i32.npy"), &mask.mapv(i32::from)).unwrap();
    write_npy(at("flipped.npy"), &mask.mapv(|v| 1 - v)).unwrap();
    for (name, extra) in [
        ("f64.npy", None),
        ("bool.npy", None),
        ("i32.npy", None),
        ("flipped.npy", Some(["--solid-value", "high"])),
    ] {
        let out = at(&format!("out-{name}"));
        let mut a = args.to_vec();
        a.extend(extra.iter().flatten());
        solve(&at(name), &out, &a);
        assert_eq!(npy4(&out.join("U_2d.npy")), u2d, "{name}");
    }
}

#[test]
fn solve_that_does_not_converge_warns_and_says_so() {
    let tmp = tempdir();
    let geo = tiny_geometry(tmp.path());
    let out = tmp.path().join("out");
    let r = solve(
        &geo.join("microstructure.json"),
        &out,
        &["--max-iterations", "100", "--tol", "1e-12"],
    );
    assert!(
        r.stderr
            .contains("warning: the solve did not converge within 100 steps"),
        "{}",
        r.stderr
    );
    let perm = json(&out.join("permeability.json"));
    assert_eq!(perm["converged"], false, "{perm}");
    assert_eq!(perm["iterations"], 100);
    assert!(perm["residual"].as_f64().unwrap() > 1e-12);
    for name in ["U_2d.npy", "U.npy", "p.npy"] {
        assert!(out.join(name).is_file(), "{name} not written");
    }

    // The converged solve of the same input does not warn.
    let out = tmp.path().join("converged");
    let r = solve(&geo.join("microstructure.json"), &out, &["--mode", "2d"]);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
#[allow(clippy::too_many_lines)] // a table of bad inputs, each with its expected message
fn solve_rejects_bad_input_with_a_clear_message() {
    let tmp = tempdir();
    let dir = tmp.path();
    let npy = |name: &str, write: &dyn Fn(&Path)| {
        let path = dir.join(name);
        write(&path);
        path
    };
    let open = Array2::from_shape_fn((8, 8), |(y, _)| u8::from(y != 0));
    let wall = Array2::from_shape_fn((8, 8), |(_, x)| u8::from(x != 4));
    let good = npy("good.npy", &|p| write_npy(p, &open).unwrap());
    let stack = npy("stack.npy", &|p| {
        write_npy(p, &open.clone().insert_axis(Axis(0))).unwrap();
        let two = ndarray::stack![Axis(0), open.view(), open.view()];
        write_npy(p, &two).unwrap();
    });
    let good_bytes = fs::read(&good).unwrap();
    let cases: Vec<(&str, PathBuf, Vec<&str>, Vec<&str>)> = vec![
        (
            "missing file",
            dir.join("missing.npy"),
            vec![],
            vec!["missing.npy", "no such file"],
        ),
        (
            "all solid",
            npy("solid.npy", &|p| {
                write_npy(p, &Array2::<u8>::zeros((8, 8))).unwrap()
            }),
            vec![],
            vec!["solid.npy", "all fibre"],
        ),
        (
            "all fluid",
            npy("fluid.npy", &|p| {
                write_npy(p, &Array2::<u8>::ones((8, 8))).unwrap()
            }),
            vec![],
            vec!["fluid.npy", "all fluid"],
        ),
        (
            "wall across x",
            npy("wall.npy", &|p| write_npy(p, &wall).unwrap()),
            vec![],
            vec!["does not connect across the domain along x"],
        ),
        (
            "3D wall across x",
            npy("wall3.npy", &|p| {
                write_npy(p, &ndarray::stack![Axis(0), wall.view(), wall.view()]).unwrap()
            }),
            vec!["--slice-pitch-um", "1"],
            vec!["does not connect"],
        ),
        (
            "NaN",
            npy("nan.npy", &|p| {
                let mut m = open.mapv(f32::from);
                m[[3, 3]] = f32::NAN;
                write_npy(p, &m).unwrap()
            }),
            vec![],
            vec!["nan.npy", "NaN"],
        ),
        (
            "not binary",
            npy("two.npy", &|p| {
                write_npy(p, &open.mapv(|v| 2.0 * f64::from(v))).unwrap()
            }),
            vec![],
            vec!["two.npy", "only 0 and 1"],
        ),
        (
            "uint16",
            npy("u16.npy", &|p| write_npy(p, &open.mapv(u16::from)).unwrap()),
            vec![],
            vec!["u16.npy", "unsupported dtype"],
        ),
        (
            "4-D",
            npy("4d.npy", &|p| {
                let a = ArrayD::from_shape_fn(IxDyn(&[1, 2, 8, 8]), |i| u8::from(i[2] != 0));
                write_npy(p, &a).unwrap()
            }),
            vec![],
            vec!["4d.npy", "4-D"],
        ),
        (
            "1-D",
            npy("1d.npy", &|p| {
                write_npy(p, &ndarray::array![1u8, 0, 1]).unwrap()
            }),
            vec![],
            vec!["1d.npy", "1-D"],
        ),
        (
            "truncated data",
            npy("cut.npy", &|p| {
                fs::write(p, &good_bytes[..good_bytes.len() - 5]).unwrap()
            }),
            vec![],
            vec!["cut.npy", "not a readable .npy"],
        ),
        (
            "truncated header",
            npy("cut-header.npy", &|p| {
                fs::write(p, &good_bytes[..20]).unwrap()
            }),
            vec![],
            vec!["cut-header.npy"],
        ),
        (
            "not an npy",
            npy("text.npy", &|p| fs::write(p, "hello").unwrap()),
            vec![],
            vec!["text.npy"],
        ),
        (
            "too narrow for a lattice",
            npy("column.npy", &|p| {
                write_npy(p, &Array2::from_shape_fn((8, 1), |(y, _)| u8::from(y > 2))).unwrap()
            }),
            vec![],
            vec!["2×2"],
        ),
        (
            "unsupported extension",
            npy("mask.txt", &|p| fs::write(p, "0 1").unwrap()),
            vec![],
            vec!["mask.txt", "unsupported microstructure file"],
        ),
        (
            "folder without images",
            npy("empty-folder", &|p| fs::create_dir(p).unwrap()),
            vec![],
            vec!["empty-folder", "no .png"],
        ),
        (
            "not a microstructure.json",
            npy("other.json", &|p| fs::write(p, r#"{"seed": 1}"#).unwrap()),
            vec![],
            vec!["other.json", "not a microstructure.json"],
        ),
        (
            "missing microstructure.json",
            dir.join("absent.json"),
            vec![],
            vec!["absent.json", "cannot read"],
        ),
    ];
    let voxel = ["--voxel-size-um", "0.5"];
    for (what, input, extra, needles) in &cases {
        let out = dir.join("out");
        let mut args = vec!["solve", "--microstructure", input.to_str().unwrap()];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(voxel);
        args.extend(extra);
        let r = run(&args);
        assert_clean_failure(&r, needles);
        assert!(!out.exists(), "{what}: wrote {}", out.display());
    }

    // Flags: missing or bad voxel size and pitch, bad solver settings, bad config files.
    let out = dir.join("out");
    let base = |input: &Path| {
        vec![
            "solve".to_string(),
            "--microstructure".into(),
            p(input),
            "--out".into(),
            p(&out),
        ]
    };
    let with = |input: &Path, extra: &[&str]| {
        let mut a = base(input);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let solver_cfg = write_file(dir, "solver.toml", "[lbm]\ntolerance = 1e-6\n");
    let flag_cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (base(&good), vec!["--voxel-size-um is required"]),
        (
            with(&stack, &["--voxel-size-um", "0.5"]),
            vec!["--slice-pitch-um is required"],
        ),
        (
            with(&good, &["--voxel-size-um=-1"]),
            vec!["--voxel-size-um must be a positive number"],
        ),
        (
            with(&good, &["--voxel-size-um", "NaN"]),
            vec!["--voxel-size-um must be a positive number"],
        ),
        (
            with(&stack, &["--voxel-size-um", "0.5", "--slice-pitch-um", "0"]),
            vec!["--slice-pitch-um must be a positive number"],
        ),
        (
            with(&good, &["--voxel-size-um", "0.5", "--tau", "0.5"]),
            vec!["tau must lie in (0.5, 10]"],
        ),
        (
            with(&good, &["--voxel-size-um", "0.5", "--tau", "1e9"]),
            vec!["tau must lie in (0.5, 10]"],
        ),
        (
            with(
                &good,
                &[
                    "--voxel-size-um",
                    "0.5",
                    "--pressure-gradient-pa-per-m",
                    "1e300",
                ],
            ),
            vec!["outside 1e-30 to 1e30", "check their units"],
        ),
        (
            with(
                &good,
                &["--voxel-size-um", "0.5", "--viscosity-pa-s", "1e-300"],
            ),
            vec!["outside 1e-30 to 1e30"],
        ),
        (
            with(&good, &["--voxel-size-um", "0.5", "--max-iterations", "10"]),
            vec!["max_iterations"],
        ),
        (
            with(&good, &["--voxel-size-um", "0.5", "--tol", "0"]),
            vec!["tol"],
        ),
        (
            with(&good, &["--voxel-size-um", "0.5", "--viscosity-pa-s", "0"]),
            vec!["viscosity_pa_s must be > 0"],
        ),
        (
            with(
                &good,
                &["--voxel-size-um", "0.5", "--solver-config", &p(&solver_cfg)],
            ),
            vec!["solver.toml", "unknown field `tolerance`"],
        ),
        (
            with(&good, &["--voxel-size-um", "0.5", "--mode", "4d"]),
            vec!["4d"],
        ),
        (
            vec!["solve".into(), "--out".into(), p(&out)],
            vec!["--microstructure"],
        ),
    ];
    for (args, needles) in flag_cases {
        let r = run(&args);
        assert_clean_failure(&r, &needles);
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }

    // An output path that is a file: the solve runs, then writing fails cleanly.
    let file = write_file(dir, "a-file", "");
    let r = run([
        "solve",
        "--microstructure",
        good.to_str().unwrap(),
        "--voxel-size-um",
        "0.5",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_clean_failure(&r, &["a-file"]);
}

/// A microstructure.json edited by hand into something no raster can have is refused
/// before any work, never a panic, a hang or an exhausted memory.
#[test]
fn solve_rejects_an_impossible_microstructure_json() {
    let tmp = tempdir();
    let dir = tmp.path();
    let good = json(&tiny_geometry(dir).join("microstructure.json"));
    let mode = serde_json::json!([{"amplitude_um": 0.1, "periods": 1_000_000, "phase": 0.0, "direction": 0.0}]);
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("/grid/size", 0.into(), vec!["at least 8 pixels"]),
        (
            "/grid/pitch_um",
            (-5.0).into(),
            vec!["positive number of µm"],
        ),
        (
            "/grid/pitch_um",
            0.01.into(),
            vec!["smaller than the pixel"],
        ),
        (
            "/grid/size",
            1_000_000_000u64.into(),
            vec!["rasterised microstructure"],
        ),
        (
            "/microstructure/window_um",
            0.0.into(),
            vec!["must be positive"],
        ),
        (
            "/microstructure/z_period_um",
            (-1.0).into(),
            vec!["must be positive"],
        ),
        (
            "/microstructure/fibres/0/radius_um",
            (-3.0).into(),
            vec!["fibre 0: radius"],
        ),
        (
            "/microstructure/fibres/0/centre_um",
            serde_json::json!([1e300, 0.0]),
            vec!["fibre 0: centre", "outside"],
        ),
        (
            "/microstructure/fibres/0/modes",
            mode,
            vec!["1000000 periods", "1 to 64"],
        ),
        (
            "/microstructure/fibres",
            serde_json::json!([]),
            vec!["no fibres"],
        ),
    ];
    for (at, value, needles) in cases {
        let mut edited = good.clone();
        *edited.pointer_mut(at).unwrap() = value;
        let file = dir.join("edited.json");
        fs::write(&file, edited.to_string()).unwrap();
        let out = dir.join("out");
        let r = run(["solve", "--microstructure", &p(&file), "--out", &p(&out)]);
        let mut want = vec!["edited.json"];
        want.extend(&needles);
        assert_clean_failure(&r, &want);
        assert!(!out.exists(), "{at}: wrote {}", out.display());
    }
}

#[test]
fn geometry_rejects_bad_settings() {
    let tmp = tempdir();
    let dir = tmp.path();
    let cfg = write_file(dir, "packing.toml", TINY_PACKING);
    let unknown = write_file(dir, "unknown.toml", "window = 12.0\n");
    let out = dir.join("out");
    let base = vec![
        "geometry".to_string(),
        "--out".into(),
        p(&out),
        "--size".into(),
        "16".into(),
        "--slices".into(),
        "3".into(),
        "--config".into(),
        p(&cfg),
    ];
    for (flag, value, needles) in [
        ("--vf", "0.9", vec!["vf = 0.9", "0.75"]),
        ("--vf", "0", vec!["vf = 0"]),
        ("--tilt-std-deg", "45", vec!["tilt_std_deg = 45"]),
        ("--size", "4", vec!["--size", "at least 8 pixels"]),
        ("--slices", "0", vec!["--slices", "at least 1 slice"]),
        ("--pitch-um", "-2", vec!["--pitch-um", "positive number"]),
        (
            "--config",
            unknown.to_str().unwrap(),
            vec!["unknown.toml", "unknown field `window`"],
        ),
    ] {
        let args = if value.starts_with('-') {
            // A negative number must be attached to its flag.
            let mut a = base.clone();
            a.push(format!("{flag}={value}"));
            a
        } else {
            with_arg(&base, flag, value)
        };
        fails(args, &needles);
        assert!(!out.exists(), "{flag} {value}: wrote {}", out.display());
    }
    // A waviness far shorter than the slices (it once asked for 2 TB of path samples).
    let wavy = with_arg(&base, "--wave-amplitude-um", "1");
    fails(
        with_arg(&wavy, "--wave-wavelength-um", "1e-9"),
        &["wave_wavelength_um", "at most 64"],
    );
    assert!(!out.exists());
}

#[test]
fn evaluate_solve3d_baseline_is_fiberflow_solve_of_the_slices() {
    let tmp = tempdir();
    let config = write_file(tmp.path(), "gen.toml", TINY_GENERATOR);
    let data = tmp.path().join("data");
    ok(generate_args(&data, &config, 8));
    // No --model: a baseline needs the dataset alone.
    let report = tmp.path().join("solve3d.json");
    let r = ok([
        "evaluate",
        "--dataset",
        &p(&data),
        "--baseline",
        "solve3d",
        "--split",
        "test",
        "--limit",
        "1",
        "--json",
        &p(&report),
    ]);
    assert!(
        r.stdout.contains("baseline_solve3d: 1 samples"),
        "{}",
        r.stdout
    );
    let j = json(&report);
    let t = j["seconds_per_sample"].as_f64().unwrap();
    let t2 = j["seconds_2d_solves_per_sample"].as_f64().unwrap();
    assert!(t > 0.0 && (0.0..t).contains(&t2), "{t} {t2}");

    // The same sample as a user would solve it: its domain as a (S, H, W) stack.
    let npy = tmp.path().join("npy");
    ok([
        "dataset",
        "export",
        &p(&data),
        "--split",
        "test",
        "--out",
        &p(&npy),
    ]);
    let domain: ArrayD<f32> = read_npy(npy.join("domain.npy")).unwrap();
    let truth: ArrayD<f32> = read_npy(npy.join("U.npy")).unwrap();
    let dxyz: Array2<f64> = read_npy(npy.join("dxyz.npy")).unwrap();
    let stack: Array3<u8> = domain
        .index_axis(Axis(0), 0)
        .index_axis(Axis(1), 0)
        .mapv(|v| u8::from(v > 0.5))
        .into_dimensionality()
        .unwrap();
    write_npy(tmp.path().join("stack.npy"), &stack).unwrap();
    let um = |k: usize| format!("{}", dxyz[[0, k]] * 1e6);
    let solved = tmp.path().join("solved");
    solve(
        &tmp.path().join("stack.npy"),
        &solved,
        &["--voxel-size-um", &um(0), "--slice-pitch-um", &um(2)],
    );
    let u = npy4(&solved.join("U.npy"));
    let truth = truth.index_axis(Axis(0), 0);
    // Relative L2 error of each component over the fluid, by hand.
    let sample = &j["per_sample"][0];
    for (c, name) in ["rel_l2_u", "rel_l2_v", "rel_l2_w"].iter().enumerate() {
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        for ((idx, &t), &f) in truth
            .index_axis(Axis(1), c)
            .indexed_iter()
            .zip(stack.iter())
        {
            if f == 1 {
                let pred = f64::from(u[[idx[0], c, idx[1], idx[2]]]);
                err += (pred - f64::from(t)).powi(2);
                norm += f64::from(t).powi(2);
            }
        }
        let expected = (err / norm).sqrt();
        let got = sample[name].as_f64().unwrap();
        assert!(
            (got - expected).abs() <= 1e-6 * expected.max(1e-12),
            "{name}: evaluate {got} vs solve {expected}"
        );
    }
}

/// A slot inclined at 45° in x–z (fluid where (x − z) mod 64 < 32): no slice connects along
/// x on its own, the volume does. The 3D solve goes ahead from rest there, with a warning,
/// and finds the analytic slab permeability K = h²/48 (h = 32 dx/√2) with ⟨vz⟩ = ⟨vx⟩.
#[test]
fn a_stack_whose_slices_are_blocked_solves_through_z() {
    let tmp = tempdir();
    let n = 64;
    let mask = Array3::from_shape_fn((n, 4, n), |(z, _, x)| u8::from((x + n - z) % n < 32));
    let input = tmp.path().join("slot.npy");
    write_npy(&input, &mask).unwrap();
    let out = tmp.path().join("out");
    let r = ok([
        "solve",
        "--microstructure",
        input.to_str().unwrap(),
        "--voxel-size-um",
        "0.5",
        "--slice-pitch-um",
        "0.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        r.stderr
            .contains("their 2D flow is zero; the 3D flow crosses them through z"),
        "{}",
        r.stderr
    );
    let perm = json(&out.join("permeability.json"));
    let k = perm["k_3d_m2"].as_f64().unwrap();
    let exact = 32.0 * 32.0 / 96.0 * 0.25e-12;
    assert!((k / exact - 1.0).abs() < 0.01, "K {k:e} vs {exact:e}");
    let v = &perm["details"]["mean_velocity_3d_m_s"];
    let ratio = v[2].as_f64().unwrap() / v[0].as_f64().unwrap();
    assert!((ratio - 1.0).abs() < 1e-3, "vz/vx {ratio}");
}
