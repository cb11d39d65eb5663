//! Hostile and corrupted `.pt` files against the reference import, in a test binary of
//! its own: its global allocator counts heap bytes, so each test can assert what the
//! reader allocated, not only that it failed. The tests take a lock so that one test's
//! allocations never count in another's peak.

use fiberflow_testkit::CountingAllocator;
use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use fiberflow_data::reference::ReferenceSource;
use fiberflow_data::{Field, Silent, import_reference};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// [`System`], counting the bytes allocated now and at most.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::with_cap(usize::MAX);

/// One test at a time, so peaks are each test's own.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f`, returning its result and the most heap it held above what was held before.
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = fiberflow_testkit::reset_peak();
    let result = f();
    (result, fiberflow_testkit::peak().saturating_sub(base))
}

const MIB: usize = 1 << 20;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/x")
}

/// A source directory `dir/x` holding the fixtures, each replaced by `files` where named.
fn source(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let x = dir.join("x");
    fs::create_dir_all(&x).unwrap();
    for name in ["U.pt", "U_2d.pt", "domain.pt", "p.pt", "dxyz.pt"] {
        match files.iter().find(|(n, _)| *n == name) {
            Some((_, bytes)) => fs::write(x.join(name), bytes).unwrap(),
            None => {
                fs::copy(fixtures().join(name), x.join(name)).unwrap();
            }
        }
    }
    dir.to_path_buf()
}

/// Appends a pickle integer (LONG1 of 8 bytes).
fn int(p: &mut Vec<u8>, v: u64) {
    p.extend([0x8a, 8]);
    p.extend(v.to_le_bytes());
}

/// Appends a pickle string (BINUNICODE).
fn string(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.as_bytes());
}

/// The pickle torch.save writes for a tensor: `_rebuild_tensor_v2(storage, offset, shape,
/// stride, False, OrderedDict())`, the storage `torch.<class>` of `numel` elements.
fn pickle(class: &str, numel: u64, offset: u64, shape: &[u64], stride: &[u64]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    string(&mut p, "storage");
    p.extend(format!("ctorch\n{class}\n").bytes());
    string(&mut p, "0");
    string(&mut p, "cpu");
    int(&mut p, numel);
    p.extend(b"tQ");
    int(&mut p, offset);
    for dims in [shape, stride] {
        p.push(b'(');
        dims.iter().for_each(|&d| int(&mut p, d));
        p.push(b't');
    }
    p.push(0x89);
    p.extend(b"ccollections\nOrderedDict\n)Rt");
    p.extend(b"R.");
    p
}

/// A torch.save archive of `pickle` and the storage `archive/data/0`, which `storage`
/// writes (deflated when `deflate`).
fn archive(pickle: &[u8], deflate: bool, storage: impl FnOnce(&mut dyn Write)) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/byteorder", stored).unwrap();
    zip.write_all(b"little").unwrap();
    let method = if deflate {
        CompressionMethod::Deflated
    } else {
        CompressionMethod::Stored
    };
    let options = SimpleFileOptions::default().compression_method(method);
    zip.start_file("archive/data/0", options).unwrap();
    storage(&mut zip);
    zip.finish().unwrap().into_inner()
}

/// Rewrites the uncompressed size of entry `name` in its local and central headers:
/// a zip that lies about what an entry inflates to.
fn declare_size(zip: &mut [u8], name: &str, size: u32) {
    let mut patched = 0;
    for at in 0..zip.len().saturating_sub(46) {
        let (size_at, name_at) = match &zip[at..at + 4] {
            b"PK\x03\x04" => (at + 22, at + 30),
            b"PK\x01\x02" => (at + 24, at + 46),
            _ => continue,
        };
        if zip[name_at..].starts_with(name.as_bytes()) {
            zip[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "{name} in the local and central headers");
}

fn import_error(src: &Path) -> (String, usize) {
    let out = tempfile::tempdir().unwrap();
    let (result, peak) = peak_heap(|| import_reference(src, out.path(), &mut Silent));
    match result {
        Ok(_) => panic!("{} was imported", src.display()),
        Err(e) => (e.to_string(), peak),
    }
}

#[test]
fn a_stride_0_view_or_a_view_past_its_storage_is_refused_without_allocating_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    // 2^20 samples of 3×3×8×8 floats (2.4 GB) over the 576 floats of one.
    let storage = |w: &mut dyn Write| w.write_all(&[0; 576 * 4]).unwrap();
    let shape = [1 << 20, 3, 3, 8, 8];
    let expanded = archive(
        &pickle("FloatStorage", 576, 0, &shape, &[0, 192, 64, 8, 1]),
        false,
        storage,
    );
    let src = source(&tmp.path().join("expanded"), &[("U.pt", &expanded)]);
    let (err, peak) = import_error(&src);
    assert!(
        err.contains("U.pt")
            && err.contains("strides [0, 192, 64, 8, 1] over shape [1048576, 3, 3, 8, 8]")
            && err.contains("a stride of 0 repeats one stored element"),
        "{err}"
    );
    assert!(peak < MIB, "{peak} bytes");

    let contiguous = [192 * 3, 192, 64, 8, 1];
    let past = archive(
        &pickle("FloatStorage", 576, 0, &shape, &contiguous),
        false,
        storage,
    );
    let src = source(&tmp.path().join("past"), &[("U.pt", &past)]);
    let (err, peak) = import_error(&src);
    assert!(
        err.contains("U.pt")
            && err.contains(
                "needs 603979776 elements from element 0 of storage data/0, which holds 576"
            ),
        "{err}"
    );
    assert!(peak < MIB, "{peak} bytes");
}

#[test]
fn a_deflate_bomb_is_refused_before_it_is_inflated() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    // U of the fixtures' shape (4, 3, 3, 8, 8): 9216 bytes, but its storage entry
    // inflates to 128 MiB (of zeros, some 130 KB deflated).
    let u = pickle(
        "FloatStorage",
        2304,
        0,
        &[4, 3, 3, 8, 8],
        &[576, 192, 64, 8, 1],
    );
    let bomb = |w: &mut dyn Write| {
        let zeros = vec![0; MIB];
        (0..128).for_each(|_| w.write_all(&zeros).unwrap());
    };
    let honest = archive(&u, true, bomb);
    assert!(honest.len() < MIB);
    let src = source(&tmp.path().join("honest"), &[("U.pt", &honest)]);
    let (err, peak) = import_error(&src);
    // Refused from the zip directory, before anything is inflated.
    assert!(
        err.contains("U.pt")
            && err.contains(
                "data/0 declares 134217728 bytes uncompressed, but data.pkl declares 2304 elements of 4 bytes"
            ),
        "{err}"
    );
    assert!(peak < MIB, "{peak} bytes");

    // The same bomb declaring the expected 9216 bytes: inflated up to one byte more.
    let mut lying = honest;
    declare_size(&mut lying, "archive/data/0", 2304 * 4);
    let src = source(&tmp.path().join("lying"), &[("U.pt", &lying)]);
    let (err, peak) = import_error(&src);
    assert!(
        err.contains("U.pt")
            && err.contains(
                "data/0 fails its zip check (File is larger than its declared uncompressed size)"
            ),
        "{err}"
    );
    assert!(peak < MIB, "{peak} bytes");
}

#[test]
fn a_deflated_storage_within_its_size_is_read() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let shape = [4, 3, 1, 8, 8];
    let p = pickle("DoubleStorage", 768, 0, &shape, &[192, 64, 64, 8, 1]);
    let deflated = archive(&p, true, |w| {
        (0..768).for_each(|i| w.write_all(&f64::from(i).to_le_bytes()).unwrap());
    });
    let src = source(tmp.path(), &[("p.pt", &deflated)]);
    let out = tmp.path().join("out");
    let ds = import_reference(&src, &out, &mut Silent).unwrap();
    let p3 = ds.open_sample(3).unwrap().read(Field::P).unwrap();
    assert_eq!(p3[[2, 0, 7, 7]], 767.0);
}

#[test]
fn a_tiny_file_claiming_a_billion_samples_is_refused_by_the_memory_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let n = 1_000_000_000u64;
    // Byte tensors (N, 1, C, 1, 1) whose storage entries claim N·C bytes and hold one.
    let field = |channels: u64| {
        let p = pickle(
            "ByteStorage",
            n * channels,
            0,
            &[n, 1, channels, 1, 1],
            &[channels, channels, 1, 1, 1],
        );
        let mut pt = archive(&p, true, |w| w.write_all(&[0]).unwrap());
        declare_size(&mut pt, "archive/data/0", (n * channels) as u32);
        pt
    };
    let (u, p) = (field(3), field(1));
    assert!(u.len() < 1000, "{} bytes", u.len());
    let dxyz = archive(&pickle("DoubleStorage", 3, 0, &[3], &[1]), false, |w| {
        [1e-6f64; 3]
            .iter()
            .for_each(|v| w.write_all(&v.to_le_bytes()).unwrap())
    });
    let files: [(&str, &[u8]); 5] = [
        ("U.pt", &u),
        ("U_2d.pt", &u),
        ("domain.pt", &p),
        ("p.pt", &p),
        ("dxyz.pt", &dxyz),
    ];
    let src = source(tmp.path(), &files);
    let (err, peak) = import_error(&src);
    assert!(
        err.contains("U.pt: the manifest of 1000000000 samples needs")
            && err.contains("more than the memory budget"),
        "{err}"
    );
    assert!(peak < MIB, "{peak} bytes");
}

/// Replaces the content of `path` in place: truncating a file to zero, as `fs::write`
/// does, costs milliseconds on ext4 (it flushes on close), three thousand times over.
fn overwrite(path: &Path, bytes: &[u8]) {
    let mut file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
    file.set_len(bytes.len() as u64).unwrap();
}

/// Opens the source and reads every sample, as the import does; the outcome, not a panic.
fn read_all(src: &Path) -> Result<usize, String> {
    let mut source = ReferenceSource::open(src, &mut Silent).map_err(|e| e.to_string())?;
    let n = source.samples();
    let mut reader = source.reader().map_err(|e| e.to_string())?;
    for i in 0..n {
        reader.read(i).map_err(|e| e.to_string())?;
    }
    Ok(n)
}

/// Mutated sources read by the fuzz test (about 2 s in a debug build).
const MUTATIONS: usize = 10_000;

/// Heap the fuzz test allows: the reader's own caps are 1 MiB of pickle and 8 MiB of
/// pickle values; the fixtures' samples take kilobytes.
const HEAP_CAP: usize = 16 * MIB;

#[test]
fn truncated_and_bit_flipped_pt_files_never_panic_and_stay_within_a_heap_cap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), &[]);
    assert_eq!(read_all(&src), Ok(4));
    let names = ["U.pt", "U_2d.pt", "domain.pt", "p.pt", "dxyz.pt"];
    let originals: Vec<Vec<u8>> = names
        .iter()
        .map(|n| fs::read(fixtures().join(n)).unwrap())
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(20240607);
    let (mut read, mut refused) = (0, 0);
    let started = Instant::now();
    let ((), peak) = peak_heap(|| {
        for _ in 0..MUTATIONS {
            let which = rng.random_range(0..names.len());
            let mut bytes = originals[which].clone();
            // Half the flips land in the pickle or the zip directories, where the sizes
            // and the layout are declared; the rest anywhere.
            let flips = rng.random_range(0..=4);
            for _ in 0..flips {
                let len = bytes.len();
                let at = match rng.random_range(0..4) {
                    0 => rng.random_range(0..len.min(640)),
                    1 => rng.random_range(len.saturating_sub(1024)..len),
                    _ => rng.random_range(0..len),
                };
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
            if flips == 0 || rng.random_bool(0.25) {
                bytes.truncate(rng.random_range(0..bytes.len()));
            }
            let path = src.join("x").join(names[which]);
            overwrite(&path, &bytes);
            match read_all(&src) {
                Ok(_) => read += 1,
                Err(_) => refused += 1,
            }
            overwrite(&path, &originals[which]);
        }
    });
    eprintln!(
        "{MUTATIONS} mutated sources: {read} read, {refused} refused, peak heap {peak} bytes, {:?}",
        started.elapsed()
    );
    assert!(
        refused > MUTATIONS / 2,
        "most mutations are caught ({refused})"
    );
    assert!(peak < HEAP_CAP, "peak heap {peak} bytes");
}
