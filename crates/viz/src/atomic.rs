//! Crash-safe file writes: bytes go to a temporary file next to the target, are fsynced
//! and renamed over it, so a viewer never opens a half-written figure or volume and a
//! failed write leaves any previous file intact. The temporary file is opened like any
//! other (permissions follow the umask, unlike `tempfile`'s private 0600 files).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Result, VizError};

/// Writes `bytes` to `path` atomically; the parent directory must exist.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = temp_path(path)?;
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .and_then(|mut f: File| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(VizError::io(&temp, "write temporary file"))
        .and_then(|()| fs::rename(&temp, path).map_err(VizError::io(path, "rename into place")));
    if written.is_err() {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&temp);
    }
    written
}

/// `.{name}.{pid}-{n}.tmp` next to `target`, unique within this process.
fn temp_path(target: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = target
        .file_name()
        .ok_or_else(|| VizError::invalid(target.display().to_string(), "not a file path"))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(target.with_file_name(format!(
        ".{}.{}-{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
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
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_readable_by_others_like_any_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (ours, plain) = (dir.path().join("a.png"), dir.path().join("b.png"));
        write_atomic(&ours, b"x").unwrap();
        fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ours), mode(&plain));
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("missing").join("a.png");
        let err = write_atomic(&target, b"x").unwrap_err();
        assert!(matches!(err, VizError::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
