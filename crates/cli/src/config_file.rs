//! Loading of user config files: TOML or JSON by extension, unknown keys rejected.

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads `path` into `T`, or gives `T::default()` when no file is named.
pub fn load_or_default<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
        }
        Some("json") => serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid config", path.display())),
        _ => bail!(
            "{}: config files must end in .toml or .json",
            path.display()
        ),
    }
}
