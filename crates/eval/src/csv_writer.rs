//! The per-sample CSV: one row per sample, `sample_id` then the metrics in
//! [`SampleMetrics::METRIC_NAMES`] order, floats written in shortest round-trip form.

use std::io::Write;
use std::path::Path;

use crate::error::{EvalError, Result};
use crate::record::SampleMetrics;

/// Writes the header and one row per sample to `out` (the header even with no samples).
pub fn write_csv_to<W: Write>(out: W, samples: &[SampleMetrics]) -> csv::Result<()> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    writer.write_record(
        std::iter::once("sample_id").chain(SampleMetrics::METRIC_NAMES.iter().copied()),
    )?;
    for s in samples {
        writer.serialize(s)?;
    }
    writer.flush()?;
    Ok(())
}

/// Writes the per-sample CSV to `path` (created or truncated).
pub fn write_csv(path: &Path, samples: &[SampleMetrics]) -> Result<()> {
    let csv_error = |source| EvalError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(|e| csv_error(e.into()))?;
    write_csv_to(file, samples).map_err(csv_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::record;

    #[test]
    fn rows_round_trip_with_a_stable_header() {
        let samples = vec![record("test, 1", 0.5), record("2", -1.25e-9)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        write_csv(&path, &samples).unwrap();
        let mut reader = csv::Reader::from_path(&path).unwrap();
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header[0], "sample_id");
        assert_eq!(header[1..], *SampleMetrics::METRIC_NAMES);
        let back: Vec<SampleMetrics> = reader.deserialize().map(|r| r.unwrap()).collect();
        assert_eq!(back, samples);
    }

    #[test]
    fn empty_input_writes_the_header_and_bad_paths_fail() {
        let mut out = Vec::new();
        write_csv_to(&mut out, &[]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("sample_id,ref_mae_u,"));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/m.csv");
        assert!(matches!(
            write_csv(&missing, &[]),
            Err(EvalError::Csv { .. })
        ));
    }
}
