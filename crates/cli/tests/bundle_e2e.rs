//! Model bundles from the command line: the built-in model predicts a user's stack with no
//! `--model` and no training, and a trained run goes export → info → predict with the same
//! prediction as from its folder; damaged bundles are refused with a clear error.

mod common;

use common::*;
use ndarray::Array4;
use ndarray_npy::ReadNpyExt;
use std::fs;
use std::path::Path;

fn prediction(dir: &Path) -> Array4<f32> {
    Array4::<f32>::read_npy(fs::File::open(dir.join("U_pred.npy")).unwrap()).unwrap()
}

#[test]
fn the_builtin_model_predicts_a_stack_without_training() {
    let tmp = tempfile::tempdir().unwrap();
    let geometry = tmp.path().join("geometry");
    let g = geometry.display().to_string();
    ok([
        "geometry", "--size", "64", "--slices", "11", "--seed", SEED, "--out", &g,
    ]);
    let out = tmp.path().join("pred");
    let r = ok([
        "predict",
        "--microstructure",
        &format!("{g}/domain.npy"),
        "--voxel-size-um",
        "0.78125",
        "--slice-pitch-um",
        "5",
        "--samples",
        "2",
        "--out",
        &out.display().to_string(),
    ]);
    assert!(
        r.stderr.contains("using the built-in model"),
        "{}",
        r.context()
    );
    let pred = prediction(&out);
    assert_eq!(pred.dim(), (11, 3, 64, 64));
    assert!(pred.iter().all(|v| v.is_finite()));
    // Through the fluid along +x, with a real vertical component.
    let mean_vx = pred.index_axis(ndarray::Axis(1), 0).mean().unwrap();
    let vz = pred
        .index_axis(ndarray::Axis(1), 2)
        .mapv(f32::abs)
        .mean()
        .unwrap();
    assert!(mean_vx > 0.0 && vz > 0.0, "{mean_vx} {vz}");
    // Its card, and the check of its test samples.
    let info = ok(["model", "info"]);
    for needle in ["built-in model", "solve3d", "training data", "$ "] {
        assert!(info.stdout.contains(needle), "{needle}: {}", info.context());
    }
    let check = ok(["model", "info", "--check"]);
    assert!(
        check.stdout.contains("reproduces its card"),
        "{}",
        check.context()
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one exported bundle, then each way of damaging it
fn export_info_predict_round_trip_and_damaged_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_file(tmp.path(), "gen.toml", TINY_GENERATOR);
    let out = tmp.path().join("qs");
    ok(tiny_quickstart(&out, &cfg, ["1", "1", "1"]));
    let run = out.join("diffusion").display().to_string();
    let bundle = tmp.path().join("model.ffmodel");
    let b = bundle.display().to_string();
    let eval = out.join("eval/model.json").display().to_string();
    let export = ok([
        "model",
        "export",
        &run,
        "--out",
        &b,
        "--evaluation",
        &eval,
        "--command",
        "fiberflow quickstart --samples 12",
        "--data-commit",
        "abc123",
    ]);
    assert!(export.stdout.contains("wrote"), "{}", export.context());
    let info = ok(["model", "info", &b]);
    for needle in [
        "abc123",
        "fiberflow quickstart --samples 12",
        "model ",
        "vae stage 1",
    ] {
        assert!(info.stdout.contains(needle), "{needle}: {}", info.context());
    }
    ok(["model", "info", &b, "--check"]);
    let card: serde_json::Value =
        serde_json::from_str(&ok(["model", "info", &b, "--json"]).stdout).unwrap();
    assert_eq!(card["check"].as_array().unwrap().len(), 2);

    // The bundle predicts exactly what its run folder predicts.
    let data = out.join("data").display().to_string();
    let index = fs::read_to_string(out.join("data/splits.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let index = index["test"][0].to_string();
    let predict_refined = |model: &str, dir: &str, refine: &str| {
        ok([
            "predict",
            "--model",
            model,
            "--dataset",
            &data,
            "--index",
            &index,
            "--samples",
            "2",
            "--refine",
            refine,
            "--out",
            &tmp.path().join(dir).display().to_string(),
        ])
    };
    let predict = |model: &str, dir: &str| predict_refined(model, dir, "true");
    predict(&run, "from-run");
    predict(&b, "from-bundle");
    assert_eq!(
        prediction(&tmp.path().join("from-run")),
        prediction(&tmp.path().join("from-bundle"))
    );

    // A refiner of the run: trained on its estimates, predicts as the refined model from
    // the run folder and from its bundle, and `--refine false` gives the model alone.
    let refiner = tmp.path().join("refiner").display().to_string();
    ok([
        "train",
        "refiner",
        "--model",
        &run,
        "--dataset",
        &data,
        "--out",
        &refiner,
        "--epochs",
        "1",
        "--set",
        "lr=0.01",
    ]);
    ok(["plot", &refiner]);
    for png in ["loss.png", "errors.png"] {
        let bytes = fs::metadata(Path::new(&refiner).join(png)).unwrap().len();
        assert!(bytes > 1000, "{png}: {bytes} bytes");
    }
    let refined_bundle = tmp.path().join("refined.ffmodel").display().to_string();
    ok(["model", "export", &refiner, "--out", &refined_bundle]);
    let info = ok(["model", "info", &refined_bundle, "--check"]);
    assert!(
        info.stdout.contains("full-resolution refiner"),
        "{}",
        info.context()
    );
    predict(&refiner, "refined-run");
    predict(&refined_bundle, "refined-bundle");
    let refined = prediction(&tmp.path().join("refined-run"));
    assert_eq!(refined, prediction(&tmp.path().join("refined-bundle")));
    assert_ne!(refined, prediction(&tmp.path().join("from-run")));
    predict_refined(&refiner, "unrefined", "false");
    assert_eq!(
        prediction(&tmp.path().join("unrefined")),
        prediction(&tmp.path().join("from-run"))
    );

    // A truncated bundle, and a file that is none.
    let bytes = fs::read(&bundle).unwrap();
    let cut = tmp.path().join("cut.ffmodel");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let c = cut.display().to_string();
    fails(
        ["model", "info", &c],
        &["not a readable fiberflow model bundle", "truncated"],
    );
    fails(
        [
            "predict",
            "--model",
            &c,
            "--dataset",
            &data,
            "--index",
            &index,
            "--out",
            &tmp.path().join("p").display().to_string(),
        ],
        &["cut.ffmodel"],
    );
    fails(
        ["model", "info", &cfg.display().to_string()],
        &["not a readable fiberflow model bundle"],
    );
    // A VAE run cannot be exported.
    fails(
        [
            "model",
            "export",
            &out.join("vae-stage2").display().to_string(),
            "--out",
            &tmp.path().join("v.ffmodel").display().to_string(),
        ],
        &["VAE run"],
    );
}
