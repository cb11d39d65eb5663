//! The crates' dependencies follow ARCHITECTURE.md: each crate uses only the fiberflow
//! crates its table allows (so data keeps flowing one way, and an upward dependency fails
//! here), and only `model` depends on an ML framework. The table is read from the document
//! itself, so the document and the build cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// ML framework crates: they belong to `model` alone.
const ML_FRAMEWORKS: [&str; 4] = ["burn", "tch", "cubecl", "candle-core"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `crate → allowed fiberflow crates` from the "may depend on" table.
fn allowed(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let table = doc
        .split("| crate | may depend on |")
        .nth(1)
        .expect("ARCHITECTURE.md has a `| crate | may depend on |` table");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let deps = cells[1]
                .split(',')
                .map(str::trim)
                .filter(|d| *d != "–" && !d.is_empty())
                .map(String::from)
                .collect();
            (cells[0].to_string(), deps)
        })
        .collect()
}

/// (fiberflow crates, other crates) among a manifest's `[dependencies]`.
fn dependencies(manifest: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let value: toml::Table = toml::from_str(&text).unwrap();
    let deps = value
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let (ours, theirs): (Vec<String>, Vec<String>) =
        deps.into_iter().partition(|d| d.starts_with("fiberflow-"));
    (
        ours.iter()
            .map(|d| d.trim_start_matches("fiberflow-").to_string())
            .collect(),
        theirs.into_iter().collect(),
    )
}

/// Dependencies of `name` that the table does not allow.
fn violations(
    name: &str,
    ours: &BTreeSet<String>,
    theirs: &BTreeSet<String>,
    allowed: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let Some(ok) = allowed.get(name) else {
        return vec![format!(
            "crate `{name}` is missing from ARCHITECTURE.md's table"
        )];
    };
    let mut bad: Vec<String> = ours
        .difference(ok)
        .map(|d| format!("`{name}` depends on `{d}`, which ARCHITECTURE.md does not allow"))
        .collect();
    if name != "model" {
        bad.extend(
            theirs
                .iter()
                .filter(|d| ML_FRAMEWORKS.iter().any(|f| d.starts_with(f)))
                .map(|d| {
                    format!("`{name}` depends on the ML framework `{d}`, which only `model` may")
                }),
        );
    }
    bad
}

#[test]
fn every_crate_depends_only_on_what_architecture_md_allows() {
    let root = workspace();
    let allowed = allowed(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let mut crates = 0;
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let (ours, theirs) = dependencies(&manifest);
        bad.extend(violations(&name, &ours, &theirs, &allowed));
        crates += 1;
    }
    assert_eq!(crates, allowed.len(), "crates and table rows differ");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The check itself catches an upward dependency and a framework outside `model`.
#[test]
fn an_upward_dependency_or_a_stray_framework_is_reported() {
    let root = workspace();
    let allowed = allowed(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(allowed["geometry"], set(&[]));
    assert_eq!(allowed["solver"], set(&["geometry"]));
    let upward = violations("solver", &set(&["geometry", "model"]), &set(&[]), &allowed);
    assert_eq!(upward.len(), 1, "{upward:?}");
    assert!(upward[0].contains("`solver` depends on `model`"));
    let framework = violations(
        "eval",
        &set(&["geometry"]),
        &set(&["burn", "ndarray"]),
        &allowed,
    );
    assert_eq!(framework.len(), 1, "{framework:?}");
    assert!(violations("model", &set(&["data"]), &set(&["burn"]), &allowed).is_empty());
}

/// Lines of `source` that name the model crate's training modules (`train::…` in code,
/// whichever way the import is written), naming `file`.
fn training_imports(file: &str, source: &str) -> Vec<String> {
    source
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//") && l.contains("train::"))
        .map(|(i, l)| format!("{file}:{}: {}", i + 1, l.trim()))
        .collect()
}

/// Every `.rs` file under `dir`, subfolders included.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Inference never reaches into training: loading a model and predicting go through the
/// run-folder formats of `run/`, so a change to a training loop cannot change a
/// prediction. Checked on every file of the inference modules that ARCHITECTURE.md names.
#[test]
fn inference_modules_do_not_import_training_modules() {
    let src = workspace().join("crates/model/src");
    let mut files = Vec::new();
    for dir in ["bundle", "predict", "latent", "refine", "run"] {
        files.extend(rust_files(&src.join(dir)));
    }
    let bad: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let name = f.strip_prefix(&src).unwrap().display().to_string();
            training_imports(&name, &std::fs::read_to_string(f).unwrap())
        })
        .collect();
    assert!(files.len() > 10, "{files:?}");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let grouped = "use a;\nuse crate::{batch, train::vae::RunLog};\n// see train::vae\n";
    let caught = training_imports("x.rs", grouped);
    assert_eq!(caught, ["x.rs:2: use crate::{batch, train::vae::RunLog};"]);
}
