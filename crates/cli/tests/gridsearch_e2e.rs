//! End-to-end tests of `fiberflow gridsearch` on a tiny dataset and VAE: a search killed
//! after its first row and restarted, a lost row resumed from its run's checkpoint, shards
//! merging into one table, and grids refused before any run starts.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Epochs of every run.
const EPOCHS: usize = 6;

/// Three runs; the third (lr = 1e30) blows up to NaN in its second batch.
const GRID: &str = r#"
lr = [3e-3, 1e-3, 1e30]

[base]
unet.features = [8, 16]
unet.groups = 4
unet.attention = ""
warmup_steps = 2
"#;

/// A tiny dataset with its stage-2 VAE (one epoch per stage) and latent cache, made once
/// per test binary.
struct Fixture {
    dataset: PathBuf,
    vae: PathBuf,
    root: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gridsearch_e2e");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let cfg = write_file(&root, "gen.toml", TINY_GENERATOR);
        let dataset = root.join("data");
        ok(generate_args(&dataset, &cfg, 8));
        let (v1, v2) = (root.join("vae1"), root.join("vae2"));
        let d = dataset.to_str().unwrap();
        let tiny = [
            "--epochs",
            "1",
            "--set",
            "vae.channels=[8,16]",
            "--set",
            "vae.groups=4",
        ];
        let stage1 = ["train", "vae", "--stage", "1", "--dataset", d, "--out"];
        ok(stage1
            .iter()
            .copied()
            .chain([v1.to_str().unwrap()])
            .chain(tiny));
        let stage2 = ["train", "vae", "--stage", "2", "--dataset", d, "--stage1"];
        ok(stage2
            .iter()
            .copied()
            .chain([v1.to_str().unwrap(), "--out", v2.to_str().unwrap()])
            .chain(tiny));
        ok([
            "vae",
            "encode",
            "--vae",
            v2.to_str().unwrap(),
            "--dataset",
            d,
        ]);
        Fixture {
            dataset,
            vae: v2,
            root,
        }
    })
}

/// `gridsearch` arguments over the fixture.
fn args(grid: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let f = fixture();
    let mut a = vec!["gridsearch".to_string()];
    for (flag, path) in [
        ("--grid", grid),
        ("--dataset", &f.dataset),
        ("--vae", &f.vae),
        ("--out", out),
    ] {
        a.extend([flag.to_string(), path.display().to_string()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A results table as rows of column → cell (only the last column may hold commas).
fn table(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let cells: Vec<String> = l
                .splitn(header.len(), ',')
                .map(|c| c.trim_matches('"').to_string())
                .collect();
            assert_eq!(cells.len(), header.len(), "{l}");
            header.iter().map(|h| h.to_string()).zip(cells).collect()
        })
        .collect()
}

fn num(row: &BTreeMap<String, String>, col: &str) -> f64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {:?}", row[col]))
}

/// The run ids of a search folder, by index.
fn run_ids(out: &Path) -> Vec<String> {
    json(&out.join("grid.json"))["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn log(out: &Path, id: &str) -> Value {
    json(&out.join("runs").join(id).join("log.json"))
}

/// Lines of a run's stderr that report a finished run.
fn finished_runs(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("run "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// Checks every row against its run's log.json and the reports against results.csv.
fn check_complete(out: &Path) {
    let ids = run_ids(out);
    let rows = table(&out.join("results.csv"));
    let got: Vec<&str> = rows.iter().map(|r| r["run_id"].as_str()).collect();
    assert_eq!(got, ids, "one row per run, by index");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"], i.to_string());
        if i == 2 {
            assert_eq!(r["status"], "failed", "{r:?}");
            assert!(r["error"].contains("NaN"), "{r:?}");
            continue;
        }
        assert_eq!(r["status"], "ok", "{r:?}");
        let l = log(out, &ids[i]);
        let history = l["history"].as_array().unwrap();
        assert_eq!(history.len(), EPOCHS);
        assert_eq!(
            num(r, "best_val_error"),
            l["best_val_error"].as_f64().unwrap()
        );
        assert_eq!(
            num(r, "last_val_loss"),
            history[EPOCHS - 1]["val_loss"].as_f64().unwrap()
        );
        assert_eq!(r["best_epoch"], l["best_epoch"].to_string());
        assert_eq!(r["parameters"], l["parameters"].to_string());
    }
    // top10: the finished runs, ranked by the decoded validation error.
    let top = table(&out.join("top10.csv"));
    assert_eq!(top.len(), 2);
    let errors: Vec<f64> = top.iter().map(|r| num(r, "best_val_error")).collect();
    assert!(errors[0] <= errors[1], "{errors:?}");
    let mut expected: Vec<f64> = rows[..2].iter().map(|r| num(r, "best_val_error")).collect();
    expected.sort_by(f64::total_cmp);
    assert_eq!(errors, expected);
    assert_eq!(top[0]["rank"], "1");
    let summary = fs::read_to_string(out.join("summary.txt")).unwrap();
    assert!(
        summary.contains("3 of 3 runs (2 ok, 1 failed, 0 pending), complete"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("best run: {} ", top[0]["run_id"])),
        "{summary}"
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one search killed and restarted, its runs checked at each stage
fn a_killed_search_restarts_with_exactly_the_missing_runs() {
    let f = fixture();
    let tmp = tempfile::tempdir_in(&f.root).unwrap();
    let grid = write_file(tmp.path(), "grid.toml", GRID);
    let out = tmp.path().join("search");
    let a = args(&grid, &out, &["--epochs", &EPOCHS.to_string()]);

    // Kill the search (SIGKILL) once results.csv holds its first row and the second run
    // has checkpointed an epoch.
    let first_log = tmp.path().join("first.log");
    let mut child = fiberflow()
        .args(&a)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&first_log).unwrap())
        .spawn()
        .unwrap();
    let results = out.join("results.csv");
    let rows_now =
        || fs::read_to_string(&results).map_or(0, |t| t.matches('\n').count().saturating_sub(1));
    let state1 = || {
        let id1 = run_ids(&out)[1].clone();
        out.join("runs").join(id1).join("checkpoint/state.json")
    };
    let started = Instant::now();
    while rows_now() == 0 || !state1().exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the search ended before the kill: {}",
            fs::read_to_string(&first_log).unwrap()
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "still running after 120 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let ids = run_ids(&out);
    let before = fs::read_to_string(&results).unwrap();
    let run0 = out.join("runs").join(&ids[0]).join("log.json");
    let (log0, mtime0) = (
        fs::read(&run0).unwrap(),
        fs::metadata(&run0).unwrap().modified().unwrap(),
    );
    // A kill between the two renames of a checkpoint update leaves the previous one.
    let state = Some(state1()).filter(|p| p.exists()).unwrap_or_else(|| {
        out.join("runs")
            .join(&ids[1])
            .join("checkpoint.old/state.json")
    });
    let partial = json(&state)["history"].as_array().unwrap().clone();
    assert!(
        rows_now() == 1 && partial.len() < EPOCHS,
        "run 1 finished before the kill; nothing to resume"
    );

    let r = ok(&a);
    assert!(
        r.stderr
            .contains("1 of them already have results, 2 to train"),
        "{}",
        r.stderr
    );
    assert_eq!(finished_runs(&r.stderr), ids[1..], "{}", r.stderr);
    assert_eq!(fs::read(&run0).unwrap(), log0, "run 0 was retrained");
    assert_eq!(fs::metadata(&run0).unwrap().modified().unwrap(), mtime0);
    let after = fs::read_to_string(&results).unwrap();
    assert_eq!(
        after.lines().take(2).collect::<Vec<_>>(),
        before.lines().collect::<Vec<_>>()
    );
    check_complete(&out);
    // Run 1 continued from its checkpoint: the epochs before the kill are kept as they
    // were (timings included), not retrained.
    let history1 = log(&out, &ids[1])["history"].clone();
    assert_eq!(history1.as_array().unwrap()[..partial.len()], partial[..]);
    let rows = table(&results);
    assert_eq!(rows[1]["resumed"], "true");

    // A row lost after its run finished: the rerun resumes the run's final checkpoint,
    // which trains nothing, and writes the same results again.
    let without1: String = after
        .lines()
        .filter(|l| !l.starts_with(&ids[1]))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&results, without1).unwrap();
    let r = ok(&a);
    assert!(
        r.stderr
            .contains("2 of them already have results, 1 to train"),
        "{}",
        r.stderr
    );
    assert_eq!(finished_runs(&r.stderr), ids[1..2]);
    let again = table(&results);
    assert_eq!(again[1]["resumed"], "true");
    for col in [
        "best_val_error",
        "last_val_loss",
        "best_epoch",
        "parameters",
    ] {
        assert_eq!(again[1][col], rows[1][col], "{col}");
    }
    assert_eq!(log(&out, &ids[1])["history"], history1);
    check_complete(&out);

    // Nothing left: a rerun trains nothing and changes nothing.
    let r = ok(&a);
    assert!(finished_runs(&r.stderr).is_empty(), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("3 of 3 runs have results (2 ok, 1 failed)"),
        "{}",
        r.stdout
    );
    assert_eq!(table(&results), again);
}

#[test]
fn shards_split_the_grid_and_merge_when_complete() {
    let f = fixture();
    let tmp = tempfile::tempdir_in(&f.root).unwrap();
    let grid = write_file(tmp.path(), "grid.json", &json_grid());
    let out = tmp.path().join("search");
    let epochs = EPOCHS.to_string();
    let shard = |s: &str| args(&grid, &out, &["--epochs", &epochs, "--shard", s]);

    let r = ok(shard("1/2"));
    assert!(
        r.stderr.contains("3 runs in the grid, 1 in shard 1/2"),
        "{}",
        r.stderr
    );
    let ids = run_ids(&out);
    assert_eq!(finished_runs(&r.stderr), ids[1..2]);
    assert!(
        !out.join("results.csv").exists(),
        "merged before the grid was complete"
    );
    let summary = fs::read_to_string(out.join("summary.txt")).unwrap();
    assert!(
        summary.contains("1 of 3 runs (1 ok, 0 failed, 2 pending), incomplete"),
        "{summary}"
    );
    assert_eq!(table(&out.join("top10.csv")).len(), 1);

    let r = ok(shard("0/2"));
    assert_eq!(finished_runs(&r.stderr), [ids[0].clone(), ids[2].clone()]);
    let part0 = table(&out.join("results.shard-0-of-2.csv"));
    let part1 = table(&out.join("results.shard-1-of-2.csv"));
    let merged = table(&out.join("results.csv"));
    assert_eq!(
        merged,
        [part0[0].clone(), part1[0].clone(), part0[1].clone()]
    );
    check_complete(&out);

    // The whole grid in one process now finds every run done.
    let r = ok(args(&grid, &out, &["--epochs", &epochs]));
    assert!(
        r.stderr
            .contains("3 of them already have results, 0 to train"),
        "{}",
        r.stderr
    );
}

/// [`GRID`] as JSON with dotted keys: the same runs, so the same run ids.
fn json_grid() -> String {
    r#"{"lr": [3e-3, 1e-3, 1e30],
        "base": {"unet.features": [8, 16], "unet": {"groups": 4, "attention": ""}, "warmup_steps": 2}}"#
        .into()
}

#[test]
fn invalid_grids_fail_before_any_run_starts() {
    let f = fixture();
    let tmp = tempfile::tempdir_in(&f.root).unwrap();
    let out = tmp.path().join("search");
    let base = "[base]\nunet.groups = 4\nunet.attention = \"\"\n";
    let cases: [(&str, String, &[&str]); 5] = [
        (
            "unknown.toml",
            format!("unet.featurs = [[8, 16]]\n{base}"),
            &["unknown config field `unet.featurs`", "features"],
        ),
        (
            "empty.toml",
            format!("lr = []\n{base}"),
            &["grid axis `lr` is an empty list"],
        ),
        (
            "invalid.toml",
            format!("lr = [1e-3, -1.0]\nunet.features = [[8, 16]]\n{base}"),
            &["grid run 1 (lr = -1.0, unet.features = [8,16])", "min_lr"],
        ),
        (
            "misfit.toml",
            format!("unet.features = [[8, 16], [8, 8, 8, 8, 8]]\n{base}"),
            &[
                "grid run 1 (unet.features = [8,8,8,8,8]) does not fit",
                "divisible",
            ],
        ),
        (
            "grid.yaml",
            "lr: [1]".into(),
            &["must end in .toml or .json"],
        ),
    ];
    for (name, text, needles) in &cases {
        let grid = write_file(tmp.path(), name, text);
        fails(args(&grid, &out, &["--epochs", "1"]), needles);
        assert!(!out.exists(), "{name}: the search started");
    }
    let grid = write_file(tmp.path(), "ok.toml", GRID);
    for bad in ["2/2", "1", "a/3"] {
        fails(args(&grid, &out, &["--shard", bad]), &["invalid shard"]);
    }
    assert!(!out.exists());

    // A folder holding another search is refused before training.
    let one = write_file(
        tmp.path(),
        "one.toml",
        &format!("lr = [1e-3]\nunet.features = [[8, 16]]\n{base}"),
    );
    ok(args(&one, &out, &["--epochs", "1"]));
    fails(
        args(&one, &out, &["--epochs", "2"]),
        &["holds another search (its grid, runs differ); use a new --out"],
    );
    fails(
        args(&grid, &out, &["--epochs", "1"]),
        &["holds another search"],
    );
    assert_eq!(fs::read_dir(out.join("runs")).unwrap().count(), 1);
}
