//! End-to-end tests of `fiberflow generate` and `fiberflow dataset` on tiny datasets:
//! resuming after `kill -9`, sharding and merging, export to the reference's `.pt` layout
//! (loaded by PyTorch itself when one is installed), and clear errors on broken input.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Checks a finished dataset of `n` tiny samples: every sample file complete, one record
/// each, `dataset.json` listing them in order, no leftover temporary file.
fn assert_complete(dir: &Path, n: usize) {
    assert_eq!(temp_files(dir), Vec::<String>::new(), "{}", dir.display());
    assert_eq!(record_indices(dir), (0..n).collect::<Vec<_>>());
    for i in 0..n {
        assert_valid_sample(&dir.join(format!("samples/{i:06}.safetensors")), 3, 16);
    }
    let manifest = json(&dir.join("dataset.json"));
    let samples = manifest["samples"].as_array().unwrap();
    assert_eq!(samples.len(), n, "{}", dir.display());
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s["index"], i);
        assert_eq!(s["file"], format!("samples/{i:06}.safetensors"));
        assert_eq!(s["k_2d_m2"].as_array().unwrap().len(), 3);
        assert!(s["k_3d_m2"].as_f64().unwrap() > 0.0, "{s}");
    }
    assert_eq!(manifest["shape"]["slices"], 3);
    assert_eq!(manifest["shape"]["height"], 16);
    let splits = json(&dir.join("splits.json"));
    let split_total: usize = ["train", "val", "test"]
        .iter()
        .map(|k| splits[*k].as_array().unwrap().len())
        .sum();
    assert_eq!(split_total, n);
    assert!(dir.join("statistics.json").is_file());
}

fn info_json(dir: &Path) -> Value {
    let r = ok(["dataset", "info", "--json", dir.to_str().unwrap()]);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn inode(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

#[test]
#[allow(clippy::too_many_lines)] // one killed and resumed generation compared with an uninterrupted one
fn generate_killed_with_sigkill_resumes_to_the_uninterrupted_result() {
    const N: usize = 30;
    let tmp = tempdir();
    let cfg = write_file(tmp.path(), "gen.toml", TINY_GENERATOR);

    let reference = tmp.path().join("reference");
    let r = ok(generate_args(&reference, &cfg, N));
    assert!(
        r.stdout.contains(&format!("samples     {N} of")),
        "{}",
        r.stdout
    );
    assert_complete(&reference, N);

    // One worker thread so the run lasts long enough (~1 s) to be caught in the middle.
    let killed = tmp.path().join("killed");
    let mut child = fiberflow()
        .args(["--threads", "1"])
        .args(generate_args(&killed, &cfg, N))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut caught_mid_run = loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "generate failed on its own: {status}");
            break false;
        }
        if record_indices(&killed).len() >= 3 {
            break true;
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("no sample was finished within two minutes");
        }
        sleep(Duration::from_millis(1));
    };
    if caught_mid_run {
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(status.signal() == Some(9) || status.success(), "{status}");
        // It may have finished, or got as far as writing dataset.json, between the poll
        // and the kill; then the kill is simulated below.
        caught_mid_run = record_indices(&killed).len() < N;
    }

    eprintln!(
        "killed mid-run: {caught_mid_run}, {} of {N} samples finished",
        record_indices(&killed).len()
    );
    if caught_mid_run {
        assert!(
            !killed.join("dataset.json").exists(),
            "dataset.json written before the samples were complete"
        );
    } else {
        // Simulate a kill after the first half: drop everything written later.
        eprintln!("note: generate finished before it could be killed; simulating the kill");
        for name in ["dataset.json", "splits.json", "statistics.json"] {
            let _ = fs::remove_file(killed.join(name));
        }
        for i in N / 2..N {
            fs::remove_file(killed.join(format!("samples/{i:06}.json"))).unwrap();
            fs::remove_file(killed.join(format!("samples/{i:06}.safetensors"))).unwrap();
        }
    }
    let done = record_indices(&killed);
    assert!(done.len() >= 3, "{done:?}");
    // Killed between a sample file and its record: the sample file stays, its record not.
    let no_record = *done.last().unwrap();
    fs::remove_file(killed.join(format!("samples/{no_record:06}.json"))).unwrap();
    // A sample file cut short behind an intact record (a disk that lost the tail).
    let cut = done[0];
    let cut_path = killed.join(format!("samples/{cut:06}.safetensors"));
    let bytes = fs::read(&cut_path).unwrap();
    fs::write(&cut_path, &bytes[..bytes.len() / 2]).unwrap();
    // Leftovers of writes in flight.
    let leftovers = [
        killed.join(format!("samples/.{:06}.safetensors.4242.tmp", N - 1)),
        killed.join(format!("samples/.{:06}.json.4242.tmp", N - 1)),
        killed.join(".dataset.json.4242.tmp"),
    ];
    for path in &leftovers {
        fs::write(path, &bytes[..100]).unwrap();
    }
    let untouched: Vec<(usize, u64)> = done[1..done.len() - 1]
        .iter()
        .map(|&i| {
            (
                i,
                inode(&killed.join(format!("samples/{i:06}.safetensors"))),
            )
        })
        .collect();

    let r = ok(generate_args(&killed, &cfg, N));
    assert!(
        r.stdout.contains(&format!("samples     {N} of")),
        "{}",
        r.stdout
    );
    for path in &leftovers {
        assert!(!path.exists(), "{} was not cleaned up", path.display());
    }
    assert_complete(&killed, N);
    // Finished samples are kept, not recomputed.
    for (i, ino) in untouched {
        assert_eq!(
            inode(&killed.join(format!("samples/{i:06}.safetensors"))),
            ino,
            "finished sample {i} was rewritten"
        );
    }
    // Same bytes as the uninterrupted run; JSON differs only in timings (`wall_s`).
    assert_same_dataset(&reference, &killed);
    let info = info_json(&killed);
    assert_eq!(info["n_samples"], N);
    assert_eq!(info["converged"], N);
    assert_eq!(info["statistics"]["status"], "current");
}

#[test]
fn shards_merge_into_the_single_run_dataset() {
    const N: usize = 6;
    let tmp = tempdir();
    let cfg = write_file(tmp.path(), "gen.toml", TINY_GENERATOR);
    let single = tmp.path().join("single");
    ok(generate_args(&single, &cfg, N));

    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, shard, indices) in [(&a, "0/2", [0, 2, 4]), (&b, "1/2", [1, 3, 5])] {
        let mut args = generate_args(dir, &cfg, N);
        args.extend(["--shard".into(), shard.into()]);
        let r = ok(args);
        assert!(
            r.stdout
                .contains(&format!("shard {shard} complete (3 samples)")),
            "{}",
            r.stdout
        );
        assert_eq!(record_indices(dir), indices);
        assert!(
            !dir.join("dataset.json").exists(),
            "a shard is not a dataset"
        );
    }
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let n = N.to_string();

    // Incomplete, duplicated, mismatched or self-overlapping merges are refused.
    let out = tmp.path().join("bad");
    // A count far beyond the shards is counted, not listed (it exhausted memory once).
    for (samples, needles) in [
        (n.clone(), vec!["lack 3", "1, 3, 5"]),
        (
            usize::MAX.to_string(),
            vec!["the shards lack", "1, 3, 5", "more)"],
        ),
    ] {
        let merge_a = ["dataset", "merge", &s(&a), "--out", &s(&out)];
        fails(
            with_arg(&merge_a.map(String::from), "--samples", &samples),
            &needles,
        );
    }
    fails(
        ["dataset", "merge", &s(&a), &s(&a), "--out", &s(&out)],
        &["also in"],
    );
    fails(
        ["dataset", "merge", &s(&a), &s(&b), "--out", &s(&a)],
        &["must not be one of the shards"],
    );
    let other = tmp.path().join("other-seed");
    let args = with_arg(&generate_args(&other, &cfg, N), "--shard", "1/2");
    ok(with_arg(&args, "--seed", "4"));
    fails(
        ["dataset", "merge", &s(&a), &s(&other), "--out", &s(&out)],
        &["differs", "generator"],
    );
    assert!(!out.exists(), "a refused merge created its output");

    let merged = tmp.path().join("merged");
    let r = ok([
        "dataset",
        "merge",
        &s(&a),
        &s(&b),
        "--out",
        &s(&merged),
        "--samples",
        &n,
    ]);
    assert!(r.stdout.contains("merged 2 shards"), "{}", r.stdout);
    assert_complete(&merged, N);
    assert_same_dataset(&single, &merged);
    // Merging again into the finished output is a no-op.
    ok([
        "dataset",
        "merge",
        &s(&a),
        &s(&b),
        "--out",
        &s(&merged),
        "--samples",
        &n,
    ]);
    assert_same_dataset(&single, &merged);
}

#[test]
fn generate_rejects_bad_configs_before_any_work() {
    let tmp = tempdir();
    let dir = tmp.path();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown-top.toml",
            "vf = [0.3, 0.4]\nfibres = 3\n",
            &["invalid config", "unknown field `fibres`"],
        ),
        (
            "unknown-packing.toml",
            "[packing]\nwindow_um = 12.0\nradius_um = 2.0\n",
            &["invalid config", "unknown field `radius_um`"],
        ),
        (
            "unknown-solver.toml",
            "[flow.lbm]\ntolerance = 1e-6\n",
            &["invalid config", "unknown field `tolerance`"],
        ),
        (
            "reversed.toml",
            "vf = [0.5, 0.3]\n",
            &["vf range [0.5, 0.3]", "ordered"],
        ),
        ("too-dense.toml", "vf = [0.4, 0.9]\n", &["vf = 0.9", "0.75"]),
        (
            "small-window.toml",
            "[packing]\nwindow_um = 6.0\nradius_mean_um = 2.0\n",
            &["window_um = 6", "two fibre diameters"],
        ),
        ("wrong-type.toml", "vf = 0.4\n", &["invalid config"]),
        ("bad.toml", "vf = [0.3, \n", &["invalid config"]),
        (
            "unknown.json",
            r#"{"vf": [0.3, 0.4], "extra": 1}"#,
            &["unknown field `extra`"],
        ),
        ("config.yaml", "vf: [0.3, 0.4]\n", &[".toml or .json"]),
    ];
    for (i, (name, text, needles)) in cases.iter().enumerate() {
        let cfg = write_file(dir, name, text);
        let out = dir.join(format!("out{i}"));
        fails(generate_args(&out, &cfg, 2), needles);
        assert!(!out.exists(), "{name}: created {}", out.display());
    }
    let cfg = write_file(dir, "gen.toml", TINY_GENERATOR);
    let out = dir.join("out");
    fails(
        generate_args(&out, &dir.join("missing.toml"), 2),
        &["missing.toml", "cannot read"],
    );
    let args = generate_args(&out, &cfg, 2);
    for (flag, value, needle) in [
        ("--samples", "0", "--samples must be at least 2"),
        ("--shard", "2/2", "invalid shard"),
        ("--shard", "x", "invalid shard"),
        ("--size", "4", "at least 8 pixels"),
        ("--pitch-um", "0", "positive number of µm"),
        ("--pitch-um", "0.01", "lattice plane per slice"),
        ("--split-mode", "random", "random"),
    ] {
        fails(with_arg(&args, flag, value), &[needle]);
    }
    assert!(!out.exists());

    // A folder made with other arguments is never extended.
    ok(generate_args(&out, &cfg, 2));
    let args = generate_args(&out, &cfg, 2);
    fails(
        with_arg(&args, "--seed", "4"),
        &["header.json", "different generator"],
    );
    fails(
        with_arg(&args, "--size", "24"),
        &["header.json", "different shape"],
    );
    assert_eq!(record_indices(&out), [0, 1]);
}

#[test]
fn generate_keeps_unconverged_samples_and_warns() {
    let tmp = tempdir();
    let text = format!("{TINY_GENERATOR}\n[flow.lbm]\nmax_iterations = 100\ntol = 1e-12\n");
    let cfg = write_file(tmp.path(), "gen.toml", &text);
    let out = tmp.path().join("d");
    let r = ok(generate_args(&out, &cfg, 2));
    assert!(
        r.stderr
            .contains("warning: 2 samples did not converge; see `converged` in dataset.json"),
        "{}",
        r.stderr
    );
    let manifest = json(&out.join("dataset.json"));
    for s in manifest["samples"].as_array().unwrap() {
        assert_eq!(s["converged"], false, "{s}");
        assert_eq!(s["extra"]["solve"]["solve_3d"]["iterations"], 100);
    }
    assert_eq!(info_json(&out)["converged"], 0);
}

#[test]
fn dataset_commands_name_the_broken_file() {
    let tmp = tempdir();
    let dir = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let empty = dir.join("empty");
    fs::create_dir(&empty).unwrap();
    for cmd in ["info", "stats", "export"] {
        let mut args = vec!["dataset".to_string(), cmd.into(), s(&empty)];
        if cmd == "export" {
            args.extend(["--out".into(), s(&dir.join("export"))]);
        }
        fails(args, &["dataset.json", "not found"]);
    }
    fails(
        ["dataset", "info", &s(&dir.join("nowhere"))],
        &["nowhere", "not found"],
    );

    let cfg = write_file(dir, "gen.toml", TINY_GENERATOR);
    let good = dir.join("good");
    ok(generate_args(&good, &cfg, 4));
    let r = ok(["dataset", "info", &s(&good)]);
    assert!(r.stdout.contains("converged   4 of 4"), "{}", r.stdout);
    let info = info_json(&good);
    assert_eq!(info["n_samples"], 4);
    assert_eq!(info["shape"]["width"], 16);
    let r = ok(["dataset", "stats", &s(&good)]);
    assert!(r.stdout.contains("up to date"), "{}", r.stdout);

    // A shard (or a killed run): records but no dataset.json.
    let unfinished = dir.join("unfinished");
    copy_dir(&good, &unfinished);
    fs::remove_file(unfinished.join("dataset.json")).unwrap();
    fails(
        ["dataset", "info", &s(&unfinished)],
        &["dataset.json", "not found", "merge"],
    );

    let broken_manifest = dir.join("broken-manifest");
    copy_dir(&good, &broken_manifest);
    let text = fs::read(broken_manifest.join("dataset.json")).unwrap();
    fs::write(
        broken_manifest.join("dataset.json"),
        &text[..text.len() / 2],
    )
    .unwrap();
    fails(
        ["dataset", "info", &s(&broken_manifest)],
        &["dataset.json", "invalid JSON"],
    );

    let truncated = dir.join("truncated");
    copy_dir(&good, &truncated);
    let victim = truncated.join("samples/000001.safetensors");
    let bytes = fs::read(&victim).unwrap();
    fs::write(&victim, &bytes[..bytes.len() - 7]).unwrap();
    for args in [
        vec!["dataset", "info", truncated.to_str().unwrap()],
        vec!["dataset", "stats", "--force", truncated.to_str().unwrap()],
    ] {
        fails(args, &["000001.safetensors", "truncated"]);
    }
    let header_only = dir.join("header-only");
    copy_dir(&good, &header_only);
    fs::write(header_only.join("samples/000002.safetensors"), &bytes[..5]).unwrap();
    fails(
        ["dataset", "info", &s(&header_only)],
        &["000002.safetensors", "truncated"],
    );
    fs::remove_file(header_only.join("samples/000002.safetensors")).unwrap();
    fails(
        ["dataset", "info", &s(&header_only)],
        &["000002.safetensors", "missing"],
    );

    // A NaN in a field of a training sample passes the header checks but not statistics.
    let nan = dir.join("nan");
    copy_dir(&good, &nan);
    let train = json(&nan.join("splits.json"))["train"][0].as_u64().unwrap();
    let victim_name = format!("{train:06}.safetensors");
    let victim = nan.join("samples").join(&victim_name);
    let start = safetensors_layout(&victim)["U"].bytes.0;
    let mut bytes = fs::read(&victim).unwrap();
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(&victim, &bytes).unwrap();
    fails(
        ["dataset", "stats", "--force", &s(&nan)],
        &[&victim_name, "non-finite", "`U`"],
    );
}

/// A Python with PyTorch: `FIBERFLOW_TORCH_PYTHON`, or the venv of
/// scripts/setup-libtorch.sh without `--cpu` (CI's CPU-only venv cannot import torch, so
/// there the check is skipped).
fn torch_python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.libtorch/venv/bin/python");
    std::env::var_os("FIBERFLOW_TORCH_PYTHON")
        .map(PathBuf::from)
        .or_else(|| venv.exists().then_some(venv))
}

#[test]
fn reference_export_loads_in_pytorch_with_our_split() {
    let tmp = tempdir();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let config = write_file(tmp.path(), "gen.toml", TINY_GENERATOR);
    let data = tmp.path().join("data");
    ok(generate_args(&data, &config, 12));
    let (reference, npy) = (tmp.path().join("ref"), tmp.path().join("npy"));
    let r = ok([
        "dataset",
        "export",
        &s(&data),
        "--format",
        "reference",
        "--out",
        &s(&reference),
    ]);
    // A fiberflow-mode split is reordered so the reference's split selects it.
    assert!(r.stdout.contains("reordered"), "{}", r.stdout);
    for f in ["domain", "U_2d", "U", "p", "dxyz"] {
        assert!(reference.join(format!("x/{f}.pt")).is_file(), "{f}.pt");
    }
    fails(
        [
            "dataset",
            "export",
            &s(&data),
            "--format",
            "reference",
            "--split",
            "test",
            "--out",
            &s(&reference),
        ],
        &["--split is for --format npy"],
    );
    ok(["dataset", "export", &s(&data), "--out", &s(&npy)]);
    let Some(python) = torch_python() else {
        eprintln!("no Python with torch (FIBERFLOW_TORCH_PYTHON): torch.load check skipped");
        return;
    };
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_reference_export.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args([&data, &reference, &npy])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
