//! `fiberflow bench vae|diffusion|predict|all` and `fiberflow vae inspect` end to end, on
//! tiny sizes.

mod common;

use common::{TINY_GENERATOR, fails, generate_args, json, ok, write_file};
use serde_json::Value;
use std::path::Path;

/// Width and height from a PNG's IHDR chunk, read by hand (PNG spec §11.2.2).
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is no PNG",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

#[test]
#[allow(clippy::too_many_lines)] // one `bench all` run, each section of its report checked
fn bench_all_writes_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let o = out.display().to_string();
    let args = [
        "bench",
        "all",
        "--size",
        "32",
        "--slices",
        "1",
        "--batch",
        "1",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--sampler-steps",
        "2",
        "--json",
        &o,
    ];
    let r = ok(args);
    assert!(
        r.stdout.contains("faster than the 3D solve"),
        "{}",
        r.stdout
    );
    let j = json(&out);
    assert!(j["machine"]["threads"].as_u64().unwrap() >= 1);
    assert_eq!(j["machine"]["command"][1], "bench");

    let solver = &j["solver"];
    assert!(f(&solver["memory_bandwidth_gbs"]) > 0.0);
    assert_eq!(solver["kernels"].as_array().unwrap().len(), 2);
    for k in solver["kernels"].as_array().unwrap() {
        assert!(f(&k["stream_pattern_gbs"]) > 0.0 && f(&k["stream_pattern_ratio"]) > 0.0);
    }
    let settings: Vec<&str> = solver["convergence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["settings"].as_str().unwrap())
        .collect();
    assert_eq!(settings, ["defaults", "before 2026-12-06", "cold start"]);

    // Training steps: the default, the full-resolution VAE it replaced and the reference
    // architecture, batch 1, one timed step each.
    let vae = j["vae"].as_array().unwrap();
    assert_eq!(vae.len(), 3);
    for (row, arch) in vae.iter().zip(["default", "full_resolution", "reference"]) {
        assert_eq!(row["architecture"], arch);
        assert_eq!(row["input"], serde_json::json!([1, 3, 1, 32, 32]));
        assert_eq!(row["timing"]["seconds"].as_array().unwrap().len(), 1);
        assert!(close(
            f(&row["seconds_per_sample"]),
            f(&row["timing"]["median_s"])
        ));
        assert!(f(&row["seconds_per_sample"]) > 0.0);
        assert!(row["skipped"].is_null());
    }
    // The earlier default's parameter count, and the reference PyTorch VAE's:
    // 35,354,768 (encoder) + 41,715,459 (decoder).
    assert_eq!(vae[1]["parameters"], 179_267);
    assert_eq!(vae[2]["parameters"], 77_070_227);
    if cfg!(target_os = "linux") {
        // The reference VAE's weights alone are 308 MB, with AdamW's moments 3× that.
        let m = &vae[2]["memory"];
        assert!(
            f(&m["peak_rss_mib"]) - f(&m["rss_before_mib"]) > 800.0,
            "{m}"
        );
    }
    let diffusion = j["diffusion"].as_array().unwrap();
    // Noisy latent ⊕ condition (8 + 8) ⊕ geometry (2) ⊕ pressure change (1) on the
    // 32/4 = 8 latent.
    assert_eq!(diffusion[0]["input"], serde_json::json!([1, 19, 1, 8, 8]));
    assert!(f(&diffusion[0]["seconds_per_sample"]) > 0.0);
    // The reference U-Net halves its latent four times: 8 × 8 does not fit.
    assert_eq!(diffusion[1]["architecture"], "reference");
    let why = diffusion[1]["skipped"].as_str().unwrap();
    assert!(why.contains("divisible"), "{why}");

    let predict = &j["predict"];
    assert_eq!(predict["sample"]["size"], 32);
    assert_eq!(predict["sample"]["slices"], 1);
    assert_eq!(predict["precision"], "f32");
    let (t2, t3) = (
        f(&predict["solve"]["wall_2d_s"]),
        f(&predict["solve"]["wall_3d_s"]),
    );
    assert!(t3 > 0.0 && t2 > 0.0);
    let rows = predict["rows"].as_array().unwrap();
    let kinds: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["predictor"].as_str().unwrap(),
                r["sampler"].as_str(),
                r["nfe"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("direct", None, 1),
            ("diffusion", Some("dpm_solver"), 2),
            ("diffusion", Some("ddim"), 2),
            // The built-in model, with its own sampler: what `predict` costs a user.
            ("diffusion", Some("dpm_solver"), 10)
        ]
    );
    assert_eq!(rows[3]["model"], "built-in");
    assert!(rows[3]["architecture"].is_null());
    for r in rows {
        let t = f(&r["timing"]["median_s"]);
        assert!(close(f(&r["speedup"]["vs_3d_solve"]), t3 / t), "{r}");
        assert!(
            close(f(&r["speedup"]["with_2d_solves"]), (t2 + t3) / (t2 + t)),
            "{r}"
        );
    }
}

#[test]
fn bench_refuses_bad_arguments_before_measuring() {
    fails(
        ["bench", "vae", "--size", "24"],
        &["--size 24", "divisible by 16"],
    );
    fails(["bench", "diffusion", "--steps", "0"], &["--steps"]);
    fails(["bench", "vae", "--batch", "0"], &["--batch"]);
    fails(
        ["bench", "predict", "--sampler-steps", "0"],
        &["--sampler-steps 0"],
    );
    fails(
        ["bench", "all", "--sampler-steps", "5000"],
        &["--sampler-steps 5000"],
    );
    fails(["bench", "vae", "--device", "tpu"], &["unknown device"]);
    fails(["bench", "vae", "--device", "cpu,cpu"], &["`cpu` twice"]);
    fails(
        ["bench", "vae", "--default-only", "--reference"],
        &["cannot be used with"],
    );
    #[cfg(not(feature = "libtorch"))]
    fails(
        ["bench", "vae", "--device", "cpu,libtorch"],
        &["no LibTorch backend", "setup-libtorch.sh"],
    );
    fails(["bench", "everything"], &["invalid value"]);
}

#[test]
#[allow(clippy::too_many_lines)] // one trained VAE checked from its draws to its validation numbers
fn vae_inspect_draws_both_stages_and_matches_the_validation() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "gen.toml", TINY_GENERATOR);
    let data = dir.path().join("data");
    ok(generate_args(&data, &config, 8));
    let d = data.display().to_string();
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    let (s1, s2) = (v1.display().to_string(), v2.display().to_string());
    let tiny = ["--set", "vae.channels=[8,16]", "--set", "vae.groups=4"];
    let mut stage1 = vec![
        "train",
        "vae",
        "--stage",
        "1",
        "--dataset",
        &d,
        "--out",
        &s1,
        "--epochs",
        "1",
    ];
    stage1.extend(tiny);
    ok(stage1);
    ok([
        "train",
        "vae",
        "--stage",
        "2",
        "--dataset",
        &d,
        "--stage1",
        &s1,
        "--out",
        &s2,
        "--epochs",
        "1",
    ]);

    for (run, formula) in [(&v1, "D3D(E3D(U))"), (&v2, "D3D(E2D(U_2d))")] {
        let png = dir.path().join("inspect.png");
        let (r, p) = (run.display().to_string(), png.display().to_string());
        let out = ok([
            "vae",
            "inspect",
            "--vae",
            &r,
            "--dataset",
            &d,
            "--split",
            "val",
            "--out",
            &p,
        ]);
        // 16×16 panels are drawn ×16 = 256 px: 4 columns of 256 + 8 + 14 + 64 px with
        // 16 px margins and 18 px gaps; 3 rows of 24 + 256 px with 14 px gaps, 44 px of
        // header and 30 of footer (crates/viz/src/comparison.rs).
        assert_eq!(
            png_size(&png),
            (2 * 16 + 4 * 342 + 3 * 18, 44 + 3 * 280 + 2 * 14 + 30)
        );
        // The validation split is one sample, so the errors are those the trainer logged
        // for it (stage 2 logs the cross-reconstruction D3D(E2D(U_2d))).
        let log = json(&run.join("log.json"));
        let e = &log["history"][0]["val_errors"];
        let expect = format!(
            "{formula}: relative L2 error vx {:.3} vy {:.3} vz {:.3}",
            f(&e["relative_l2"][0]),
            f(&e["relative_l2"][1]),
            f(&e["relative_l2"][2])
        );
        assert!(
            out.stdout.contains(&expect),
            "{expect} not in {}",
            out.stdout
        );
    }

    let png = dir.path().join("bad.png").display().to_string();
    let base = [
        "vae",
        "inspect",
        "--vae",
        &s1,
        "--dataset",
        &d,
        "--out",
        &png,
    ];
    let with = |extra: &[&str]| {
        base.iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    ok(with(&["--index", "2", "--slice", "0"]));
    fails(with(&["--index", "99"]), &["no sample 99"]);
    fails(with(&["--slice", "3"]), &["--slice 3", "3 slices"]);
    fails(
        with(&["--index", "1", "--split", "val"]),
        &["cannot be used with"],
    );
    fails(
        [
            "vae",
            "inspect",
            "--vae",
            &d,
            "--dataset",
            &d,
            "--out",
            &png,
        ],
        &["log.json", "VAE run"],
    );
}
