//! The whole pipeline from the command line on a tiny dataset: `quickstart` (generate,
//! both VAE stages, diffusion, four evaluations, prediction, report), its resumption, and
//! data-parallel training on two devices, and the refusals of `evaluate` and `predict`.

mod common;

use common::*;
use ndarray::Array4;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use std::fs;

#[test]
#[allow(clippy::too_many_lines)] // the whole quickstart, run once and resumed, its outputs checked in turn
fn quickstart_runs_the_pipeline_and_resumes_without_retraining() {
    let tmp = tempfile::tempdir().unwrap();
    // Three times the default viscosity: a command that computed K with the solver's
    // defaults instead of the dataset's physics would be off by 3×.
    let generator = format!("{TINY_GENERATOR}\n[flow.physics]\nviscosity_pa_s = 0.3\n");
    let cfg = write_file(tmp.path(), "gen.toml", &generator);
    let out = tmp.path().join("qs");
    let argv = |epochs: [&str; 3]| tiny_quickstart(&out, &cfg, epochs);
    ok(argv(["2", "1", "2"]));

    let report = fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "| model |",
        "| VAE only |",
        "| copy 2D |",
        "| 3D solve of the slices |",
        "s / sample",
        "comparison.png",
        "train diffusion",
    ] {
        assert!(
            report.contains(needle),
            "report.md lacks {needle}:\n{report}"
        );
    }
    assert!(
        fs::read_to_string(out.join("report.html"))
            .unwrap()
            .contains("<table>")
    );
    for f in [
        "vae-stage1/loss.png",
        "vae-stage2/errors.png",
        "diffusion/loss.png",
        "diffusion/errors.png",
        "diffusion/physics.png",
        "predict/comparison.png",
        "predict/prediction.vti",
        "eval/error_vs_time.png",
    ] {
        assert!(out.join(f).metadata().unwrap().len() > 1000, "{f}");
    }
    // The copy-2D baseline has vz error exactly 1 (it predicts vz = 0).
    let copy2d = json(&out.join("eval/copy2d.json"));
    let w = copy2d["summary"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "rel_l2_w")
        .unwrap()["mean"]
        .as_f64()
        .unwrap();
    assert!((w - 1.0).abs() < 1e-9, "{w}");
    // The solve-from-slices baseline ran with the dataset's own solver settings.
    let solve3d = json(&out.join("eval/solve3d.json"));
    assert_eq!(solve3d["mode"], "baseline_solve3d");
    assert!(solve3d["seconds_2d_solves_per_sample"].as_f64().unwrap() > 0.0);
    let model = json(&out.join("eval/model.json"));
    assert_eq!(model["mode"], "model");
    assert_eq!(model["model_sha256"].as_str().unwrap().len(), 64);
    assert!(!model["per_sample"].as_array().unwrap().is_empty());

    // The prediction: (S, 3, H, W), finite, zero in fibres.
    let pred =
        Array4::<f32>::read_npy(fs::File::open(out.join("predict/U_pred.npy")).unwrap()).unwrap();
    assert_eq!(pred.dim(), (3, 3, 16, 16));
    assert!(pred.iter().all(|v| v.is_finite()));
    let index = json(&out.join("data/splits.json"))["test"][0]
        .as_u64()
        .unwrap();
    let mask = safetensors_layout(&out.join(format!("data/samples/{index:06}.safetensors")));
    assert!(mask.contains_key("domain"));
    // K of the true field, as `predict` computes it, agrees with the solver's own.
    let k_true = json(&out.join("predict/summary.json"))["k_true_m2"]
        .as_f64()
        .unwrap();
    let k_solver = json(&out.join("data/dataset.json"))["samples"][index as usize]["k_3d_m2"]
        .as_f64()
        .unwrap();
    assert!(
        (k_true / k_solver - 1.0).abs() < 0.1,
        "{k_true} vs {k_solver}"
    );

    // A rerun resumes: no training epoch is repeated.
    let before = json(&out.join("diffusion/log.json"))["history"].clone();
    ok(argv(["2", "1", "2"]));
    assert_eq!(json(&out.join("diffusion/log.json"))["history"], before);
    // ... and its report counts the first run's work, not the seconds of the second.
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("over more than one run"), "{report}");

    // Refusals with clear messages.
    let diff = out.join("diffusion").display().to_string();
    let data = out.join("data").display().to_string();

    // Data-parallel training from the CLI: two devices (sharing the CPU here) each take
    // one batch of every step; with fewer batches per step than devices it is refused.
    let vae2 = out.join("vae-stage2").display().to_string();
    let parallel = tmp.path().join("parallel");
    let train = |device: &str, accumulation: &str| -> Vec<String> {
        [
            "train",
            "diffusion",
            "--dataset",
            &data,
            "--vae",
            &vae2,
            "--epochs",
            "1",
            "--device",
            device,
            "--set",
            accumulation,
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([parallel.display().to_string()])
        .collect()
    };
    fails(train("cpu,cpu", "accumulation=1"), &["accumulation=2"]);
    fails(
        train("cpu,tpu", "accumulation=2"),
        &["unknown device `tpu`"],
    );
    // Trained without the 2D-pressure condition, for the unused --pressure2d below.
    let mut argv = train("cpu,cpu", "accumulation=2");
    argv.extend(["--set".into(), "pressure_condition=false".into()]);
    ok(argv);
    let parallel_log = json(&parallel.join("log.json"));
    assert_eq!(parallel_log["config"]["accumulation"], 2);
    assert_eq!(parallel_log["config"]["pressure_condition"], false);

    // `plot` redraws a run's curves anywhere, and refuses a folder that is no run.
    let plots = tmp.path().join("plots");
    let stage1 = out.join("vae-stage1").display().to_string();
    ok(["plot", &stage1, "--out", &plots.display().to_string()]);
    for f in ["loss.png", "errors.png"] {
        assert!(plots.join(f).metadata().unwrap().len() > 1000, "{f}");
    }
    fails(["plot", &data], &["log.json", "training run"]);
    fails(
        [
            "evaluate",
            "--model",
            &diff,
            "--dataset",
            &data,
            "--sanity-mode",
            "--baseline",
            "copy2d",
            "--json",
            "/dev/null",
        ],
        &["--sanity-mode", "--baseline"],
    );
    fails(
        [
            "evaluate",
            "--dataset",
            &data,
            "--score",
            "vae",
            "--baseline",
            "copy2d",
            "--json",
            "/dev/null",
        ],
        &["--score", "cannot be used with"],
    );
    // A checksum without a URL to check, and two URLs sharing one checksum.
    let sha = "ab".repeat(32);
    let eval_json = tmp.path().join("e.json").display().to_string();
    let evaluate = |dataset: &str, model: &str| {
        let args = [
            "evaluate",
            "--model",
            model,
            "--dataset",
            dataset,
            "--sha256",
            &sha,
            "--json",
            &eval_json,
        ];
        args.map(String::from)
    };
    fails(evaluate(&data, &diff), &["--sha256 is for", "URL"]);
    fails(
        evaluate("https://127.0.0.1:9/d.tar", "https://127.0.0.1:9/m.tar"),
        &["URL#sha256=HEX"],
    );
    let mask = tmp.path().join("mask.npy");
    // Fluid with one square fibre through every slice.
    ndarray::Array3::<u8>::from_shape_fn((3, 16, 16), |(_, y, x)| {
        u8::from(!((4..8).contains(&y) && (4..8).contains(&x)))
    })
    .write_npy(fs::File::create(&mask).unwrap())
    .unwrap();
    // Predictions from the stack with a given 2D flow (and pressure).
    let user_predict = |flow: &std::path::Path, pressure: Option<&std::path::Path>| {
        let mut args: Vec<String> = [
            "predict",
            "--model",
            &diff,
            "--microstructure",
            &mask.display().to_string(),
            "--flow2d",
            &flow.display().to_string(),
            "--voxel-size-um",
            "0.75",
            "--slice-pitch-um",
            "2",
            "--samples",
            "1",
            "--out",
            &tmp.path().join("user").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = pressure {
            args.extend(["--pressure2d".to_string(), p.display().to_string()]);
        }
        args
    };
    let flow = tmp.path().join("flow.npy");
    Array4::<f32>::zeros((3, 3, 8, 8))
        .write_npy(fs::File::create(&flow).unwrap())
        .unwrap();
    fails(user_predict(&flow, None), &["shape", "(3, 3, 16, 16)"]);
    // The model is conditioned on the 2D pressure: a 2D flow without it is refused.
    Array4::<f32>::zeros((3, 3, 16, 16))
        .write_npy(fs::File::create(&flow).unwrap())
        .unwrap();
    fails(user_predict(&flow, None), &["p_2d", "--pressure2d"]);
    // With the pressure of `fiberflow solve --mode 2d` it predicts; a 3-channel file in
    // its place is refused by shape.
    let solved = tmp.path().join("solved");
    ok([
        "solve",
        "--microstructure",
        &mask.display().to_string(),
        "--voxel-size-um",
        "0.75",
        "--slice-pitch-um",
        "2",
        "--mode",
        "2d",
        "--out",
        &solved.display().to_string(),
    ]);
    let u2d = solved.join("U_2d.npy");
    ok(user_predict(&u2d, Some(&solved.join("p_2d.npy"))));
    // A voxel size far from the training data's, and an all-zero 2D flow, are warned about
    // (predicted into another folder: `user/` is compared below).
    let elsewhere = |mut argv: Vec<String>| {
        let at = argv.iter().position(|a| a == "--out").unwrap() + 1;
        argv[at] = tmp.path().join("warned").display().to_string();
        argv
    };
    let mut argv = elsewhere(user_predict(&u2d, Some(&solved.join("p_2d.npy"))));
    let at = argv.iter().position(|a| a == "0.75").unwrap();
    argv[at] = "7.5".into();
    let r = ok(argv);
    assert!(
        r.stderr
            .contains("the voxel size 7.5000 µm is 10.00× the 0.7500 µm"),
        "{}",
        r.stderr
    );
    let r = ok(elsewhere(user_predict(
        &flow,
        Some(&solved.join("p_2d.npy")),
    )));
    assert!(
        r.stderr.contains("the 2D flow is zero everywhere"),
        "{}",
        r.stderr
    );
    // A 2D flow whose values overflow the networks ends in an error, and nothing is written.
    let absurd = tmp.path().join("absurd.npy");
    Array4::<f32>::from_elem((3, 3, 16, 16), 1e30)
        .write_npy(fs::File::create(&absurd).unwrap())
        .unwrap();
    let argv = elsewhere(user_predict(&absurd, Some(&solved.join("p_2d.npy"))));
    let inf_out = tmp.path().join("warned");
    let _ = fs::remove_dir_all(&inf_out);
    fails(argv, &["non-finite", "nothing was written"]);
    assert!(!inf_out.join("U_pred.npy").exists());
    // A VAE run where a diffusion run belongs is named as such.
    fails(
        [
            "predict",
            "--model",
            &out.join("vae-stage1").display().to_string(),
            "--dataset",
            &data,
            "--index",
            "0",
            "--out",
            &tmp.path().join("vae-as-model").display().to_string(),
        ],
        &["is a VAE run (stage 1)", "train diffusion --vae"],
    );
    // An 11×1024×1024 stack (which aborted on allocation) is estimated and refused first.
    let big = tmp.path().join("big.npy");
    ndarray::Array3::<u8>::from_shape_fn((11, 1024, 1024), |(_, y, x)| u8::from(x + y > 8))
        .write_npy(fs::File::create(&big).unwrap())
        .unwrap();
    let mut argv = user_predict(&u2d, None);
    let at = argv
        .iter()
        .position(|a| a == &mask.display().to_string())
        .unwrap();
    argv[at] = big.display().to_string();
    fails(
        argv,
        &["draws of a 11×1024×1024 stack needs", "memory budget"],
    );
    let u = Array4::<f32>::read_npy(fs::File::open(tmp.path().join("user/U_pred.npy")).unwrap())
        .unwrap();
    assert_eq!(u.dim(), (3, 3, 16, 16));
    assert!(u.iter().all(|v| v.is_finite()));
    // The same prediction with the networks in bf16 agrees to bf16's precision.
    let mut argv = user_predict(&u2d, Some(&solved.join("p_2d.npy")));
    argv.extend(["--precision".into(), "bf16".into()]);
    ok(argv);
    let half = Array4::<f32>::read_npy(fs::File::open(tmp.path().join("user/U_pred.npy")).unwrap())
        .unwrap();
    let difference = (&half - &u).mapv(|d| d * d).sum().sqrt() / u.mapv(|v| v * v).sum().sqrt();
    assert!(difference > 0.0 && difference < 0.02, "{difference}");
    let summary = fs::read_to_string(tmp.path().join("user/summary.json")).unwrap();
    assert!(summary.contains("\"precision\": \"bf16\""), "{summary}");
    fails(user_predict(&u2d, Some(&u2d)), &["shape", "(3, 1, 16, 16)"]);
    // A pressure given to a model that takes none is ignored, with a warning.
    let mut argv = user_predict(&u2d, Some(&solved.join("p_2d.npy")));
    argv[2] = parallel.display().to_string();
    let r = ok(argv);
    assert!(
        r.stderr.contains("--pressure2d is not read"),
        "{}",
        r.stderr
    );
    fails(
        [
            "predict",
            "--model",
            &tmp.path().join("nothing").display().to_string(),
            "--dataset",
            &data,
            "--index",
            "0",
            "--out",
            "/tmp/x",
        ],
        &["log.json"],
    );
    // A stack whose size does not fit the networks, a non-binary mask and a missing file.
    let predict_mask = |name: &str, mask: ndarray::Array3<u8>| -> Vec<String> {
        let path = tmp.path().join(name);
        mask.write_npy(fs::File::create(&path).unwrap()).unwrap();
        let out = tmp.path().join("p");
        [
            "predict",
            "--model",
            &diff,
            "--microstructure",
            &path.display().to_string(),
            "--voxel-size-um",
            "0.75",
            "--slice-pitch-um",
            "2",
            "--out",
            &out.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let square = |n: usize, v: u8| {
        ndarray::Array3::<u8>::from_shape_fn((3, n, n), |(_, y, x)| {
            if (4..8).contains(&y) && (4..8).contains(&x) {
                0
            } else {
                v
            }
        })
    };
    fails(predict_mask("odd.npy", square(20, 1)), &["multiples of"]);
    fails(predict_mask("grey.npy", square(16, 2)), &["only 0 and 1"]);
    fails(
        [
            "predict",
            "--model",
            &diff,
            "--microstructure",
            "/nonexistent.npy",
            "--voxel-size-um",
            "1",
            "--slice-pitch-um",
            "2",
            "--out",
            "/tmp/x",
        ],
        &["no such file"],
    );
}
