//! Reliability from the command line: one writer per output folder, no finished run
//! overwritten unasked, every allocation sized by the arguments checked against the memory
//! budget first, no write through a planted link, and defaults that work at small sizes.
//! Each test reproduces a case of the reliability probe (RELIABILITY.md).

mod common;

use common::*;
use fiberflow_data::lock::FolderLock;
use std::fs;
use std::path::Path;
use std::process::Stdio;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Tiny generate arguments for `samples` samples of seed `seed` into `out`.
fn tiny_generate(dir: &Path, out: &Path, samples: usize, seed: &str) -> Vec<String> {
    let cfg = write_file(dir, "gen.toml", TINY_GENERATOR);
    with_arg(&generate_args(out, &cfg, samples), "--seed", seed)
}

#[test]
fn a_second_writer_of_a_folder_is_refused_with_the_holders_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("busy");
    let _held = FolderLock::acquire(&dir, "train vae").unwrap();
    let pid = std::process::id().to_string();
    let d = s(&dir);
    let cfg = write_file(tmp.path(), "gen.toml", TINY_GENERATOR);
    let nothing = s(&tmp.path().join("nothing"));
    for argv in [
        generate_args(&dir, &cfg, 12),
        ["geometry", "--size", "16", "--out", &d]
            .map(String::from)
            .to_vec(),
        [
            "train",
            "vae",
            "--stage",
            "1",
            "--dataset",
            &nothing,
            "--out",
            &d,
        ]
        .map(String::from)
        .to_vec(),
        ["quickstart", "--out", &d].map(String::from).to_vec(),
        ["dataset", "merge", &nothing, "--out", &d]
            .map(String::from)
            .to_vec(),
    ] {
        fails(
            argv,
            &[
                "being written by another fiberflow process",
                &pid,
                "train vae",
            ],
        );
    }
    // Nothing but the lock file was written into the held folder.
    let entries: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, [fiberflow_data::lock::LOCK_FILE], "{entries:?}");
}

#[test]
fn two_generates_started_together_never_mix_their_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data");
    let spawn = |seed: &str| {
        fiberflow()
            .args(tiny_generate(tmp.path(), &out, 24, seed))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("3"), spawn("4"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let succeeded: Vec<_> = [(&a, 3), (&b, 4)]
        .into_iter()
        .filter(|(o, _)| o.status.success())
        .map(|(_, seed)| seed)
        .collect();
    // The loser is refused by the lock (or, if it started after the winner finished, by
    // the header of a dataset with another seed); exactly one dataset results.
    assert_eq!(succeeded.len(), 1, "{a:?}\n{b:?}");
    for o in [&a, &b].into_iter().filter(|o| !o.status.success()) {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("being written by another fiberflow process")
                || stderr.contains("different"),
            "{stderr}"
        );
    }
    ok(["dataset", "info", &s(&out)]);
    let seed = json(&out.join("dataset.json"))["generator"]["seed"].as_u64();
    assert_eq!(seed, Some(succeeded[0]));
}

#[test]
fn a_finished_run_is_never_overwritten_unasked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(tiny_generate(tmp.path(), &data, 12, SEED));
    let train = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "vae",
            "--stage",
            "1",
            "--epochs",
            "1",
            "--set",
            "vae.channels=[4,8]",
            "--dataset",
            &s(&data),
            "--out",
            &s(out),
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|e| e.to_string()));
        v
    };
    let run = tmp.path().join("vae1");
    ok(train(&run, &[]));
    // Channel counts the data cannot feed are refused before a layer is built (they were
    // a convolution's shape panic once training had started).
    let odd = tmp.path().join("odd");
    fails(
        train(&odd, &["--set", "vae.in_channels=5"]),
        &["in_channels = 5 must be 3"],
    );
    fails(
        train(&odd, &["--set", "vae.geometry_channels=1"]),
        &["geometry_channels = 1 must be 0", "or 2"],
    );
    assert!(!odd.exists());
    // The probe: a copy of the run without its checkpoint (deleted to save space).
    let copy = tmp.path().join("x");
    copy_dir(&run, &copy);
    fs::remove_dir_all(copy.join("checkpoint")).unwrap();
    let before = (
        fs::read(copy.join("best_model.bpk")).unwrap(),
        fs::read(copy.join("log.json")).unwrap(),
    );
    for extra in [&[][..], &["--resume"][..]] {
        fails(train(&copy, extra), &["holds a run", "--force"]);
        let after = (
            fs::read(copy.join("best_model.bpk")).unwrap(),
            fs::read(copy.join("log.json")).unwrap(),
        );
        assert!(after == before, "the run was changed");
    }
    fails(train(&run, &[]), &["already holds a run", "--resume"]);
    // --force replaces a run, but not a folder holding something else, nor an input.
    fs::write(copy.join("notes.txt"), "mine").unwrap();
    fails(
        train(&copy, &["--force"]),
        &["holds `notes.txt`", "only replaces a run"],
    );
    fs::remove_file(copy.join("notes.txt")).unwrap();
    let mut into_data = train(&copy, &["--force"]);
    let at = into_data.iter().rposition(|a| a == &s(&copy)).unwrap();
    into_data[at] = s(tmp.path());
    fails(into_data, &["holds the input", "--force would delete it"]);
    assert!(data.join("dataset.json").exists());
    ok(train(&copy, &["--force"]));
    assert_eq!(
        json(&copy.join("log.json"))["history"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    fails(
        train(&copy, &["--force", "--resume"]),
        &["cannot be used with"],
    );
}

/// Runs `fiberflow` under a 2 GB address-space limit, so a missing check shows as an
/// allocation failure instead of exhausting the machine (two threads: each allocator
/// arena reserves address space).
fn under_2gb(args: &[&str]) -> Run {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -v 2000000; exec \"$0\" \"$@\"",
            BIN,
            "--threads",
            "2",
        ])
        .args(args)
        .output()
        .unwrap();
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        cmdline: args.join(" "),
    }
}

#[test]
fn arguments_that_would_exhaust_memory_are_refused_with_the_estimate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = s(&tmp.path().join("out"));
    for (args, needle) in [
        (
            vec!["geometry", "--size", "30000", "--out", &out],
            "the slice masks of 12×30000×30000 needs",
        ),
        (
            vec!["geometry", "--size", "4294967296", "--out", &out],
            "the slice masks of 12×4294967296×4294967296 needs",
        ),
        (
            vec!["generate", "--samples", "1000000000", "--out", &out],
            "the manifest of 1000000000 samples needs",
        ),
        (
            vec![
                "generate",
                "--size",
                "20000",
                "--samples",
                "10",
                "--out",
                &out,
            ],
            "samples of 11×20000×20000 at a time",
        ),
        (
            vec![
                "--max-memory-gib",
                "0.00001",
                "geometry",
                "--size",
                "64",
                "--out",
                &out,
            ],
            "more than the memory budget of 0.00 GiB",
        ),
    ] {
        let r = under_2gb(&args);
        assert_clean_failure(&r, &[needle, "--max-memory-gib"]);
        assert!(!r.stderr.contains("memory allocation"), "{}", r.stderr);
    }
    fails(
        ["--max-memory-gib=-1", "geometry", "--out", &out],
        &["positive number of GiB"],
    );
    // A refused command leaves no output folder behind.
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn the_default_packing_works_at_32_pixels_and_an_empty_validation_split_is_warned() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("d32");
    let r = ok([
        "generate",
        "--samples",
        "4",
        "--size",
        "32",
        "--seed",
        "5",
        "--out",
        &s(&out),
    ]);
    assert!(
        r.stderr.contains("leave the validation split (15 %) empty"),
        "{}",
        r.stderr
    );
    // The draw that jammed was redrawn (at a lower Vf) instead of ending the dataset.
    let records = json(&out.join("dataset.json"))["samples"].clone();
    let redrawn = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["extra"]["packing_attempts"].as_u64().unwrap() > 1)
        .count();
    assert!(redrawn > 0, "no sample needed a redraw: {records}");
}

#[test]
fn no_writer_follows_a_link_planted_in_its_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("geo");
    let victim = tmp.path().join("victim.txt");
    fs::write(&victim, "precious").unwrap();
    fs::create_dir_all(out.join("slices")).unwrap();
    for name in ["slices/slice_000.png", "domain.npy", "microstructure.json"] {
        std::os::unix::fs::symlink(&victim, out.join(name)).unwrap();
    }
    let cfg = write_file(tmp.path(), "packing.toml", TINY_PACKING);
    ok([
        "geometry",
        "--size",
        "16",
        "--slices",
        "3",
        "--pitch-um",
        "2",
        "--config",
        &s(&cfg),
        "--out",
        &s(&out),
    ]);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    let png = fs::symlink_metadata(out.join("slices/slice_000.png")).unwrap();
    assert!(png.is_file() && png.len() > 0);
}
