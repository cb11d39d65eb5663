//! Crash-safe file writes: data goes to a temporary file in the target's directory, is
//! fsynced and then renamed over the target, so a reader (or a restarted generator)
//! sees either the old file or the complete new one, never a half-written one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{DataError, Result};

/// Suffix of every temporary file; anything ending in it is a leftover of a killed write.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// A file being written under a temporary name until [`AtomicFile::commit`].
///
/// Dropping it uncommitted removes the temporary file.
pub(crate) struct AtomicFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file for `target` (see [`temp_path`]).
    pub(crate) fn create(target: &Path) -> Result<Self> {
        let (file, temp) = create_new_temp(target)?;
        Ok(Self {
            file,
            temp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// The open temporary file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Path of the temporary file.
    pub(crate) fn path(&self) -> &Path {
        &self.temp
    }

    /// Appends bytes to the temporary file.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(DataError::io(&self.temp, "write"))
    }

    /// Flushes the data to disk and renames the temporary file over the target.
    pub(crate) fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(DataError::io(&self.temp, "fsync"))?;
        fs::rename(&self.temp, &self.target)
            .map_err(DataError::io(&self.target, "rename into place"))?;
        self.committed = true;
        sync_parent(&self.target)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover is removed by the next resume anyway.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// `.{name}.{pid}.{n}{TEMP_SUFFIX}` next to `target`.
fn temp_path(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| DataError::invalid(target, "not a file path"))?;
    // Process id and a per-process counter: writers in other processes or threads never
    // share a temporary file, even for the same target.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(target.with_file_name(format!(".{name}.{}.{n}{TEMP_SUFFIX}", std::process::id())))
}

/// Temporary names tried before giving up: a name is only taken again by a writer in
/// another process with the same id (containers sharing a volume) or by a leftover.
const TEMP_ATTEMPTS: usize = 64;

/// Runs `create` (which must fail with `AlreadyExists` on a taken name) on fresh
/// temporary names for `target` until one is free, so neither a concurrent writer's file
/// nor a leftover hard link to a finished file is ever truncated.
fn on_new_temp<T>(
    target: &Path,
    mut create: impl FnMut(&Path) -> std::io::Result<T>,
) -> Result<(T, PathBuf)> {
    for _ in 0..TEMP_ATTEMPTS {
        let temp = temp_path(target)?;
        match create(&temp) {
            Ok(made) => return Ok((made, temp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(DataError::io(&temp, "create temporary file")(e)),
        }
    }
    Err(DataError::invalid(
        target,
        format!("{TEMP_ATTEMPTS} temporary names next to it are taken"),
    ))
}

/// A new temporary file for `target`.
fn create_new_temp(target: &Path) -> Result<(File, PathBuf)> {
    on_new_temp(target, |temp| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(temp)
    })
}

/// Puts `src` at `dst` atomically, as a hard link where the file system allows it and as
/// a copy otherwise.
pub(crate) fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    let temp = match on_new_temp(dst, |temp| fs::hard_link(src, temp)) {
        Ok(((), temp)) => temp,
        // Another file system, or one without hard links: copy instead.
        Err(_) => {
            let (mut file, temp) = create_new_temp(dst)?;
            let mut from = File::open(src).map_err(DataError::io(src, "open"))?;
            std::io::copy(&mut from, &mut file)
                .and_then(|_| file.sync_all())
                .map_err(DataError::io(&temp, "copy"))?;
            temp
        }
    };
    fs::rename(&temp, dst).map_err(DataError::io(dst, "rename into place"))?;
    sync_parent(dst)
}

/// Deletes the temporary files a killed writer left in `dir`; returns how many.
pub fn remove_temp_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(DataError::io(dir, "list directory"))? {
        let path = entry.map_err(DataError::io(dir, "list directory"))?.path();
        if path.to_string_lossy().ends_with(TEMP_SUFFIX) && path.is_file() {
            fs::remove_file(&path)
                .map_err(DataError::io(&path, "remove leftover temporary file"))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Makes a rename durable by syncing the directory that holds it (a no-op off Unix).
fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(DataError::io(dir, "fsync directory"))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_target_and_drop_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.bin");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");

        let mut abandoned = AtomicFile::create(&target).unwrap();
        abandoned.write_all(b"partial").unwrap();
        drop(abandoned);
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Threads writing the same target at once: each write lands whole (the target holds
    /// one writer's complete bytes, never a mix) and no temporary file is left.
    #[test]
    fn concurrent_writers_of_one_target_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("shared.bin");
        let payloads: Vec<Vec<u8>> = (0..8u8).map(|t| vec![t; 1 << 16]).collect();
        std::thread::scope(|s| {
            for p in &payloads {
                let target = &target;
                s.spawn(move || {
                    for _ in 0..10 {
                        write_atomic(target, p).unwrap();
                    }
                });
            }
        });
        let got = fs::read(&target).unwrap();
        assert!(payloads.contains(&got), "target holds a mix of writers");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A taken name (`AlreadyExists`) moves on to a fresh one; when all are taken the error
    /// says so instead of overwriting one.
    #[test]
    fn taken_temporary_names_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        let taken = || std::io::Error::from(std::io::ErrorKind::AlreadyExists);
        let mut tried = Vec::new();
        let (made, temp) = on_new_temp(&target, |t| {
            tried.push(t.to_path_buf());
            if tried.len() < 4 { Err(taken()) } else { Ok(7) }
        })
        .unwrap();
        assert_eq!((made, tried.len()), (7, 4));
        assert_eq!(temp, tried[3]);
        tried.sort();
        tried.dedup();
        assert_eq!(tried.len(), 4, "a name was tried twice");
        let e = on_new_temp(&target, |_| Err::<(), _>(taken())).unwrap_err();
        assert!(e.to_string().contains("are taken"), "{e}");
    }

    #[test]
    fn leftover_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".x.json.123.tmp"), b"half").unwrap();
        fs::write(dir.path().join("keep.json"), b"{}").unwrap();
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 1);
        assert!(dir.path().join("keep.json").exists());
    }

    #[test]
    fn link_or_copy_places_identical_content() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::write(&src, b"payload").unwrap();
        let dst = dir.path().join("dst");
        link_or_copy(&src, &dst).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"payload");
    }
}
