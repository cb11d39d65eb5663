//! The search grid: a TOML or JSON table whose leaves are axes — config fields of
//! [`DiffusionTrainConfig`] addressed by dotted paths as in `train --set`, each with a list
//! of values — plus an optional `base` table of fixed overrides. Its runs are the
//! Cartesian product of the axes, each validated into a full config before anything trains.
//!
//! Axes are taken in the sorted order of their paths (so reformatting the file changes
//! nothing) and the last axis varies fastest. A run's id is its zero-padded index and a
//! short hash of all its overrides, so a restart with the same grid finds its folders and
//! an edited grid cannot mistake old folders for its own.

use super::error::GridError;
use fiberflow_data::Shard;
use fiberflow_model::train::diffusion::DiffusionTrainConfig;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Key of the fixed-override table in a grid file.
const BASE_KEY: &str = "base";

/// Most runs a grid may expand to (a larger product is a typo, not a plan).
const MAX_RUNS: usize = 100_000;

/// Hex digits of the override hash in a run id.
const HASH_DIGITS: usize = 8;

/// A parsed grid whose paths all name config fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grid {
    /// Fixed overrides by dotted path, `--epochs` included.
    pub base: BTreeMap<String, Value>,
    /// The axes, sorted by path.
    pub axes: Vec<Axis>,
}

/// One config field and the values the search gives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Axis {
    pub path: String,
    pub values: Vec<Value>,
}

/// One combination of the grid with its validated config.
#[derive(Debug, Clone)]
pub struct Run {
    pub index: usize,
    pub id: String,
    /// One value per axis, in axis order.
    pub values: Vec<Value>,
    pub config: DiffusionTrainConfig,
}

impl Grid {
    /// Reads a `.toml` or `.json` grid file; `epochs` (from `--epochs`) joins the base.
    pub fn load(path: &Path, epochs: Option<usize>) -> Result<Self, GridError> {
        let text = std::fs::read_to_string(path).map_err(GridError::io(path, "read"))?;
        let syntax = |message: String| GridError::Syntax {
            path: path.to_path_buf(),
            message,
        };
        let root: Value = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| syntax(e.to_string()))?,
            Some("json") => serde_json::from_str(&text).map_err(|e| syntax(e.to_string()))?,
            _ => {
                return Err(GridError::Extension {
                    path: path.to_path_buf(),
                });
            }
        };
        Self::from_value(root, epochs)
    }

    /// Builds the grid from the file's parsed content.
    pub fn from_value(root: Value, epochs: Option<usize>) -> Result<Self, GridError> {
        let Value::Object(mut root) = root else {
            return Err(GridError::NotATable("the grid file"));
        };
        let defaults = default_config();
        let mut base = Vec::new();
        match root.remove(BASE_KEY) {
            Some(Value::Object(table)) => leaves(&table, &mut Vec::new(), &defaults, &mut base)?,
            Some(_) => return Err(GridError::NotATable("`base`")),
            None => {}
        }
        let mut found = Vec::new();
        leaves(&root, &mut Vec::new(), &defaults, &mut found)?;
        let mut axes = Vec::new();
        for (path, value) in found {
            match value {
                Value::Array(values) if values.is_empty() => {
                    return Err(GridError::EmptyAxis(path));
                }
                Value::Array(values) => axes.push(Axis { path, values }),
                _ => return Err(GridError::NotAList(path)),
            }
        }
        if axes.is_empty() {
            return Err(GridError::NoAxes);
        }
        if let Some(e) = epochs {
            if axes.iter().any(|a| a.path == "epochs") {
                return Err(GridError::EpochsConflict);
            }
            base.retain(|(p, _)| p != "epochs");
            base.push(("epochs".into(), Value::from(e)));
        }
        let paths: Vec<&str> = base
            .iter()
            .map(|(p, _)| p.as_str())
            .chain(axes.iter().map(|a| a.path.as_str()))
            .collect();
        for (i, a) in paths.iter().enumerate() {
            for b in &paths[i + 1..] {
                if overlaps(a, b) {
                    return Err(GridError::Overlap(a.to_string(), b.to_string()));
                }
            }
        }
        axes.sort_by(|a, b| a.path.cmp(&b.path));
        let total = axes
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
            .filter(|&n| n <= MAX_RUNS);
        if total.is_none() {
            return Err(GridError::TooLarge(MAX_RUNS));
        }
        Ok(Self {
            base: base.into_iter().collect(),
            axes,
        })
    }

    /// Number of runs: the product of the axis lengths.
    pub fn len(&self) -> usize {
        self.axes.iter().map(|a| a.values.len()).product()
    }

    /// The axis paths, in axis order.
    pub fn paths(&self) -> Vec<String> {
        self.axes.iter().map(|a| a.path.clone()).collect()
    }

    /// The axis values of run `index`: mixed-radix digits, the last axis fastest.
    pub fn values(&self, index: usize) -> Vec<Value> {
        let mut rest = index;
        let mut out: Vec<Value> = self
            .axes
            .iter()
            .rev()
            .map(|a| {
                let v = a.values[rest % a.values.len()].clone();
                rest /= a.values.len();
                v
            })
            .collect();
        out.reverse();
        out
    }

    /// Every run with its config, or the first combination that is not a valid config.
    pub fn runs(&self) -> Result<Vec<Run>, GridError> {
        let defaults = default_config();
        let mut base = defaults;
        for (path, value) in &self.base {
            set(&mut base, path, value.clone())?;
        }
        let width = (self.len().saturating_sub(1)).to_string().len().max(3);
        (0..self.len())
            .map(|index| {
                let values = self.values(index);
                let invalid = |message: String| GridError::Invalid {
                    index,
                    values: self.describe(&values),
                    message,
                };
                let mut cfg = base.clone();
                for (axis, value) in self.axes.iter().zip(&values) {
                    set(&mut cfg, &axis.path, value.clone())?;
                }
                let config: DiffusionTrainConfig =
                    serde_json::from_value(cfg).map_err(|e| invalid(e.to_string()))?;
                config.validate().map_err(|e| invalid(e.to_string()))?;
                Ok(Run {
                    index,
                    id: format!("{index:0width$}-{}", self.hash(&values)),
                    values,
                    config,
                })
            })
            .collect()
    }

    /// `path = value` (compact JSON) for each axis, for messages and reports.
    pub fn describe(&self, values: &[Value]) -> String {
        self.axes
            .iter()
            .zip(values)
            .map(|(a, v)| format!("{} = {v}", a.path))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Start of the SHA-256 of every override of a run (base and axes by sorted path,
    /// compact JSON).
    fn hash(&self, values: &[Value]) -> String {
        let mut all: BTreeMap<&str, &Value> =
            self.base.iter().map(|(p, v)| (p.as_str(), v)).collect();
        all.extend(self.axes.iter().map(|a| a.path.as_str()).zip(values));
        let text = serde_json::to_string(&all).expect("JSON values serialise");
        let digest = Sha256::digest(text.as_bytes());
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..HASH_DIGITS]
            .to_string()
    }
}

/// The runs of `shard` that have no result yet, in index order.
pub fn pending<'a>(runs: &'a [Run], shard: Shard, done: &HashSet<String>) -> Vec<&'a Run> {
    runs.iter()
        .filter(|r| shard.contains(r.index) && !done.contains(&r.id))
        .collect()
}

/// A value as a results-table cell: strings bare, everything else compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn default_config() -> Value {
    serde_json::to_value(DiffusionTrainConfig::default()).expect("the default config serialises")
}

/// Collects the leaves of `table` under their full dotted paths. Dotted keys are split,
/// and nested tables are followed into the default config's tables, so
/// `unet.features`, `[unet] features` and `{"unet": {"features": …}}` name one field.
fn leaves(
    table: &Map<String, Value>,
    path: &mut Vec<String>,
    defaults: &Value,
    out: &mut Vec<(String, Value)>,
) -> Result<(), GridError> {
    for (key, value) in table {
        let depth = path.len();
        let mut slot = defaults;
        for segment in key.split('.') {
            path.push(segment.to_string());
            slot = field(slot, path)?;
        }
        match (value, slot) {
            // A table over a plain default names sub-fields that do not exist: recursing
            // reports them. Only an optional field (null by default) takes a whole table.
            (Value::Object(inner), d) if !inner.is_empty() && !d.is_null() => {
                leaves(inner, path, slot, out)?
            }
            _ => out.push((path.join("."), value.clone())),
        }
        path.truncate(depth);
    }
    Ok(())
}

/// The default value of the last segment of `path` inside `parent`.
fn field<'a>(parent: &'a Value, path: &[String]) -> Result<&'a Value, GridError> {
    let name = path.last().map(String::as_str).unwrap_or_default();
    let unknown = |known: String| GridError::UnknownField {
        path: path.join("."),
        known,
    };
    match parent {
        Value::Object(fields) => fields.get(name).ok_or_else(|| {
            let names: Vec<&str> = fields.keys().map(String::as_str).collect();
            unknown(format!("; fields here: {}", names.join(", ")))
        }),
        _ => Err(unknown(format!(
            " (`{}` has no sub-fields)",
            path[..path.len() - 1].join(".")
        ))),
    }
}

/// Replaces the field at a dotted `path` of the config JSON.
fn set(config: &mut Value, path: &str, value: Value) -> Result<(), GridError> {
    crate::overrides::set(config, path, value).ok_or_else(|| GridError::UnknownField {
        path: path.into(),
        known: String::new(),
    })
}

/// Whether setting `a` and `b` touches one field (equal, or one inside the other).
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    inside(a, b) || inside(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grid(text: &str) -> Result<Grid, GridError> {
        Grid::from_value(toml::from_str(text).unwrap(), None)
    }

    const SMALL: &str = r#"
        lr = [1e-3, 3e-4]
        unet.features = [[8, 16], [16, 32], [8, 16, 32]]
        [base]
        unet.groups = 4
        unet.attention = ""
    "#;

    #[test]
    fn the_product_varies_the_last_axis_fastest() {
        let g = grid(SMALL).unwrap();
        assert_eq!(g.paths(), ["lr", "unet.features"]);
        assert_eq!(g.len(), 6);
        let runs = g.runs().unwrap();
        let mut expected = Vec::new();
        for lr in [1e-3, 3e-4] {
            for f in [vec![8, 16], vec![16, 32], vec![8, 16, 32]] {
                expected.push((lr, f));
            }
        }
        let got: Vec<(f64, Vec<usize>)> = runs
            .iter()
            .map(|r| (r.config.lr, r.config.unet.features.clone()))
            .collect();
        assert_eq!(got, expected);
        assert!(runs.iter().enumerate().all(|(i, r)| r.index == i));
        assert!(
            runs.iter()
                .all(|r| r.config.unet.groups == 4 && r.config.unet.attention.is_empty())
        );
        assert_eq!(runs[4].values, [json!(3e-4), json!([16, 32])]);
        assert_eq!(
            g.describe(&runs[4].values),
            "lr = 0.0003, unet.features = [16,32]"
        );
    }

    #[test]
    fn dotted_keys_nested_tables_and_json_name_the_same_fields() {
        let dotted =
            grid("unet.features = [[8, 16, 32], [16, 32, 64]]\n[base]\nunet.groups = 4").unwrap();
        let quoted =
            grid("\"unet.features\" = [[8, 16, 32], [16, 32, 64]]\n[base.unet]\ngroups = 4")
                .unwrap();
        let nested =
            grid("[unet]\nfeatures = [[8, 16, 32], [16, 32, 64]]\n[base]\nunet = { groups = 4 }")
                .unwrap();
        let json_grid = Grid::from_value(
            json!({"unet": {"features": [[8, 16, 32], [16, 32, 64]]}, "base": {"unet.groups": 4}}),
            None,
        )
        .unwrap();
        for g in [&quoted, &nested, &json_grid] {
            assert_eq!(g, &dotted);
        }
        assert_eq!(dotted.paths(), ["unet.features"]);
        assert_eq!(
            dotted.base,
            BTreeMap::from([("unet.groups".into(), json!(4))])
        );
        let runs = dotted.runs().unwrap();
        assert_eq!(runs[1].config.unet.features, [16, 32, 64]);
        assert_eq!(runs[1].config.unet.groups, 4);
    }

    #[test]
    fn axis_order_does_not_depend_on_the_file() {
        let x = grid("weight_decay = [0.0, 1e-4]\nlr = [1e-3, 3e-4]\n").unwrap();
        let y = grid("lr = [1e-3, 3e-4]\nweight_decay = [0.0, 1e-4]\n").unwrap();
        let ids = |g: &Grid| {
            g.runs()
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&x), ids(&y));
        assert_eq!(x.paths(), ["lr", "weight_decay"]);
        assert_eq!(x.values(1), [json!(1e-3), json!(1e-4)]);
    }

    #[test]
    fn run_ids_hash_every_override() {
        let g = grid(SMALL).unwrap();
        let runs = g.runs().unwrap();
        // Independent: the SHA-256 of the canonical override JSON, keys sorted.
        let text = r#"{"lr":0.001,"unet.attention":"","unet.features":[8,16],"unet.groups":4}"#;
        let hex: String = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(runs[0].id, format!("000-{}", &hex[..8]));
        let ids: HashSet<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), runs.len());
        let other_base = grid(&SMALL.replace("unet.groups = 4", "unet.groups = 8")).unwrap();
        assert_ne!(other_base.runs().unwrap()[0].id, runs[0].id);
        let with_epochs = Grid::from_value(toml::from_str(SMALL).unwrap(), Some(3)).unwrap();
        let runs3 = with_epochs.runs().unwrap();
        assert!(runs3.iter().all(|r| r.config.epochs == 3));
        assert_ne!(runs3[0].id, runs[0].id);
        assert_eq!(runs3[0].id[..4], runs[0].id[..4]);
    }

    #[test]
    fn shards_partition_the_pending_runs() {
        let g = grid("seed = [0, 1, 2, 3, 4, 5, 6]\nlr = [1e-3]").unwrap();
        let runs = g.runs().unwrap();
        let none = HashSet::new();
        let index = |v: Vec<&Run>| v.iter().map(|r| r.index).collect::<Vec<_>>();
        let shard = |s: &str| s.parse::<Shard>().unwrap();
        assert_eq!(index(pending(&runs, shard("1/3"), &none)), [1, 4]);
        let mut all: Vec<usize> = (0..3)
            .flat_map(|i| index(pending(&runs, shard(&format!("{i}/3")), &none)))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        let done: HashSet<String> = [runs[0].id.clone(), runs[3].id.clone()].into();
        assert_eq!(index(pending(&runs, Shard::ALL, &done)), [1, 2, 4, 5, 6]);
        assert_eq!(index(pending(&runs, shard("0/3"), &done)), [6]);
    }

    #[test]
    fn bad_grids_are_clear_errors() {
        let e = grid("unet.featurs = [[8]]").unwrap_err();
        assert!(
            matches!(&e, GridError::UnknownField { path, known } if path == "unet.featurs" && known.contains("features")),
            "{e}"
        );
        let e = grid("lr.x = [1]").unwrap_err();
        assert!(e.to_string().contains("`lr` has no sub-fields"), "{e}");
        assert!(matches!(grid("lr = []"), Err(GridError::EmptyAxis(p)) if p == "lr"));
        assert!(matches!(grid("lr = 1e-3"), Err(GridError::NotAList(p)) if p == "lr"));
        assert!(matches!(grid("[base]\nlr = 1e-3"), Err(GridError::NoAxes)));
        assert!(matches!(
            grid("base = 1\nlr = [1]"),
            Err(GridError::NotATable(_))
        ));
        assert!(matches!(
            grid("lr = [1e-3]\n[base]\nlr = 1e-4"),
            Err(GridError::Overlap(a, b)) if a == "lr" && b == "lr"
        ));
        let e = Grid::from_value(json!({"unet": [{}], "unet.groups": [4]}), None).unwrap_err();
        assert!(matches!(e, GridError::Overlap(..)), "{e}");
        let e = Grid::from_value(json!({"epochs": [1, 2]}), Some(3)).unwrap_err();
        assert!(matches!(e, GridError::EpochsConflict), "{e}");
        let e = grid("seed = [0, 1]\nlr = [1e-3, -1.0]")
            .unwrap()
            .runs()
            .unwrap_err();
        assert!(
            matches!(&e, GridError::Invalid { index: 2, values, .. } if values == "lr = -1.0, seed = 0"),
            "{e}"
        );
        // JSON has no NaN or infinity: TOML's `nan` arrives as null and is refused.
        let e = grid("lr = [nan]").unwrap().runs().unwrap_err();
        assert!(e.to_string().contains("invalid type: null"), "{e}");
        let e = grid("lr = [\"fast\"]").unwrap().runs().unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let big: String = [
            "lr",
            "min_lr",
            "weight_decay",
            "grad_clip",
            "ema_decay",
            "seed",
        ]
        .iter()
        .map(|p| format!("{p} = [{}]\n", ["0.5"; 10].join(", ")))
        .collect();
        assert!(matches!(grid(&big), Err(GridError::TooLarge(_))));
    }

    #[test]
    fn overlap_is_by_whole_segments() {
        assert!(overlaps("unet", "unet.features"));
        assert!(overlaps("lr", "lr"));
        assert!(!overlaps("lr", "lr_min"));
        assert!(!overlaps("unet.features", "unet.groups"));
    }
}
