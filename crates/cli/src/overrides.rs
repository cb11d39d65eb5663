//! Dotted-path overrides of a config (`unet.features=[8,16]`), made on the config's JSON
//! form so that every field is reachable without a flag of its own. `train --set` and
//! the grids of `gridsearch` both go through here, so a path means the same to each.

use anyhow::{Context, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Replaces the field at dotted `path` of a config's JSON form; `None` (and nothing
/// changed) when the config has no such field.
pub fn set(config: &mut Value, path: &str, value: Value) -> Option<()> {
    let mut slot = config;
    for key in path.split('.') {
        slot = slot.get_mut(key)?;
    }
    *slot = value;
    Some(())
}

/// Applies `FIELD.PATH=VALUE` assignments to `cfg` in order. A value is read as JSON, or
/// else taken as a plain string (`unet.attention=3..2`).
pub fn apply<T: Serialize + DeserializeOwned>(cfg: &T, assignments: &[String]) -> Result<T> {
    let mut value = serde_json::to_value(cfg)?;
    for assignment in assignments {
        let (path, raw) = assignment
            .split_once('=')
            .with_context(|| format!("--set {assignment}: expected FIELD=VALUE"))?;
        let new = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
        set(&mut value, path, new)
            .with_context(|| format!("--set {assignment}: no config field `{path}`"))?;
    }
    serde_json::from_value(value).context("--set gave a value of the wrong type")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        features: Vec<usize>,
        attention: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Config {
        lr: f64,
        unet: Inner,
    }

    fn config() -> Config {
        Config {
            lr: 1e-3,
            unet: Inner {
                features: vec![8],
                attention: String::new(),
            },
        }
    }

    fn error(sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", apply(&config(), &sets).unwrap_err())
    }

    #[test]
    fn paths_reach_nested_fields_and_values_are_json_or_strings() {
        let sets = ["lr=2e-4", "unet.features=[16,32]", "unet.attention=3..2"];
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let cfg = apply(&config(), &sets).unwrap();
        assert_eq!(cfg.lr, 2e-4);
        assert_eq!(cfg.unet.features, [16, 32]);
        assert_eq!(cfg.unet.attention, "3..2");
    }

    #[test]
    fn unknown_fields_bad_syntax_and_wrong_types_are_refused() {
        assert!(error(&["unet.width=3"]).contains("no config field `unet.width`"));
        assert!(error(&["lr.x=3"]).contains("no config field `lr.x`"));
        assert!(error(&["lr"]).contains("expected FIELD=VALUE"));
        assert!(error(&["lr=fast"]).contains("wrong type"));
        let mut value = serde_json::json!({"a": {"b": 1}});
        assert_eq!(set(&mut value, "a.c", Value::Null), None);
        assert_eq!(value, serde_json::json!({"a": {"b": 1}}));
    }
}
