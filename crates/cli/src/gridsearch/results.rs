//! The results tables: one CSV row per finished or failed run, appended and fsynced as
//! each run ends, so a killed search keeps every finished row and a restart skips them.
//!
//! Shards never share a file: the whole grid in one process appends to `results.csv`,
//! shard i of n to `results.shard-i-of-n.csv` (no locking, so any file system works).
//! Readers take the union of all of them; a torn last line (a kill during a write) is
//! ignored, and the writer that owns the file cuts it off before appending.

use super::error::GridError;
use fiberflow_data::Shard;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The merged table of the whole grid.
pub const RESULTS_FILE: &str = "results.csv";

/// Columns before the axes.
const LEADING: [&str; 2] = ["run_id", "index"];

/// Columns after the axes.
const TRAILING: [&str; 8] = [
    "best_val_error",
    "last_val_loss",
    "best_epoch",
    "wall_s",
    "parameters",
    "resumed",
    "status",
    "error",
];

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Failed,
}

/// One row of a results table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub run_id: String,
    pub index: usize,
    /// The run's axis values as table cells, in axis order.
    pub values: Vec<String>,
    /// Lowest validation relative L2 error of the decoded velocity (`best_val_error`).
    pub best_val_error: Option<f64>,
    /// Validation noise loss of the last epoch.
    pub last_val_loss: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Seconds of the call that ended the run (only the resumed part after a restart).
    pub wall_s: f64,
    pub parameters: Option<usize>,
    /// Whether the run continued from a checkpoint of an earlier, killed search.
    pub resumed: bool,
    pub status: Status,
    /// Why the run failed (one line); empty for finished runs.
    pub error: String,
}

/// The table header for the given axis paths.
pub fn header(axes: &[String]) -> Vec<String> {
    LEADING
        .iter()
        .map(|s| s.to_string())
        .chain(axes.iter().cloned())
        .chain(TRAILING.iter().map(|s| s.to_string()))
        .collect()
}

/// The file shard `shard` appends to.
pub fn file_name(shard: Shard) -> String {
    if shard.count == 1 {
        RESULTS_FILE.into()
    } else {
        format!("results.shard-{}-of-{}.csv", shard.index, shard.count)
    }
}

impl Row {
    /// The row's cells, in header order.
    pub fn cells(&self) -> Vec<String> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let mut cells = vec![self.run_id.clone(), self.index.to_string()];
        cells.extend(self.values.iter().cloned());
        cells.extend([
            opt(self.best_val_error.map(|v| v.to_string())),
            opt(self.last_val_loss.map(|v| v.to_string())),
            opt(self.best_epoch.map(|v| v.to_string())),
            format!("{:.3}", self.wall_s),
            opt(self.parameters.map(|v| v.to_string())),
            self.resumed.to_string(),
            match self.status {
                Status::Ok => "ok".into(),
                Status::Failed => "failed".into(),
            },
            self.error.lines().collect::<Vec<_>>().join(" / "),
        ]);
        cells
    }

    fn parse(cells: &csv::StringRecord, axes: usize) -> Result<Self, String> {
        fn opt<T: std::str::FromStr>(s: &str) -> Result<Option<T>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            s.parse().map(Some).map_err(|_| format!("bad value `{s}`"))
        }
        let get = |i: usize| cells.get(i).unwrap_or_default();
        let t = LEADING.len() + axes;
        let status = match get(t + 6) {
            "ok" => Status::Ok,
            "failed" => Status::Failed,
            other => return Err(format!("bad status `{other}`")),
        };
        let row = Self {
            run_id: get(0).to_string(),
            index: opt(get(1))?.ok_or("no run index")?,
            values: (LEADING.len()..t).map(|i| get(i).to_string()).collect(),
            best_val_error: opt(get(t))?,
            last_val_loss: opt(get(t + 1))?,
            best_epoch: opt(get(t + 2))?,
            wall_s: opt(get(t + 3))?.ok_or("no wall time")?,
            parameters: opt(get(t + 4))?,
            resumed: opt(get(t + 5))?.ok_or("no resumed flag")?,
            status,
            error: get(t + 7).to_string(),
        };
        if row.status == Status::Ok && row.best_val_error.is_none() {
            return Err("a finished run without best_val_error".into());
        }
        Ok(row)
    }
}

/// The bytes of CSV records.
pub fn to_csv<I, R>(records: I) -> Vec<u8>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in records {
        w.write_record(r).expect("writing to memory cannot fail");
    }
    w.into_inner().expect("writing to memory cannot fail")
}

/// The rows of a results file (none when it does not exist) after checking its header.
pub fn read(path: &Path, header: &[String]) -> Result<Vec<Row>, GridError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(GridError::io(path, "read")(e)),
    };
    parse(&bytes[..complete_len(&bytes)], path, header)
}

fn parse(bytes: &[u8], path: &Path, header: &[String]) -> Result<Vec<Row>, GridError> {
    let bad = |message: String| GridError::Results {
        path: path.to_path_buf(),
        message,
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_reader(bytes);
    let found = reader.headers().map_err(|e| bad(e.to_string()))?;
    if found.iter().ne(header.iter().map(String::as_str)) {
        return Err(bad(format!(
            "holds columns {:?}, this grid writes {:?}: it belongs to another grid; use a new --out",
            found.iter().collect::<Vec<_>>(),
            header
        )));
    }
    let axes = header.len() - LEADING.len() - TRAILING.len();
    reader
        .records()
        .enumerate()
        .map(|(i, r)| {
            let r = r.map_err(|e| bad(e.to_string()))?;
            Row::parse(&r, axes).map_err(|e| bad(format!("row {}: {e}", i + 1)))
        })
        .collect()
}

/// Length of the complete lines: a kill mid-write leaves a last line without its newline.
fn complete_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// The results of every file in `dir` (`results.csv` first, then the shard files by
/// name), one row per run id: the first one found.
pub fn read_all(dir: &Path, header: &[String]) -> Result<Vec<Row>, GridError> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("results.shard-") && n.ends_with(".csv"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(GridError::io(dir, "list")(e)),
    };
    files.sort();
    files.insert(0, dir.join(RESULTS_FILE));
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for f in files {
        for row in read(&f, header)? {
            if seen.insert(row.run_id.clone()) {
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// The header and rows of a table as CSV bytes.
pub fn table(header: &[String], rows: &[&Row]) -> Vec<u8> {
    to_csv(std::iter::once(header.to_vec()).chain(rows.iter().map(|r| r.cells())))
}

/// Appends rows to one results file, each fsynced before the next run starts.
pub struct Appender {
    file: File,
    path: PathBuf,
}

impl Appender {
    /// Opens (or creates) `path` for `header`: an existing file must have that header; a
    /// torn last line is cut off.
    pub fn open(path: &Path, header: &[String]) -> Result<Self, GridError> {
        let io = |action| GridError::io(path, action);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io("open"))?;
        let bytes = std::fs::read(path).map_err(io("read"))?;
        let keep = complete_len(&bytes);
        parse(&bytes[..keep], path, header)?;
        if keep < bytes.len() {
            file.set_len(keep as u64).map_err(io("truncate"))?;
        }
        if keep == 0 {
            file.write_all(&to_csv([header])).map_err(io("write"))?;
        }
        file.sync_data().map_err(io("fsync"))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one row and makes it durable.
    pub fn append(&mut self, row: &Row) -> Result<(), GridError> {
        let io = |action| GridError::io(&self.path, action);
        self.file
            .write_all(&to_csv([row.cells()]))
            .map_err(io("append to"))?;
        self.file.sync_data().map_err(io("fsync"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(index: usize, error: Option<f64>) -> Row {
        Row {
            run_id: format!("{index:03}-abcdef01"),
            index,
            values: vec!["0.001".into(), "[8,16]".into()],
            best_val_error: error,
            last_val_loss: error.map(|e| e * 2.0),
            best_epoch: error.map(|_| 3),
            wall_s: 12.5,
            parameters: error.map(|_| 1234),
            resumed: false,
            status: if error.is_some() {
                Status::Ok
            } else {
                Status::Failed
            },
            error: if error.is_some() {
                String::new()
            } else {
                "training loss became NaN, \"lower\" lr".into()
            },
        }
    }

    pub(crate) fn head() -> Vec<String> {
        header(&["lr".into(), "unet.features".into()])
    }

    #[test]
    fn rows_round_trip_through_an_appended_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULTS_FILE);
        let mut a = Appender::open(&path, &head()).unwrap();
        let rows = [row(0, Some(0.25)), row(1, None), row(2, Some(1.0 / 3.0))];
        for r in &rows {
            a.append(r).unwrap();
        }
        drop(a);
        assert_eq!(read(&path, &head()).unwrap(), rows);
        // Reopening keeps the rows and writes no second header.
        Appender::open(&path, &head())
            .unwrap()
            .append(&rows[0])
            .unwrap();
        assert_eq!(read(&path, &head()).unwrap().len(), 4);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(
            "run_id,index,lr,unet.features,best_val_error,last_val_loss,best_epoch,wall_s,parameters,resumed,status,error\n000-abcdef01,0,0.001,\"[8,16]\",0.25,0.5,3,12.500,1234,false,ok,\n"
        ), "{text}");
        assert_eq!(text.matches("run_id").count(), 1);
    }

    #[test]
    fn multi_line_errors_become_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut r = row(0, None);
        r.error = "first\nsecond".into();
        Appender::open(&path, &head()).unwrap().append(&r).unwrap();
        assert_eq!(read(&path, &head()).unwrap()[0].error, "first / second");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_torn_last_line_is_ignored_then_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULTS_FILE);
        let full = table(&head(), &[&row(0, Some(0.5))]);
        let mut torn = full.clone();
        torn.extend_from_slice(b"001-abcdef01,1,0.0");
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(read(&path, &head()).unwrap(), [row(0, Some(0.5))]);
        let mut a = Appender::open(&path, &head()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), full);
        a.append(&row(1, None)).unwrap();
        assert_eq!(
            read(&path, &head()).unwrap(),
            [row(0, Some(0.5)), row(1, None)]
        );
        // A torn header alone leaves an empty file that gets a fresh header.
        std::fs::write(&path, b"run_id,ind").unwrap();
        Appender::open(&path, &head()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), to_csv([head()]));
    }

    #[test]
    fn files_of_another_grid_or_damaged_rows_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULTS_FILE);
        std::fs::write(&path, table(&head(), &[&row(0, Some(0.5))])).unwrap();
        let other = header(&["lr".into()]);
        let e = read(&path, &other).unwrap_err();
        assert!(e.to_string().contains("another grid"), "{e}");
        assert!(Appender::open(&path, &other).is_err());
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(",ok,", ",maybe,");
        std::fs::write(&path, text).unwrap();
        let e = read(&path, &head()).unwrap_err();
        assert!(e.to_string().contains("row 1: bad status `maybe`"), "{e}");
    }

    #[test]
    fn read_all_joins_the_shard_files_once_per_run() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_all(&dir.path().join("missing"), &head())
                .unwrap()
                .is_empty()
        );
        let s0: Shard = "0/2".parse().unwrap();
        let s1: Shard = "1/2".parse().unwrap();
        assert_eq!(file_name(s1), "results.shard-1-of-2.csv");
        assert_eq!(file_name(Shard::ALL), RESULTS_FILE);
        let write = |name: String, rows: &[&Row]| {
            std::fs::write(dir.path().join(name), table(&head(), rows)).unwrap()
        };
        let mut later = row(1, Some(0.9));
        later.wall_s = 1.0;
        write(file_name(s1), &[&row(1, Some(0.5)), &row(3, None)]);
        write(file_name(s0), &[&row(0, Some(0.5)), &row(2, Some(0.7))]);
        write(RESULTS_FILE.into(), &[&later]);
        let rows = read_all(dir.path(), &head()).unwrap();
        let ids: Vec<usize> = rows.iter().map(|r| r.index).collect();
        assert_eq!(ids, [1, 0, 2, 3]);
        assert_eq!(rows[0], later);
    }
}
