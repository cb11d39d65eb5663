//! Fuzz tests of the mask readers: `.npy` masks and fields, and PNG/TIFF slice folders.
//!
//! Seeded truncations and byte flips of small valid files, and hand-made hostile headers,
//! must each end in `Ok` or an error naming the file, never a panic, and the heap may
//! grow by at most [`PEAK_CAP`] (64 MiB) over what it held before each test, as counted
//! by a wrapper around the system allocator. The memory budget is lowered to
//! [`BUDGET_GIB`] (16 MiB) so that the budget checks, not luck, keep the peak down; a
//! single request above the cap is refused (an allocation-failure abort ends the run).
//! A failing case names its seed: `case_rng(seed)` replays it.

use fiberflow_testkit::CountingAllocator;
use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fiberflow_geometry::GeometryError;
use fiberflow_geometry::budget;
use fiberflow_geometry::mask_io::{SolidValue, load_mask, read_npy};
use ndarray::{Array2, Array3, Array4, Ix4, IxDyn};
use ndarray_npy::WriteNpyExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Most the heap may grow during one test.
const PEAK_CAP: usize = 64 << 20;
/// Memory budget during the tests, GiB (16 MiB).
const BUDGET_GIB: f64 = 1.0 / 64.0;

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

fn case_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Runs one read; a panic fails the test with the case's name, and an error must name the
/// file (`needle`) so the user knows what to fix.
fn expect_no_panic<T>(case: &str, needle: &str, read: impl FnOnce() -> Result<T, GeometryError>) {
    match catch_unwind(AssertUnwindSafe(read)) {
        Err(_) => panic!("{case}: the reader panicked"),
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "{case}: error does not name the file: {msg}"
            );
        }
        Ok(Ok(_)) => {}
    }
}

/// `bytes` truncated, with bytes flipped (mostly in the first 128, where headers are),
/// or with random bytes appended, as drawn from `rng`.
fn mutate(bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let kind = rng.random_range(0..4);
    if kind != 1 {
        for _ in 0..rng.random_range(1..=8) {
            let span = if rng.random_bool(0.7) {
                out.len().min(128)
            } else {
                out.len()
            };
            let i = rng.random_range(0..span);
            out[i] ^= 1 << rng.random_range(0..8);
        }
    }
    if kind == 1 || kind == 3 {
        out.truncate(rng.random_range(0..bytes.len()));
    }
    if kind == 2 && rng.random_bool(0.3) {
        out.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>()));
    }
    out
}

fn npy_bytes<A: ndarray_npy::WritableElement, D: ndarray::Dimension>(
    a: &ndarray::Array<A, D>,
) -> Vec<u8> {
    let mut out = Vec::new();
    a.write_npy(&mut out).unwrap();
    out
}

/// A `.npy` of `descr` and `shape` with a `body` that need not match them, as the header
/// of a hostile or corrupt file would.
fn npy_with_header(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut header = dict.into_bytes();
    header.resize((header.len() + 10 + 64) / 64 * 64 - 10 - 1, b' ');
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header);
    out.extend(body);
    out
}

/// A small valid mask in each supported dtype and both memory orders.
fn valid_masks() -> Vec<Vec<u8>> {
    let m = Array3::from_shape_fn((2, 5, 7), |(s, y, x)| u8::from((s + y * x) % 3 != 0));
    let m2: Array2<u8> = m.index_axis(ndarray::Axis(0), 1).to_owned();
    vec![
        npy_bytes(&m),
        npy_bytes(&m2),
        npy_bytes(&m2.t().to_owned()),
        npy_bytes(&m2.mapv(|v| v == 1).reversed_axes()),
        npy_bytes(&m.mapv(f32::from)),
        npy_bytes(&m.mapv(f64::from).reversed_axes()),
        npy_bytes(&m.mapv(i32::from)),
        npy_bytes(&m.mapv(i64::from)),
    ]
}

/// Writes `bytes` to a new file `name` in `dir`. Each case gets its own file because
/// truncating and rewriting one file makes ext4 flush it to disk on close, which made the
/// tests take ten times longer.
fn case_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn npy_masks_survive_truncations_and_flips() {
    measured(|| {
        let dir = tempfile::tempdir().unwrap();
        let valid = valid_masks();
        for (i, bytes) in valid.iter().enumerate() {
            let mask = load_mask(
                &case_file(dir.path(), &format!("valid{i}.npy"), bytes),
                SolidValue::Low,
            );
            assert!(mask.is_ok(), "valid mask {i}: {:?}", mask.err());
        }
        for seed in 0..2000 {
            let mut rng = case_rng(seed);
            let original = &valid[rng.random_range(0..valid.len())];
            let name = format!("case{seed}.npy");
            let path = case_file(dir.path(), &name, &mutate(original, &mut rng));
            let solid = if seed % 2 == 0 {
                SolidValue::Low
            } else {
                SolidValue::High
            };
            expect_no_panic(&format!("npy mask seed {seed}"), &name, || {
                load_mask(&path, solid)
            });
        }
    });
}

#[test]
fn npy_fields_survive_truncations_and_flips() {
    measured(|| {
        let dir = tempfile::tempdir().unwrap();
        let field =
            Array4::from_shape_fn((2, 3, 4, 5), |(s, c, h, w)| (s + c * h) as f32 - w as f32);
        let valid = [npy_bytes(&field), npy_bytes(&field.clone().reversed_axes())];
        let path = case_file(dir.path(), "valid.npy", &valid[0]);
        assert_eq!(read_npy::<f32, Ix4>(&path, "U_2d").unwrap(), field);
        for seed in 0..1500 {
            let mut rng = case_rng(seed);
            let original = &valid[rng.random_range(0..valid.len())];
            let name = format!("field{seed}.npy");
            let path = case_file(dir.path(), &name, &mutate(original, &mut rng));
            expect_no_panic(&format!("npy field seed {seed}"), &name, || {
                read_npy::<f32, Ix4>(&path, "U_2d")
            });
        }
    });
}

#[test]
fn hostile_npy_headers_are_clear_errors() {
    measured(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.npy");
        let huge = "(100000, 100000, 100000)";
        // Nested tuples: 5000 levels overflow a test thread's stack in the header parser.
        let deep = format!("{}1{}", "(".repeat(5000), ",)".repeat(5000));
        let mut v2_long = b"\x93NUMPY\x02\x00".to_vec();
        v2_long.extend(u32::MAX.to_le_bytes());
        v2_long.extend(b"{'descr'");
        let mut v1_long = b"\x93NUMPY\x01\x00".to_vec();
        v1_long.extend(u16::MAX.to_le_bytes());
        v1_long.extend(b"{'descr': '|u1'");
        let mut v2_deep = b"\x93NUMPY\x02\x00".to_vec();
        let header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {deep}}}\n");
        v2_deep.extend((header.len() as u32).to_le_bytes());
        v2_deep.extend(header.as_bytes());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "huge u8",
                npy_with_header("|u1", huge, &[1, 0, 1, 0]),
                "truncated",
            ),
            (
                "huge f8",
                npy_with_header("<f8", huge, &[0; 16]),
                "truncated",
            ),
            ("huge b1", npy_with_header("|b1", huge, &[]), "truncated"),
            (
                "overflowing",
                npy_with_header("<f8", "(4294967296, 4294967296, 4294967296)", &[]),
                "truncated",
            ),
            (
                "beyond usize",
                npy_with_header("|u1", "(100000000000000000000000, 2)", &[]),
                "shape",
            ),
            (
                "zero but huge",
                npy_with_header("|u1", "(0, 4294967296, 4294967296)", &[]),
                "shape",
            ),
            (
                "huge then zero",
                npy_with_header("|u1", "(4294967296, 4294967296, 0)", &[]),
                "shape",
            ),
            (
                "negative",
                npy_with_header("|u1", "(-2, 3)", &[0; 6]),
                "shape",
            ),
            ("v2 4 GiB header", v2_long, "header"),
            ("v1 truncated header", v1_long, "truncated"),
            ("deeply nested", v2_deep, "nests"),
            (
                "unknown dtype",
                npy_with_header("<c16", "(2, 2)", &[0; 64]),
                "dtype",
            ),
            ("no magic", b"\x93NUMPZ\x01\x00\x10\x00".to_vec(), "magic"),
            ("empty", Vec::new(), "magic"),
            (
                "version 0",
                b"\x93NUMPY\x00\x00\x10\x00".to_vec(),
                "version 0",
            ),
            (
                "cut in the prefix",
                b"\x93NUMPY\x02\x00\x10\x00".to_vec(),
                "truncated",
            ),
        ];
        for (name, bytes, needle) in cases {
            std::fs::write(&path, bytes).unwrap();
            let case = format!("hostile mask `{name}`");
            expect_no_panic(&case, "hostile.npy", || load_mask(&path, SolidValue::Low));
            let e = load_mask(&path, SolidValue::Low).unwrap_err().to_string();
            assert!(e.contains(needle), "{case}: {e}");
            let case = format!("hostile field `{name}`");
            expect_no_panic(&case, "hostile.npy", || read_npy::<f32, IxDyn>(&path, "U"));
        }
    });
}

#[test]
fn npy_arrays_beyond_the_budget_are_refused_before_reading() {
    measured(|| {
        let dir = tempfile::tempdir().unwrap();
        // Complete files (sparse, so they cost no disk) whose data would exceed the budget.
        let sparse = |name: &str, descr: &str, shape: (usize, usize, usize), elem: usize| {
            let path = dir.path().join(name);
            let header = npy_with_header(descr, &format!("{shape:?}"), &[]);
            std::fs::write(&path, &header).unwrap();
            let data = (shape.0 * shape.1 * shape.2 * elem) as u64;
            File::options()
                .append(true)
                .open(&path)
                .unwrap()
                .set_len(header.len() as u64 + data)
                .unwrap();
            path
        };
        let big = sparse("big.npy", "<f4", (1, 4096, 4096), 4);
        let e = load_mask(&big, SolidValue::Low).unwrap_err().to_string();
        assert!(
            e.contains("big.npy") && e.contains("1×4096×4096") && e.contains("memory budget"),
            "{e}"
        );
        let e = read_npy::<f32, IxDyn>(&big, "U").unwrap_err().to_string();
        assert!(e.contains("memory budget"), "{e}");
        // Within the budget it is read, and found to be all fibre (or fluid, flipped).
        let fits = sparse("fits.npy", "|u1", (1, 1024, 1024), 1);
        let e = load_mask(&fits, SolidValue::Low).unwrap_err().to_string();
        assert!(e.contains("all fibre"), "{e}");
        let e = load_mask(&fits, SolidValue::High).unwrap_err().to_string();
        assert!(e.contains("all fluid"), "{e}");
    });
}

/// An image file: its name and its bytes.
type Slice<'a> = (&'a str, Vec<u8>);

/// A small image stack: two PNG slices and one TIFF, of 16×12 pixels.
fn valid_stack() -> Vec<Slice<'static>> {
    let img = |k: u32| {
        image::GrayImage::from_fn(16, 12, |x, y| {
            image::Luma([if (x + y + k).is_multiple_of(3) {
                0
            } else {
                255
            }])
        })
    };
    let encode = |k: u32, format: image::ImageFormat| {
        let mut out = std::io::Cursor::new(Vec::new());
        img(k).write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    vec![
        ("s00.png", encode(0, image::ImageFormat::Png)),
        ("s01.tif", encode(1, image::ImageFormat::Tiff)),
        ("s02.png", encode(2, image::ImageFormat::Png)),
    ]
}

fn write_stack(dir: &Path, files: &[Slice<'_>]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn image_stacks_survive_truncations_and_flips() {
    measured(|| {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("stack");
        std::fs::create_dir(&dir).unwrap();
        let valid = valid_stack();
        write_stack(&dir, &valid);
        assert_eq!(load_mask(&dir, SolidValue::Low).unwrap().dim(), (3, 12, 16));
        for seed in 0..1500 {
            let mut rng = case_rng(seed);
            let mut files = valid.clone();
            let k = rng.random_range(0..files.len());
            files[k].1 = mutate(&files[k].1, &mut rng);
            write_stack(&dir, &files);
            expect_no_panic(&format!("image stack seed {seed}"), "stack", || {
                load_mask(&dir, SolidValue::Low)
            });
        }
    });
}

/// CRC-32 of PNG chunks (ISO 3309), bit by bit: enough for a few test chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A PNG whose header declares `width × height` pixels of `color_type` at `depth` bits,
/// followed by one tiny, incomplete image-data chunk.
fn png_declaring(width: u32, height: u32, depth: u8, color_type: u8) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let body = [kind, data].concat();
        c.extend(&body);
        c.extend(crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([depth, color_type, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    // A zlib stream of a few zero bytes, far short of the declared image.
    out.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    ));
    out.extend(chunk(b"IEND", &[]));
    out
}

/// A little-endian, uncompressed 8-bit grey TIFF whose header declares `width × height`
/// pixels in one strip of `body.len()` bytes.
fn tiff_declaring(width: u32, height: u32, body: &[u8]) -> Vec<u8> {
    // (tag, type, value): SHORT = 3, LONG = 4.
    let entries: [(u16, u16, u32); 8] = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8 + 2 + 8 * 12 + 4),
        (278, 4, height),
        (279, 4, body.len() as u32),
    ];
    let mut out = b"II*\x00".to_vec();
    out.extend(8u32.to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        if kind == 3 {
            out.extend((value as u16).to_le_bytes());
            out.extend([0, 0]);
        } else {
            out.extend(value.to_le_bytes());
        }
    }
    out.extend(0u32.to_le_bytes());
    out.extend(body);
    out
}

#[test]
fn hostile_image_headers_are_clear_errors() {
    measured(|| {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("hostile");
        std::fs::create_dir(&dir).unwrap();
        let valid = valid_stack();
        let cases: Vec<(&str, Slice<'_>, &str)> = vec![
            (
                "huge PNG",
                ("s.png", png_declaring(100_000, 100_000, 8, 0)),
                "memory budget",
            ),
            (
                "widest PNG",
                ("s.png", png_declaring(u32::MAX >> 1, u32::MAX >> 1, 16, 6)),
                "cannot read image",
            ),
            (
                "huge TIFF",
                ("s.tif", tiff_declaring(100_000, 100_000, &[0; 10])),
                "memory budget",
            ),
            // Within the budget: decoding starts and finds the data missing.
            (
                "short PNG",
                ("s.png", png_declaring(1000, 1000, 8, 0)),
                "cannot read image",
            ),
            (
                "short TIFF",
                ("s.tif", tiff_declaring(1000, 1000, &[0; 10])),
                "cannot read image",
            ),
            (
                "zero PNG",
                ("s.png", png_declaring(0, 0, 8, 0)),
                "cannot read image",
            ),
        ];
        for (name, file, needle) in cases {
            // Alone, and as the last slice of a valid stack of other dimensions.
            for files in [vec![file.clone()], [valid.clone(), vec![file]].concat()] {
                write_stack(&dir, &files);
                let case = format!("hostile image `{name}` in {} files", files.len());
                expect_no_panic(&case, "hostile", || load_mask(&dir, SolidValue::Low));
                let e = load_mask(&dir, SolidValue::Low).unwrap_err().to_string();
                // In a stack, disagreeing dimensions may be found first.
                let mismatch = files.len() > 1 && e.contains("first slice");
                assert!(e.contains(needle) || mismatch, "{case}: {e}");
            }
        }
        // Many slices of an ordinary size add up past the budget.
        let slice = {
            let mut out = std::io::Cursor::new(Vec::new());
            image::GrayImage::new(1024, 1024)
                .write_to(&mut out, image::ImageFormat::Png)
                .unwrap();
            out.into_inner()
        };
        let names: Vec<String> = (0..20).map(|k| format!("s{k:02}.png")).collect();
        let files: Vec<Slice<'_>> = names.iter().map(|n| (n.as_str(), slice.clone())).collect();
        write_stack(&dir, &files);
        let e = load_mask(&dir, SolidValue::Low).unwrap_err().to_string();
        assert!(
            e.contains("20 slices of 1024×1024") && e.contains("memory budget"),
            "{e}"
        );
    });
}
