//! Fetching by URL against an HTTP server on 127.0.0.1 that the test starts itself: tar,
//! zip and single-file downloads, the cache, a wrong checksum, and a truncated download
//! resumed with a range request.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fiberflow_data::Silent;
use fiberflow_data::fetch::{Remote, fetch};
use sha2::{Digest, Sha256};

/// What the server serves and what it saw.
#[derive(Default)]
struct State {
    body: Vec<u8>,
    /// Send only this many bytes of a full response, announcing the full length.
    cut_at: Option<usize>,
    /// The `Range` header of each request ("" when none).
    ranges: Vec<String>,
}

/// A one-route HTTP/1.1 server on an ephemeral loopback port; returns its base URL.
fn serve(state: Arc<Mutex<State>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').to_string();
                }
            }
            let mut s = state.lock().unwrap();
            s.ranges.push(range.clone());
            let cut = s.cut_at.take();
            let start: usize = range.parse().unwrap_or(0);
            let rest = &s.body[start.min(s.body.len())..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    rest.len(),
                    s.body.len() - 1,
                    s.body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                )
            };
            let sent = cut.map_or(rest, |n| &rest[..n]);
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(sent);
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A tar archive of `run/log.json` and `run/weights.bin` (100 kB, so a cut falls inside).
fn tar_of_a_run() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("run/log.json", b"{\"epochs\": 3}".to_vec()),
        (
            "run/weights.bin",
            (0..100_000u32).map(|i| (i % 251) as u8).collect(),
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, data.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn remote(base: &str, file: &str, body: &[u8]) -> Remote {
    Remote {
        url: format!("{base}/{file}"),
        sha256: sha256(body),
    }
}

#[test]
fn a_tar_download_is_unpacked_once_and_then_served_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let body = tar_of_a_run();
    let state = Arc::new(Mutex::new(State {
        body: body.clone(),
        ..Default::default()
    }));
    let base = serve(state.clone());
    let r = remote(&base, "run.tar", &body);
    let dir = fetch(&r, cache.path(), &mut Silent).unwrap();
    assert_eq!(dir, cache.path().join(&r.sha256).join("run"));
    assert_eq!(
        std::fs::read(dir.join("log.json")).unwrap(),
        b"{\"epochs\": 3}"
    );
    assert_eq!(
        std::fs::read(dir.join("weights.bin")).unwrap().len(),
        100_000
    );
    assert!(
        !cache
            .path()
            .join(format!("downloads/{}.part", r.sha256))
            .exists()
    );
    // Cached: no second request.
    assert_eq!(fetch(&r, cache.path(), &mut Silent).unwrap(), dir);
    assert_eq!(state.lock().unwrap().ranges.len(), 1);
}

#[test]
fn a_wrong_checksum_is_an_error_and_leaves_nothing_behind() {
    let cache = tempfile::tempdir().unwrap();
    let body = tar_of_a_run();
    let base = serve(Arc::new(Mutex::new(State {
        body,
        ..Default::default()
    })));
    let r = Remote {
        url: format!("{base}/run.tar"),
        sha256: sha256(b"something else"),
    };
    let e = fetch(&r, cache.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains(&r.sha256),
        "{e}"
    );
    // Only the (empty) lock file stays: removing it could race with a waiting process.
    let left: Vec<_> = walk(cache.path())
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "lock"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_truncated_download_is_an_error_and_the_rerun_resumes() {
    let cache = tempfile::tempdir().unwrap();
    let body = tar_of_a_run();
    let half = body.len() / 2;
    let state = Arc::new(Mutex::new(State {
        body: body.clone(),
        cut_at: Some(half),
        ..Default::default()
    }));
    let base = serve(state.clone());
    let r = remote(&base, "run.tar", &body);
    let e = fetch(&r, cache.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated") || e.contains("interrupted"), "{e}");
    assert!(e.contains("rerun to resume"), "{e}");
    // Nothing unpacked; the part kept for the resume.
    assert!(!cache.path().join(&r.sha256).exists());
    let part = cache.path().join(format!("downloads/{}.part", r.sha256));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), half as u64);

    let dir = fetch(&r, cache.path(), &mut Silent).unwrap();
    assert_eq!(state.lock().unwrap().ranges, ["", &half.to_string()]);
    assert_eq!(
        std::fs::read(dir.join("weights.bin")).unwrap().len(),
        100_000
    );
}

#[test]
fn zip_archives_and_single_files_are_fetched_too() {
    let cache = tempfile::tempdir().unwrap();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("data/dataset.json", options).unwrap();
    zip.write_all(&[b'x'; 5000]).unwrap();
    let zipped = zip.finish().unwrap().into_inner();
    let state = Arc::new(Mutex::new(State {
        body: zipped.clone(),
        ..Default::default()
    }));
    let base = serve(state.clone());
    let dir = fetch(
        &remote(&base, "data.zip", &zipped),
        cache.path(),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(dir.join("dataset.json")).unwrap(),
        [b'x'; 5000]
    );

    let bundle = b"a model bundle".to_vec();
    state.lock().unwrap().body = bundle.clone();
    let file = fetch(
        &remote(&base, "model.ffm", &bundle),
        cache.path(),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(file.file_name().unwrap(), "model.ffm");
    assert_eq!(std::fs::read(file).unwrap(), bundle);
}

/// Every file below `dir` (empty folders do not count).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn links_in_a_tar_archive_are_refused() {
    let cache = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_cksum();
    builder
        .append_link(&mut header, "run/escape", "/etc")
        .unwrap();
    let body = builder.into_inner().unwrap();
    let base = serve(Arc::new(Mutex::new(State {
        body: body.clone(),
        ..Default::default()
    })));
    let r = remote(&base, "run.tar", &body);
    let e = fetch(&r, cache.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("link or special file"), "{e}");
    assert!(!cache.path().join(&r.sha256).exists());
}

#[test]
fn two_processes_fetching_the_same_archive_take_turns() {
    let cache = tempfile::tempdir().unwrap();
    let body = tar_of_a_run();
    let state = Arc::new(Mutex::new(State {
        body: body.clone(),
        ..Default::default()
    }));
    let r = remote(&serve(state.clone()), "run.tar", &body);
    let dirs: Vec<_> = std::thread::scope(|s| {
        let a = s.spawn(|| fetch(&r, cache.path(), &mut Silent));
        let b = s.spawn(|| fetch(&r, cache.path(), &mut Silent));
        [a.join().unwrap(), b.join().unwrap()]
    })
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(dirs[0], dirs[1]);
    // The second waited for the first and found the content unpacked.
    assert_eq!(state.lock().unwrap().ranges.len(), 1);
}
