//! Helpers shared by the end-to-end tests: run the real `fiberflow` binary, write tiny
//! inputs, and compare dataset directories.
//!
//! Every test binary includes this module but uses only part of it.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fiberflow");

/// Base seed of the tiny datasets. Samples are a pure function of (seed, index); with
/// seed 3 the first 40 samples of [`TINY_GENERATOR`] all percolate on their first draw
/// (seeds 1 and 2 draw a slice blocked on its own at indices 12 and 30, which costs a
/// redraw).
pub const SEED: &str = "3";

/// A generator config small enough for a sample to take a few milliseconds: a 12 µm
/// window (two 4 µm fibre diameters fit) rasterised on 16×16 pixels.
pub const TINY_GENERATOR: &str = "\
vf = [0.3, 0.4]

[packing]
window_um = 12.0
radius_mean_um = 2.0
radius_std_um = 0.1
";

/// The same packing for `fiberflow geometry`, whose config holds PackingConfig fields.
pub const TINY_PACKING: &str = "\
window_um = 12.0
radius_mean_um = 2.0
radius_std_um = 0.1
vf = 0.35
";

/// What a finished command left behind.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub cmdline: String,
}

impl Run {
    pub fn context(&self) -> String {
        format!(
            "`{}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// A `Command` for the binary, with no stdin and no colour.
pub fn fiberflow() -> Command {
    let mut c = Command::new(BIN);
    c.stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE");
    c
}

/// Runs the binary with `args` and captures everything.
pub fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let cmdline = format!(
        "fiberflow {}",
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = fiberflow()
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        cmdline,
    }
}

/// Runs the binary and requires success without any panic.
pub fn ok<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let r = run(args);
    assert!(r.status.success(), "expected success: {}", r.context());
    assert_no_panic(&r);
    r
}

/// Runs the binary and requires a clean failure: exit code 1 (our errors) or 2 (clap's
/// usage errors), never a panic (101) or a signal, an `error:` line on stderr, and every
/// one of `needles` in stderr. Returns the run for further checks.
pub fn fails<I, S>(args: I, needles: &[&str]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let r = run(args);
    assert_clean_failure(&r, needles);
    r
}

/// See [`fails`].
pub fn assert_clean_failure(r: &Run, needles: &[&str]) {
    assert!(
        matches!(r.status.code(), Some(1 | 2)),
        "expected exit code 1 or 2: {}",
        r.context()
    );
    assert_no_panic(r);
    assert!(
        r.stderr.contains("error:"),
        "stderr has no `error:` line: {}",
        r.context()
    );
    for needle in needles {
        assert!(
            r.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            r.context()
        );
    }
}

fn assert_no_panic(r: &Run) {
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !r.stderr.contains(bad) && !r.stdout.contains(bad),
            "the binary panicked: {}",
            r.context()
        );
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

/// Arguments of a tiny `generate` of `samples` samples into `out`.
pub fn generate_args(out: &Path, config: &Path, samples: usize) -> Vec<String> {
    vec![
        "generate".into(),
        "--out".into(),
        out.display().to_string(),
        "--size".into(),
        "16".into(),
        "--slices".into(),
        "3".into(),
        "--pitch-um".into(),
        "2".into(),
        "--samples".into(),
        samples.to_string(),
        "--seed".into(),
        SEED.into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// Reads a JSON file.
pub fn json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `value` without the object keys in `keys`, at any depth.
pub fn without(value: &Value, keys: &[&str]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), without(v, keys)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| without(v, keys)).collect()),
        other => other.clone(),
    }
}

/// Paths (relative to `dir`, `/`-separated) of every file under `dir` but the writers'
/// lock files, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(fiberflow_data::lock::is_lock_file)
            {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                let parts: Vec<_> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Indices of the complete-sample records (`samples/NNNNNN.json`) in a dataset folder.
pub fn record_indices(dir: &Path) -> Vec<usize> {
    let Ok(entries) = fs::read_dir(dir.join("samples")) else {
        return Vec::new();
    };
    let mut out: Vec<usize> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// One tensor of a safetensors file.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range of its data in the file.
    pub bytes: (usize, usize),
}

/// The tensors of a safetensors file by name. Checks the layout by hand (independently
/// of the library that wrote it): the header parses and the data ends the file.
pub fn safetensors_layout(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = fs::read(path).unwrap();
    assert!(
        bytes.len() >= 8,
        "{}: shorter than a header",
        path.display()
    );
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert!(8 + n <= bytes.len(), "{}: header overruns", path.display());
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out = BTreeMap::new();
    let mut end = 0;
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap().to_string();
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let offsets = info["data_offsets"].as_array().unwrap();
        let (a, b) = (
            offsets[0].as_u64().unwrap() as usize,
            offsets[1].as_u64().unwrap() as usize,
        );
        end = end.max(b);
        let bytes = (8 + n + a, 8 + n + b);
        out.insert(
            name.clone(),
            Tensor {
                dtype,
                shape,
                bytes,
            },
        );
    }
    assert_eq!(
        8 + n + end,
        bytes.len(),
        "{}: data does not end the file",
        path.display()
    );
    out
}

/// Checks that `path` is a complete sample file of `s` slices of `hw`×`hw` pixels.
pub fn assert_valid_sample(path: &Path, s: usize, hw: usize) {
    let layout = safetensors_layout(path);
    let expect = [
        ("domain", "F32", vec![s, 1, hw, hw]),
        ("U_2d", "F32", vec![s, 3, hw, hw]),
        ("U", "F32", vec![s, 3, hw, hw]),
        ("p", "F32", vec![s, 1, hw, hw]),
        ("p_2d", "F32", vec![s, 1, hw, hw]),
        ("dxyz", "F64", vec![3]),
    ];
    assert_eq!(layout.len(), expect.len(), "{}: {layout:?}", path.display());
    for (name, dtype, shape) in expect {
        let t = layout
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor {name}", path.display()));
        assert_eq!(
            (t.dtype.as_str(), &t.shape),
            (dtype, &shape),
            "{}: {name}",
            path.display()
        );
    }
}

/// Checks that two dataset folders hold the same data: the same files, byte-identical
/// sample files and splits, and JSON files that differ only in timing (`wall_s`) and in
/// the manifest hash recorded in statistics.json (which covers those timings).
pub fn assert_same_dataset(a: &Path, b: &Path) {
    let (fa, fb) = (files_under(a), files_under(b));
    assert_eq!(
        fa,
        fb,
        "{} and {} hold different files",
        a.display(),
        b.display()
    );
    for rel in &fa {
        let (pa, pb) = (a.join(rel), b.join(rel));
        if rel.ends_with(".safetensors") || rel == "splits.json" || rel == "header.json" {
            assert!(
                fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
                "{rel} differs between {} and {}",
                a.display(),
                b.display()
            );
        } else if rel.ends_with(".json") {
            let ignore: &[&str] = if rel == "statistics.json" {
                &["wall_s", "manifest_sha256"]
            } else {
                &["wall_s"]
            };
            let (ja, jb) = (without(&json(&pa), ignore), without(&json(&pb), ignore));
            assert!(
                ja == jb,
                "{rel} differs between {} and {} beyond {ignore:?}",
                a.display(),
                b.display()
            );
        } else {
            panic!("unexpected file {rel} in {}", a.display());
        }
    }
}

/// Files whose name marks an interrupted write.
pub fn temp_files(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| f.ends_with(".tmp"))
        .collect()
}

/// Copies the folder `src` to `dst` (which must not exist), recursively.
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let to = dst.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &to);
        } else {
            fs::copy(&path, &to).unwrap();
        }
    }
}

/// `args` with `flag` set to `value`: replaced where present, appended otherwise.
pub fn with_arg(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut out = args.to_vec();
    match out.iter().position(|a| a == flag) {
        Some(i) => out[i + 1] = value.to_string(),
        None => out.extend([flag.to_string(), value.to_string()]),
    }
    out
}

/// `quickstart` on a tiny generator config: 12 seeded samples of 16×16×3 (2 µm pitch)
/// and `epochs` of its three training stages, into `out`.
pub fn tiny_quickstart(out: &Path, generator: &Path, epochs: [&str; 3]) -> Vec<String> {
    let mut v: Vec<String> = [
        "quickstart",
        "--samples",
        "12",
        "--size",
        "16",
        "--slices",
        "3",
        "--pitch-um",
        "2",
        "--seed",
        SEED,
        "--epochs",
    ]
    .map(String::from)
    .to_vec();
    v.extend(epochs.map(String::from));
    v.extend([
        "--out".into(),
        out.display().to_string(),
        "--generator-config".into(),
        generator.display().to_string(),
    ]);
    v
}
