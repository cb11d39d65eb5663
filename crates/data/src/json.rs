//! JSON files of fiberflow (dataset manifests, records, splits, statistics, run logs): pretty atomic writes,
//! reads whose errors name the file, and the canonical hash later stages record.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::atomic::write_atomic;
use crate::error::{DataError, Result};

/// Reads `path` into `T`; a missing file is [`DataError::NotFound`] carrying `fix_if_missing`.
pub fn read_json<T: DeserializeOwned>(path: &Path, fix_if_missing: &str) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
                fix: fix_if_missing.to_string(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                action: "read",
                error: source,
            }
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        error: source,
    })
}

/// Writes `value` to `path` as indented JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        error: source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// SHA-256 (hex) of the canonical JSON of `value`: compact, object keys sorted, whatever
/// the `serde_json` features of the build. `path` names the file `value` belongs to.
pub fn canonical_sha256<T: Serialize>(value: &T, path: &Path) -> Result<String> {
    let value = serde_json::to_value(value).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        error: source,
    })?;
    let text = sorted(value).to_string();
    Ok(format!("{:x}", Sha256::digest(text.as_bytes())))
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Serde helpers for `f64` values that may be unknown: NaN and ±Inf are written as `null`
/// and `null` reads back as NaN (JSON has no NaN).
pub(crate) mod unknown_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            s.serialize_f64(*value)
        } else {
            s.serialize_none()
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    /// The same for a list of values.
    pub(crate) mod vec {
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(values: &[f64], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(values.iter().map(|v| v.is_finite().then_some(*v)))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            Ok(Vec::<Option<f64>>::deserialize(d)?
                .into_iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_hash_ignores_key_order_but_not_values() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":2}"#).unwrap();
        let hash = |v: &Value| canonical_sha256(v, Path::new("x.json")).unwrap();
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
        assert_eq!(hash(&a).len(), 64);
    }

    #[test]
    fn missing_and_broken_json_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        let err = read_json::<Value>(&path, "run it").unwrap_err().to_string();
        assert!(err.contains("x.json") && err.contains("not found") && err.contains("run it"));
        std::fs::write(&path, b"{\"a\": ").unwrap();
        let err = read_json::<Value>(&path, "").unwrap_err().to_string();
        assert!(
            err.contains("x.json") && err.contains("invalid JSON"),
            "{err}"
        );
    }
}
