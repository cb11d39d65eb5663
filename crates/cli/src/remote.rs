//! `--dataset` and `--model` given as URLs: each is fetched into the cache (verified,
//! unpacked, resumable; `fiberflow_data::fetch`) and replaced by its local folder before a
//! command starts.

use crate::progress::Bar;
use anyhow::{Result, bail};
use fiberflow_data::fetch::{is_url, resolve};
use std::path::PathBuf;

/// Replaces every URL among `paths` by its local copy. `sha256` (`--sha256`) is the
/// checksum of the one URL that has no `#sha256=` fragment; two such URLs are refused,
/// since one checksum cannot verify both.
pub fn localise(paths: &mut [&mut PathBuf], sha256: Option<&str>) -> Result<()> {
    let bare = paths
        .iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            is_url(&s) && !s.contains("#sha256=")
        })
        .count();
    if bare > 1 {
        bail!("several URLs and one --sha256: give each its checksum as URL#sha256=HEX");
    }
    if sha256.is_some() && bare == 0 {
        bail!("--sha256 is for a --dataset or --model given as a URL without #sha256=; none is");
    }
    for path in paths.iter_mut() {
        let local = resolve(path, sha256, &mut Bar::default())?;
        if local != **path {
            eprintln!("{} -> {}", path.display(), local.display());
            **path = local;
        }
    }
    Ok(())
}
