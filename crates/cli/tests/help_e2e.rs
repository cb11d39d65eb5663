//! The command line describes itself: subcommands in `--help`, the version, and usage
//! errors (exit code 2) for unknown or missing subcommands.

mod common;

use common::*;

#[test]
fn help_lists_every_subcommand() {
    let r = ok(["--help"]);
    for sub in ["geometry", "solve", "generate", "dataset", "bench"] {
        assert!(
            r.stdout.lines().any(|l| l.trim_start().starts_with(sub)),
            "`--help` does not list `{sub}`:\n{}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("--threads"), "{}", r.stdout);

    let r = ok(["dataset", "--help"]);
    for sub in [
        "import-reference",
        "export",
        "info",
        "merge",
        "stats",
        "split",
    ] {
        assert!(
            r.stdout.lines().any(|l| l.trim_start().starts_with(sub)),
            "`dataset --help` does not list `{sub}`:\n{}",
            r.stdout
        );
    }
    for (sub, flag) in [
        ("geometry", "--out"),
        ("solve", "--microstructure"),
        ("generate", "--shard"),
        ("bench", "--reference"),
    ] {
        let r = ok([sub, "--help"]);
        assert!(r.stdout.contains(flag), "`{sub} --help`:\n{}", r.stdout);
    }
}

#[test]
fn version_and_usage_errors() {
    let r = ok(["--version"]);
    assert_eq!(
        r.stdout.trim(),
        format!("fiberflow {}", env!("CARGO_PKG_VERSION"))
    );
    let r = run(["frobnicate"]);
    assert_clean_failure(&r, &["unrecognized subcommand 'frobnicate'"]);
    assert_eq!(r.status.code(), Some(2));
    let r = run(std::iter::empty::<&str>());
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("Usage: fiberflow"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    // Thread counts are bounded while the arguments are read (100 000 threads hung).
    for n in ["0", "100000"] {
        let r = run(["--threads", n, "dataset", "info", "/nonexistent"]);
        assert_clean_failure(&r, &["--threads", "1..=1024"]);
        assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    }
}

/// A device name is checked while the arguments are read (a usage error, before any
/// input is opened), and a trainer that runs on one device refuses a list.
#[test]
fn device_names_are_checked_with_the_arguments() {
    let r = fails(
        [
            "predict",
            "--microstructure",
            "/nonexistent/domain.npy",
            "--out",
            "/nonexistent/out",
            "--device",
            "cuda:x",
        ],
        &["--device", "bad GPU device index `x`"],
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.context());
    assert!(!r.stderr.contains("nonexistent"), "{}", r.context());
    fails(
        [
            "train",
            "refiner",
            "--model",
            "/nonexistent/model",
            "--dataset",
            "/nonexistent/data",
            "--out",
            "/nonexistent/out",
            "--device",
            "cpu,cpu",
        ],
        &["train refiner trains on one device; --device cpu,cpu names several"],
    );
}
