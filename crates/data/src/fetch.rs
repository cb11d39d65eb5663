//! Datasets and trained models fetched by URL, as the reference project fetches its own
//! when they are missing: wherever a command takes a dataset or run folder it also takes an
//! `http(s)://` URL of a `.tar` or `.zip` archive of one (or of a single file), with its
//! SHA-256. The download goes to a cache (`$FIBERFLOW_CACHE`, else the user's cache folder
//! `…/fiberflow`), resumes with an HTTP range request after an interruption, is verified
//! before use, and is unpacked into a temporary folder renamed into place, so a failure at
//! any point leaves nothing half-unpacked: the next run starts over or resumes.
//!
//! Layout: `CACHE/downloads/<sha256>.part` while downloading, beside its empty lock file
//! `<sha256>.lock` (kept: deleting a lock file races with a process waiting on it);
//! `CACHE/<sha256>/` when verified and unpacked (an archive holding one top folder resolves
//! to that folder).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::progress::Progress;

/// Progress is reported per this many bytes.
const STEP_BYTES: u64 = 1 << 20;

/// A URL and the SHA-256 its content must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    pub sha256: String,
}

/// Whether `spec` names a download rather than a local path.
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("https://") || spec.starts_with("http://")
}

impl Remote {
    /// `Some` when `spec` is a URL: its checksum comes from a `#sha256=HEX` fragment or, if
    /// it has none, from `sha256`; a URL without either is an error.
    pub fn parse(spec: &str, sha256: Option<&str>) -> Result<Option<Self>> {
        if !is_url(spec) {
            return Ok(None);
        }
        let (url, fragment) = match spec.split_once("#sha256=") {
            Some((url, hex)) => (url, Some(hex)),
            None => (spec, None),
        };
        let hex = fragment.or(sha256).ok_or_else(|| {
            DataError::invalid(
                Path::new(spec),
                "a URL needs its SHA-256: --sha256 HEX, or URL#sha256=HEX",
            )
        })?;
        let hex = hex.to_ascii_lowercase();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DataError::invalid(
                Path::new(spec),
                format!("`{hex}` is not a SHA-256 (64 hexadecimal digits)"),
            ));
        }
        Ok(Some(Self {
            url: url.to_string(),
            sha256: hex,
        }))
    }
}

/// The cache folder: `$FIBERFLOW_CACHE`, else `<user cache>/fiberflow`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FIBERFLOW_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    dirs::cache_dir()
        .map(|d| d.join("fiberflow"))
        .ok_or_else(|| {
            DataError::invalid(
                Path::new("~"),
                "no user cache folder is known; set FIBERFLOW_CACHE",
            )
        })
}

/// The local path of `spec`: itself when it is not a URL, else the verified, unpacked
/// download (fetched unless cached).
pub fn resolve(spec: &Path, sha256: Option<&str>, progress: &mut dyn Progress) -> Result<PathBuf> {
    match Remote::parse(&spec.to_string_lossy(), sha256)? {
        None => Ok(spec.to_path_buf()),
        Some(remote) => fetch(&remote, &cache_dir()?, progress),
    }
}

/// Downloads (or resumes), verifies and unpacks `remote` under `cache`. Processes fetching
/// the same content take turns (a lock file per checksum), so the second finds it done.
pub fn fetch(remote: &Remote, cache: &Path, progress: &mut dyn Progress) -> Result<PathBuf> {
    let done = cache.join(&remote.sha256);
    if done.is_dir() {
        return content_of(&done);
    }
    let downloads = cache.join("downloads");
    fs::create_dir_all(&downloads).map_err(DataError::io(&downloads, "create directory"))?;
    let lock_path = downloads.join(format!("{}.lock", remote.sha256));
    let lock = File::create(&lock_path).map_err(DataError::io(&lock_path, "create"))?;
    lock.lock().map_err(DataError::io(&lock_path, "lock"))?;
    if done.is_dir() {
        return content_of(&done);
    }
    let part = downloads.join(format!("{}.part", remote.sha256));
    download(remote, &part, progress)?;

    let got = sha256_of(&part)?;
    if got != remote.sha256 {
        // A wrong file is not resumable: the next run downloads it again.
        let _ = fs::remove_file(&part);
        return Err(DataError::invalid(
            Path::new(&remote.url),
            format!(
                "checksum mismatch: expected SHA-256 {}, downloaded {got}; the download was deleted",
                remote.sha256
            ),
        ));
    }
    let staging = cache.join(format!(
        "{}.unpacking-{}",
        remote.sha256,
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(DataError::io(&staging, "create directory"))?;
    if let Err(e) = unpack(&part, &staging, file_name(&remote.url)) {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    match fs::rename(&staging, &done) {
        Ok(()) => {}
        // Another process finished the same download first.
        Err(_) if done.is_dir() => {
            let _ = fs::remove_dir_all(&staging);
        }
        Err(e) => return Err(DataError::io(&done, "rename into place")(e)),
    }
    let _ = fs::remove_file(&part);
    content_of(&done)
}

/// The last path segment of a URL (without query), e.g. `data.tar`.
fn file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("download")
}

/// Appends the rest of `remote` to `part` (a range request when part of it is there).
fn download(remote: &Remote, part: &Path, progress: &mut dyn Progress) -> Result<()> {
    let err = |what: String| DataError::invalid(Path::new(&remote.url), what);
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    // A stalled server is an error, not a hang; a slow one is fine (per read, not per call).
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .build()
        .new_agent();
    // The bytes as stored: a transparently decompressed body could not be resumed by range.
    let mut request = agent.get(&remote.url).header("Accept-Encoding", "identity");
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request
        .call()
        .map_err(|e| err(format!("download failed: {e}")))?;
    let status = response.status().as_u16();
    let resume = match status {
        206 => {
            let range = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !range.starts_with(&format!("bytes {have}-")) {
                return Err(err(format!(
                    "the server resumed at `{range}`, not at byte {have}"
                )));
            }
            true
        }
        200 => false,
        // The part on disk is already complete.
        416 if have > 0 => return Ok(()),
        _ => return Err(err(format!("the server answered HTTP {status}"))),
    };
    let expected = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resume)
        .truncate(!resume)
        .open(part)
        .map_err(DataError::io(part, "open"))?;
    let mut body = response.into_body().into_reader();
    progress.start("download", expected.map_or(0, |n| n.div_ceil(STEP_BYTES)));
    let start = if resume { have } else { 0 };
    let (mut received, mut reported) = (0u64, 0u64);
    let mut buf = vec![0u8; 1 << 16];
    let copied = loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => {
                break Err(err(format!(
                    "download interrupted after {} bytes ({e}); rerun to resume",
                    start + received
                )));
            }
        };
        if let Err(e) = file.write_all(&buf[..n]) {
            break Err(DataError::io(part, "write")(e));
        }
        received += n as u64;
        while received >= (reported + 1) * STEP_BYTES {
            reported += 1;
            progress.step();
        }
    };
    progress.finish();
    copied?;
    file.sync_all().map_err(DataError::io(part, "sync"))?;
    if let Some(n) = expected
        && received < n
    {
        return Err(err(format!(
            "truncated download: {received} of {n} bytes arrived; rerun to resume"
        )));
    }
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(DataError::io(path, "open"))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(DataError::io(path, "read"))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Unpacks a `.tar` or `.zip` archive into `dir`, or copies any other file there under
/// `name` (a model bundle). Entries that would land outside `dir` are refused.
fn unpack(archive: &Path, dir: &Path, name: &str) -> Result<()> {
    let corrupt = |reason: String| DataError::Corrupt {
        path: archive.to_path_buf(),
        reason,
    };
    let file = File::open(archive).map_err(DataError::io(archive, "open"))?;
    if name.ends_with(".tar") {
        let unreadable = |e: std::io::Error| corrupt(format!("not a readable tar archive ({e})"));
        let mut archive = tar::Archive::new(file);
        for entry in archive.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            // Links could point outside the cache, where later commands would write.
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir()) {
                return Err(corrupt(format!(
                    "{} is a link or special file; only files and folders are unpacked",
                    entry
                        .path()
                        .map_or("an entry".into(), |p| p.display().to_string())
                )));
            }
            entry.unpack_in(dir).map_err(unreadable)?;
        }
        Ok(())
    } else if name.ends_with(".zip") {
        zip::ZipArchive::new(file)
            .and_then(|mut z| z.extract(dir))
            .map_err(|e| corrupt(format!("not a readable zip archive ({e})")))
    } else {
        fs::copy(archive, dir.join(name))
            .map(drop)
            .map_err(DataError::io(dir, "copy into"))
    }
}

/// What an unpacked download stands for: its single top-level folder if it has one, else
/// the folder itself (or its single file, a bundle).
fn content_of(dir: &Path) -> Result<PathBuf> {
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(DataError::io(dir, "list"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    Ok(match entries.as_slice() {
        [only] => only.clone(),
        _ => dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn urls_need_a_checksum_and_paths_pass_through() {
        assert_eq!(Remote::parse("runs/data", None).unwrap(), None);
        let r = Remote::parse("https://h/d.tar", Some(HEX))
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.url.as_str(), r.sha256.as_str()),
            ("https://h/d.tar", HEX)
        );
        let f = Remote::parse(
            &format!("https://h/d.tar#sha256={}", HEX.to_uppercase()),
            None,
        );
        assert_eq!(f.unwrap().unwrap().sha256, HEX);
        let e = Remote::parse("https://h/d.tar", None).unwrap_err();
        assert!(e.to_string().contains("--sha256"), "{e}");
        let e = Remote::parse("https://h/d.tar", Some("abc")).unwrap_err();
        assert!(e.to_string().contains("64 hexadecimal"), "{e}");
        assert_eq!(file_name("https://h/a/model.zip?x=1"), "model.zip");
        assert_eq!(file_name("https://h/"), "download");
    }
}
