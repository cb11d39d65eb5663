//! Crash-safe file writes: bytes go to a temporary file in the target's directory, are
//! fsynced and renamed over the target, so a viewer never opens a half-written figure or
//! volume, and a failed write leaves any previous file intact.

use std::io::Write;
use std::path::Path;

use crate::error::{Result, VizError};

/// Writes `bytes` to `path` atomically; the parent directory must exist.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.file_name().is_none() {
        return Err(VizError::invalid(
            path.display().to_string(),
            "not a file path",
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".viz-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(VizError::io(dir, "create a temporary file in"))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(VizError::io(temp.path(), "write"))?;
    temp.persist(path)
        .map_err(|e| VizError::io(path, "rename into place")(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_target_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.png");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("missing").join("a.png");
        let err = write_atomic(&target, b"x").unwrap_err();
        assert!(matches!(err, VizError::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
