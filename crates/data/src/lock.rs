//! Advisory locks on output folders. Two commands writing one dataset, run, grid or
//! prediction folder at once interleave their files (samples of two seeds under one
//! header, one run's log beside another's weights) and both exit 0; every writer
//! therefore holds `DIR/.fiberflow.lock` for its whole run, and a second writer gets an
//! error naming the holder instead.
//!
//! The lock is the kernel's `flock` (through `std::fs::File::try_lock`), which the kernel
//! drops when its process dies however it dies, so a lock left by a killed run is taken
//! over by the next one without any staleness heuristics. The file's text (pid and
//! command of the holder) only serves the error message. The file stays after the run:
//! deleting it while holding the lock would let a waiting process lock the unlinked file
//! while a third creates a new one. The one exception is a folder the lock itself created
//! and the command left empty (it failed before writing anything): it is removed again, so
//! a refused command leaves no trace; a rival that opened the file just before it was
//! unlinked finds, once it holds the lock, that its file is no longer the one at the path,
//! and locks that one instead.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Name of the lock file inside a locked folder; readers of a folder's content skip it.
pub const LOCK_FILE: &str = ".fiberflow.lock";

/// Whether a folder entry is the lock file (not a result of any command).
pub fn is_lock_file(name: &std::ffi::OsStr) -> bool {
    name == LOCK_FILE
}

/// A held lock on a folder, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct FolderLock {
    file: Option<File>,
    dir: PathBuf,
    /// Whether `acquire` created the folder.
    created: bool,
}

impl FolderLock {
    /// Creates `dir` if needed and locks it for `command` (named in a rival's error).
    /// Where the file system cannot lock (some network file systems), it warns and goes
    /// on unlocked rather than refusing all work there.
    pub fn acquire(dir: &Path, command: &str) -> Result<Self> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(DataError::io(dir, "create the folder"))?;
        let path = dir.join(LOCK_FILE);
        // A lock whose file was unlinked meanwhile (a rival's empty folder removed on its
        // drop) guards nothing: take the one now at the path instead.
        for _ in 0..8 {
            let mut file = open(&path)?;
            match file.try_lock() {
                Ok(()) if same_file(&file, &path) => {
                    record_holder(&mut file, command);
                    return Ok(Self {
                        file: Some(file),
                        dir: dir.to_path_buf(),
                        created,
                    });
                }
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => return Err(held(dir, &mut file)),
                Err(TryLockError::Error(e)) => {
                    eprintln!(
                        "warning: {}: cannot lock ({e}); going on without protection against a second writer",
                        path.display()
                    );
                    return Ok(Self {
                        file: None,
                        dir: dir.to_path_buf(),
                        created: false,
                    });
                }
            }
        }
        Err(DataError::invalid(
            &path,
            "the lock file keeps being replaced; is another program deleting it?",
        ))
    }

    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Opens (or creates) the lock file; read-only where it cannot be written (another
/// user's file, a read-only folder), since `flock` needs no write access.
fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .or_else(|_| File::open(path))
        .map_err(DataError::io(path, "open the lock file"))
}

/// Whether the open `file` is still the file at `path`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Writes the holder's pid and command for a rival's error; informative only, so a
/// read-only lock file just stays silent.
fn record_holder(file: &mut File, command: &str) {
    let text = format!("pid {}, `fiberflow {command}`\n", std::process::id());
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(text.as_bytes()));
}

/// The error for a folder locked by `file`'s holder.
fn held(dir: &Path, file: &mut File) -> DataError {
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    let holder = holder.trim();
    let who = if holder.is_empty() {
        "another fiberflow process".to_string()
    } else {
        format!("another fiberflow process ({holder})")
    };
    DataError::mismatch(
        dir,
        format!("is being written by {who}"),
        "wait for it to finish, or choose another output folder",
    )
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let only_lock = || {
            std::fs::read_dir(&self.dir).is_ok_and(|entries| {
                entries
                    .filter_map(std::result::Result::ok)
                    .all(|e| is_lock_file(&e.file_name()))
            })
        };
        if self.created && only_lock() {
            // Best effort: a folder that cannot be removed is merely left empty.
            let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = std::fs::remove_dir(&self.dir);
        }
        drop(self.file.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holder_named_until_the_first_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let first = FolderLock::acquire(&dir, "train vae").unwrap();
        assert_eq!(first.dir(), dir);
        // flock conflicts between open file descriptions, so this holds within one
        // process as it does between two.
        let e = FolderLock::acquire(&dir, "generate")
            .unwrap_err()
            .to_string();
        let pid = std::process::id().to_string();
        assert!(
            e.contains("being written by another fiberflow process") && e.contains(&pid),
            "{e}"
        );
        assert!(e.contains("`fiberflow train vae`"), "{e}");
        drop(first);
        // Released on drop, as on a kill: the next writer takes it over.
        let again = FolderLock::acquire(&dir, "generate").unwrap();
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("pid {pid}, `fiberflow generate`\n"));
        drop(again);
    }

    #[test]
    fn a_folder_created_and_left_empty_is_removed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (empty, filled) = (tmp.path().join("empty"), tmp.path().join("filled"));
        drop(FolderLock::acquire(&empty, "solve").unwrap());
        assert!(!empty.exists());
        let lock = FolderLock::acquire(&filled, "solve").unwrap();
        std::fs::write(filled.join("U.npy"), b"x").unwrap();
        drop(lock);
        assert!(filled.join("U.npy").exists());
        // A folder that existed before is never removed, empty or not.
        std::fs::create_dir(&empty).unwrap();
        drop(FolderLock::acquire(&empty, "solve").unwrap());
        assert!(empty.exists());
    }
}
