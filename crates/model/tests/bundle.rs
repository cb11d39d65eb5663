//! The built-in model bundle: it loads with this code, reproduces the errors its card
//! recorded on the test samples it carries, and a damaged or foreign bundle is refused with
//! a message naming what is wrong.

use fiberflow_model::bundle::{Bundle, FORMAT};
use fiberflow_model::device::Device;
use std::io::Write;

static BYTES: &[u8] = include_bytes!("../assets/default.ffmodel");

fn message(result: Result<Bundle, fiberflow_model::ModelError>) -> String {
    match result {
        Ok(_) => panic!("a damaged bundle was read"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_builtin_model_reproduces_its_card() {
    let bundle = Bundle::builtin().unwrap().expect("fiberflow ships a model");
    let card = &bundle.card;
    assert!(
        (1..=FORMAT).contains(&card.format),
        "format {}",
        card.format
    );
    assert!(BYTES.len() <= 25_000_000, "{} bytes", BYTES.len());
    // The card says what the model was trained on and how it scored beside the baselines.
    assert!(
        card.data.train_samples >= 700,
        "{}",
        card.data.train_samples
    );
    for label in ["model", "solve3d", "copy2d"] {
        let e = card.evaluations.iter().find(|e| e.label == label);
        let e = e.unwrap_or_else(|| panic!("no {label} score in the card"));
        assert!(e.samples >= 150 && e.relative_l2.iter().all(|v| v.is_finite()));
    }
    // Both VAE stages and the predictor, and the refiner where the model has one.
    assert!(!card.commands.is_empty() && (3..=4).contains(&card.training.len()));
    assert!(card.check.len() >= 2);
    let device = Device::flex();
    let model = bundle.load(&device).unwrap();
    let measured = bundle.check(&model, &device).unwrap();
    for (c, now) in card.check.iter().zip(measured) {
        for k in 0..3 {
            let rel = (now[k] - c.relative_l2[k]).abs() / c.relative_l2[k];
            assert!(
                rel < 0.02,
                "sample {} component {k}: {now:?} vs {:?}",
                c.dataset_index,
                c.relative_l2
            );
        }
        // Its vz beats copy-2D (whose vz error is 1 by definition) on every check sample.
        assert!(now[2] < 1.0, "{now:?}");
    }
}

#[test]
fn a_truncated_or_altered_bundle_is_a_clear_error() {
    for cut in [0, 100, 4000, BYTES.len() / 2, BYTES.len() - 2000] {
        let msg = message(Bundle::read(&BYTES[..cut], "cut.ffmodel"));
        assert!(
            msg.contains("cut.ffmodel: not a readable fiberflow model bundle"),
            "{cut}: {msg}"
        );
    }
    // One flipped byte in the predictor's weights (past the card and the logs).
    let mut bytes = BYTES.to_vec();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    let msg = message(Bundle::read(&bytes[..], "flipped.ffmodel"));
    assert!(msg.contains("differs from its card's SHA-256"), "{msg}");
    // Not a tar file at all.
    let msg = message(Bundle::read(&b"{\"format\": 1}"[..], "card.json"));
    assert!(
        msg.contains("not a readable fiberflow model bundle"),
        "{msg}"
    );
}

/// The built-in bundle rewritten with an edited card and `extra` members appended.
fn rewritten(edit: impl Fn(&mut serde_json::Value), extra: &[(&str, &[u8])]) -> Vec<u8> {
    let bundle = Bundle::read(BYTES, "built-in").unwrap();
    let mut card = serde_json::to_value(&bundle.card).unwrap();
    edit(&mut card);
    let json = serde_json::to_vec(&card).unwrap();
    let mut archive = tar::Archive::new(BYTES);
    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes).unwrap();
    };
    append("card.json", &json);
    for entry in archive.entries().unwrap().skip(1) {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        append(&path, &bytes);
    }
    for (path, bytes) in extra {
        append(path, bytes);
    }
    builder.into_inner().unwrap()
}

#[test]
fn a_card_that_cannot_describe_its_bundle_is_refused() {
    // The unchanged rewrite reads: the edits below are what is refused.
    assert!(Bundle::read(&rewritten(|_| {}, &[])[..], "same").is_ok());
    let extra = rewritten(|_| {}, &[("predictor/other.bin", b"x")]);
    let msg = message(Bundle::read(&extra[..], "extra"));
    assert!(
        msg.contains("predictor/other.bin is not listed in its card"),
        "{msg}"
    );
    let no_draws = rewritten(|c| c["check"][0]["draws"] = 0.into(), &[]);
    let msg = message(Bundle::read(&no_draws[..], "draws"));
    assert!(msg.contains("0 draws"), "{msg}");
    let hash = rewritten(|c| c["data"]["manifest_sha256"] = "ééééééééé".into(), &[]);
    let msg = message(Bundle::read(&hash[..], "hash"));
    assert!(msg.contains("not hexadecimal"), "{msg}");
}

#[test]
fn a_bundle_of_another_format_names_both_versions() {
    let mut card: serde_json::Value = {
        let bundle = Bundle::read(BYTES, "built-in").unwrap();
        serde_json::to_value(&bundle.card).unwrap()
    };
    card["format"] = (FORMAT + 1).into();
    card["fiberflow_version"] = "9.9.9".into();
    let json = serde_json::to_vec(&card).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "card.json", &json[..])
        .unwrap();
    let bytes = builder.into_inner().unwrap();
    let msg = message(Bundle::read(&bytes[..], "future.ffmodel"));
    assert!(msg.contains(&format!("format {}", FORMAT + 1)), "{msg}");
    assert!(
        msg.contains("9.9.9") && msg.contains(&format!("to {FORMAT}")),
        "{msg}"
    );
    // The same from a file.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&bytes).unwrap();
    let msg = message(Bundle::open(file.path()));
    assert!(msg.contains("9.9.9"), "{msg}");
}
