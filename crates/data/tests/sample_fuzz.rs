//! Fuzz tests of the sample-file reader (`SampleFile::open`, `read`, `load`).
//!
//! Seeded truncations and byte flips of small valid sample files, and hand-made hostile
//! headers, must each end in `Ok` or an error naming the file, never a panic, and the heap
//! may grow by at most [`PEAK_CAP`] (64 MiB) over what it held before each test, as counted
//! by a wrapper around the system allocator. The memory budget is lowered to
//! [`BUDGET_GIB`] (8 MiB) so that the budget checks, not luck, keep the peak down; a single
//! request above the cap is refused (an allocation-failure abort ends the run). A failing
//! case names its seed: `ChaCha8Rng::seed_from_u64(seed)` replays it.

use fiberflow_testkit::CountingAllocator;
use std::fs::File;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use fiberflow_data::{Field, Sample, SampleFile, budget};
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Most the heap may grow during one test.
const PEAK_CAP: usize = 64 << 20;
/// Memory budget during the tests, GiB (8 MiB).
const BUDGET_GIB: f64 = 1.0 / 128.0;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::with_cap(PEAK_CAP);

/// Runs `body` alone with the test budget and asserts the heap's growth stayed under
/// [`PEAK_CAP`].
fn measured(body: impl FnOnce()) {
    fiberflow_testkit::assert_heap_growth_below(PEAK_CAP, || {
        budget::set_gib(BUDGET_GIB).unwrap();
        body()
    })
}

/// Opens `path` and decodes every field it has, one by one and then all at once. A panic
/// fails the test with the case's name; an error must name the file.
fn read_all(case: &str, path: &Path) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let file = SampleFile::open(path)?;
        for field in Field::EVERY.into_iter().filter(|&f| file.has(f)) {
            file.read(field)?;
        }
        file.load()
    }));
    match result {
        Err(_) => panic!("{case}: the reader panicked"),
        Ok(Err(e)) => {
            let msg = e.to_string();
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                msg.contains(name),
                "{case}: error does not name the file: {msg}"
            );
        }
        Ok(Ok(_)) => {}
    }
}

/// A valid 2-slice sample of 3×2 pixels; `p_2d` only when `with_p2d`.
fn sample(with_p2d: bool) -> Sample {
    let field = |c: usize, scale: f32| {
        Array4::from_shape_fn((2, c, 3, 2), |(s, c, h, w)| {
            scale * (s + 2 * c + 3 * h) as f32 - w as f32
        })
    };
    let p = field(1, 10.0);
    Sample {
        domain: Array4::from_shape_fn((2, 1, 3, 2), |(s, _, h, w)| {
            f32::from(u8::from((s + h + w) % 3 != 0))
        }),
        u2d: field(3, 0.5),
        u: field(3, 1.0),
        p2d: with_p2d.then(|| p.mapv(|v| v / 4.0)),
        p,
        dxyz: [1e-6, 1e-6, 5e-6],
    }
}

/// `bytes` truncated, with bytes flipped (mostly in the first `header` bytes, the JSON
/// header), or both, as drawn from `rng`.
fn mutate(bytes: &[u8], header: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let kind = rng.random_range(0..3);
    if kind != 1 {
        for _ in 0..rng.random_range(1..=6) {
            let span = if rng.random_bool(0.8) {
                header
            } else {
                out.len()
            };
            let i = rng.random_range(0..span);
            out[i] ^= 1 << rng.random_range(0..8);
        }
    }
    if kind != 0 {
        out.truncate(rng.random_range(0..bytes.len()));
    }
    out
}

#[test]
fn sample_files_survive_truncations_and_flips() {
    measured(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("case.safetensors");
        let valid: Vec<Vec<u8>> = [true, false]
            .into_iter()
            .map(|p2d| {
                sample(p2d).write(&path).unwrap();
                let file = SampleFile::open(&path).unwrap();
                assert_eq!(file.load().unwrap(), sample(p2d));
                std::fs::read(&path).unwrap()
            })
            .collect();
        for seed in 0..3000 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let original = &valid[rng.random_range(0..valid.len())];
            let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
            // A new file each time: truncating one that was just mapped is slow on ext4.
            let path = dir.path().join(format!("case{seed}.safetensors"));
            std::fs::write(&path, mutate(original, header, &mut rng)).unwrap();
            read_all(&format!("sample seed {seed}"), &path);
        }
    });
}

/// A file of an 8-byte header length `n`, then `json`, then `body`.
fn with_header(n: u64, json: &str, body: &[u8]) -> Vec<u8> {
    let mut out = n.to_le_bytes().to_vec();
    out.extend(json.as_bytes());
    out.extend(body);
    out
}

/// A safetensors header in which every field is `(S, C, H, W)` f32, laid out after `dxyz`
/// (in 128 bits, so that absurd shapes make absurd offsets rather than overflow here).
fn header_json(s: u128, h: u128, w: u128) -> String {
    let mut json = String::from(r#"{"dxyz":{"dtype":"F64","shape":[3],"data_offsets":[0,24]}"#);
    let mut at = 24;
    for field in Field::ALL {
        let c = field.channels() as u128;
        let end = at + s * c * h * w * 4;
        json += &format!(
            r#","{}":{{"dtype":"F32","shape":[{s},{c},{h},{w}],"data_offsets":[{at},{end}]}}"#,
            field.name()
        );
        at = end;
    }
    json + "}"
}

#[test]
fn hostile_headers_are_clear_errors() {
    measured(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.safetensors");
        let small = header_json(1, 2, 2);
        let n = small.len() as u64;
        let beyond = small.replace("[0,24]", "[0,2400000000]");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("header length u64::MAX", with_header(u64::MAX, "{}", &[])),
            ("header length 2^40", with_header(1 << 40, "{}", &[])),
            (
                "header length at the limit",
                with_header(100_000_000, "{", &[]),
            ),
            (
                "header length beyond the file",
                with_header(n + 1000, &small, &[]),
            ),
            ("data beyond the file", with_header(n, &small, &[0; 24])),
            (
                "offsets beyond the file",
                with_header(beyond.len() as u64, &beyond, &[0; 100]),
            ),
            (
                "3·2^62 elements",
                with_header(n, &header_json(1 << 62, 1, 3), &[]),
            ),
            (
                "overflowing shape",
                with_header(n, &header_json(1 << 40, 1 << 40, 1 << 40), &[]),
            ),
            ("not JSON", with_header(4, "\u{1}\u{2}\u{3}\u{4}", &[])),
            (
                "deeply nested JSON",
                with_header(20_000, &"[".repeat(20_000), &[]),
            ),
        ];
        for (name, bytes) in cases {
            std::fs::write(&path, bytes).unwrap();
            read_all(&format!("hostile sample `{name}`"), &path);
            assert!(
                SampleFile::open(&path).is_err(),
                "hostile sample `{name}` opened"
            );
        }
    });
}

#[test]
fn fields_beyond_the_budget_are_refused_before_decoding() {
    measured(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        // A complete, valid file of 1×1024×1024 fields (32 MiB, sparse so it costs no
        // disk): `domain` (4 MiB) fits the 8 MiB budget, `U` (12 MiB) does not.
        let json = header_json(1, 1024, 1024);
        let mut file = File::create(&path).unwrap();
        file.write_all(&with_header(json.len() as u64, &json, &[]))
            .unwrap();
        for d in [1e-6f64, 1e-6, 5e-6] {
            file.write_all(&d.to_le_bytes()).unwrap();
        }
        let len = 8 + json.len() as u64 + 24 + 8 * 4 * (1 << 20);
        file.set_len(len).unwrap();
        drop(file);
        let sample = SampleFile::open(&path).unwrap();
        assert_eq!(
            sample.read(Field::Domain).unwrap().dim(),
            (1, 1, 1024, 1024)
        );
        let e = sample.read(Field::U).unwrap_err().to_string();
        assert!(
            e.contains("big.safetensors: `U` of 1×3×1024×1024") && e.contains("memory budget"),
            "{e}"
        );
        let e = sample.load().unwrap_err().to_string();
        assert!(e.contains("the whole sample of 1×8×1024×1024"), "{e}");
    });
}
