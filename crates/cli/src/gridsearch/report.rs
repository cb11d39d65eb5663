//! The reports of a search: `top10.csv` (finished runs ranked by the validation relative
//! L2 error of the decoded velocity — what the model is for — not by the noise loss,
//! which does not compare across predictors or schedules) and `summary.txt`.

use super::grid::{Grid, Run};
use super::results::{Row, Status, to_csv};
use std::fmt::Write;

/// Rows in `top10.csv`.
pub const TOP: usize = 10;

/// Finished runs by ascending best validation error, ties by run index.
pub fn ranked(rows: &[Row]) -> Vec<&Row> {
    let mut ok: Vec<&Row> = rows.iter().filter(|r| r.status == Status::Ok).collect();
    ok.sort_by(|a, b| {
        let e = |r: &Row| r.best_val_error.unwrap_or(f64::INFINITY);
        e(a).total_cmp(&e(b)).then(a.index.cmp(&b.index))
    });
    ok
}

/// `top10.csv`: a `rank` column, then the results columns.
pub fn top(header: &[String], rows: &[Row]) -> Vec<u8> {
    let head = std::iter::once("rank".to_string()).chain(header.iter().cloned());
    let best = ranked(rows)
        .into_iter()
        .take(TOP)
        .enumerate()
        .map(|(i, r)| {
            std::iter::once((i + 1).to_string())
                .chain(r.cells())
                .collect::<Vec<_>>()
        });
    to_csv(std::iter::once(head.collect::<Vec<_>>()).chain(best))
}

/// `summary.txt`: counts, time, the best run with its full config, and the failures.
pub fn summary(grid: &Grid, runs: &[Run], rows: &[Row]) -> String {
    let mut s = String::new();
    let axes: Vec<String> = grid
        .axes
        .iter()
        .map(|a| format!("{} ({} values)", a.path, a.values.len()))
        .collect();
    let _ = writeln!(
        s,
        "grid search: {} runs over {}",
        runs.len(),
        axes.join(" × ")
    );
    if !grid.base.is_empty() {
        let base: Vec<String> = grid
            .base
            .iter()
            .map(|(p, v)| format!("{p} = {v}"))
            .collect();
        let _ = writeln!(s, "base: {}", base.join(", "));
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.status == Status::Failed).collect();
    let ok = rows.len() - failed.len();
    let pending = runs.len().saturating_sub(rows.len());
    let state = if pending == 0 {
        "complete"
    } else {
        "incomplete (other shards, or a restart, have the rest)"
    };
    let _ = writeln!(
        s,
        "results: {} of {} runs ({ok} ok, {} failed, {pending} pending), {state}",
        rows.len(),
        runs.len(),
        failed.len()
    );
    let wall: f64 = rows.iter().map(|r| r.wall_s).sum();
    let _ = writeln!(
        s,
        "wall time: {wall:.1} s in total, {:.1} s per run",
        wall / rows.len().max(1) as f64
    );
    match ranked(rows).first() {
        Some(best) => {
            let _ = writeln!(
                s,
                "\nbest run: {} (runs/{}), validation relative L2 error of the decoded velocity {:.6} at epoch {}, last validation loss {}, {} parameters",
                best.run_id,
                best.run_id,
                best.best_val_error.unwrap_or(f64::NAN),
                best.best_epoch.map_or("?".into(), |e| e.to_string()),
                best.last_val_loss
                    .map_or("?".into(), |l| format!("{l:.4e}")),
                best.parameters.map_or("?".into(), |p| p.to_string()),
            );
            if let Some(run) = runs.iter().find(|r| r.id == best.run_id) {
                for (axis, value) in grid.axes.iter().zip(&run.values) {
                    let _ = writeln!(s, "  {} = {value}", axis.path);
                }
                let config = serde_json::to_string_pretty(&run.config).expect("configs serialise");
                let _ = writeln!(s, "config:\n{config}");
            }
        }
        None => {
            let _ = writeln!(s, "\nno run has finished yet");
        }
    }
    if !failed.is_empty() {
        let _ = writeln!(s, "\nfailed runs:");
        for r in failed {
            let _ = writeln!(s, "  {}: {}", r.run_id, r.error);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gridsearch::results::tests::{head, row};
    use crate::gridsearch::results::{RESULTS_FILE, read};

    #[test]
    fn ranking_is_by_validation_error_and_skips_failures() {
        let errors = [0.7, 0.2, 0.5, 0.2];
        let mut rows: Vec<Row> = errors
            .iter()
            .enumerate()
            .map(|(i, &e)| row(i, Some(e)))
            .collect();
        rows.push(row(4, None));
        // The noise loss would rank differently: it must not be the key.
        rows[0].last_val_loss = Some(0.0);
        let order: Vec<usize> = ranked(&rows).iter().map(|r| r.index).collect();
        assert_eq!(order, [1, 3, 2, 0]);
    }

    #[test]
    fn top10_keeps_the_ten_best_with_ranks() {
        let rows: Vec<Row> = (0..12)
            .map(|i| row(i, Some(((i * 7) % 12) as f64 / 10.0)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULTS_FILE);
        let bytes = top(&head(), &rows);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("rank,run_id,index,"), "{text}");
        // Without the rank column it is a results table: read it back with the reader.
        let stripped: String = text
            .lines()
            .map(|l| l.split_once(',').unwrap().1.to_string() + "\n")
            .collect();
        std::fs::write(&path, stripped).unwrap();
        let back = read(&path, &head()).unwrap();
        let errors: Vec<f64> = back.iter().map(|r| r.best_val_error.unwrap()).collect();
        let expected: Vec<f64> = (0..10).map(|k| k as f64 / 10.0).collect();
        assert_eq!(errors, expected);
        let ranks: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(ranks, (1..=10).map(|k| k.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn summary_counts_and_names_the_best_run() {
        let grid = Grid::from_value(
            serde_json::json!({"lr": [1e-3, 3e-4], "seed": [0, 1], "base": {"batch_size": 2}}),
            None,
        )
        .unwrap();
        let runs = grid.runs().unwrap();
        let mut rows = vec![row(0, Some(0.4)), row(1, None), row(2, Some(0.3))];
        for r in &mut rows {
            r.run_id = runs[r.index].id.clone();
        }
        let s = summary(&grid, &runs, &rows);
        assert!(
            s.contains("4 runs over lr (2 values) × seed (2 values)"),
            "{s}"
        );
        assert!(s.contains("base: batch_size = 2"), "{s}");
        assert!(
            s.contains("3 of 4 runs (2 ok, 1 failed, 1 pending), incomplete"),
            "{s}"
        );
        assert!(s.contains("37.5 s in total, 12.5 s per run"), "{s}");
        assert!(s.contains(&format!("best run: {} ", runs[2].id)), "{s}");
        assert!(
            s.contains("error of the decoded velocity 0.300000 at epoch 3"),
            "{s}"
        );
        assert!(s.contains("  lr = 0.0003\n  seed = 0\nconfig:\n"), "{s}");
        assert!(s.contains("\"lr\": 0.0003"), "{s}");
        assert!(
            s.contains(&format!("{}: training loss became NaN", runs[1].id)),
            "{s}"
        );
        rows.push(row(3, Some(0.9)));
        rows[3].run_id = runs[3].id.clone();
        assert!(
            summary(&grid, &runs, &rows)
                .contains("4 of 4 runs (3 ok, 1 failed, 0 pending), complete")
        );
        assert!(summary(&grid, &runs, &[]).contains("no run has finished yet"));
    }
}
