//! Terminal progress bars for the libraries' progress hooks.

use fiberflow_data::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Draws the data crate's progress as terminal bars (hidden when stderr is not a terminal).
#[derive(Default)]
pub struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, task: &str, total: u64) {
        let style = ProgressStyle::with_template(
            "{msg:28} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        self.0 = Some(
            ProgressBar::new(total)
                .with_style(style)
                .with_message(task.to_string()),
        );
    }

    fn step(&mut self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

/// Progress lines for batch logs: when stderr is not a terminal (a cluster job's log, a
/// `nohup` file) the bar draws nothing, so a line with the count, the mean time per item
/// and the ETA is printed at least once a minute (a ticker thread covers items that take
/// longer) and at the end.
pub struct LogLines {
    inner: Arc<Lines>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

struct Lines {
    task: &'static str,
    total: usize,
    /// Items done before this process started (a resumed run), left out of the rate.
    resumed: usize,
    started: Instant,
    /// Items done and the time of the last line.
    state: Mutex<(usize, Instant)>,
    stop: AtomicBool,
}

/// Longest silence in a batch log.
const EVERY: Duration = Duration::from_secs(60);

impl LogLines {
    pub fn new(task: &'static str, total: usize, resumed: usize) -> Self {
        use std::io::IsTerminal;
        let now = Instant::now();
        let inner = Arc::new(Lines {
            task,
            total,
            resumed,
            started: now,
            state: Mutex::new((resumed, now)),
            stop: AtomicBool::new(false),
        });
        let ticker = (!std::io::stderr().is_terminal()).then(|| {
            let lines = Arc::clone(&inner);
            std::thread::spawn(move || {
                while !lines.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    lines.print_if(|last| last.elapsed() >= EVERY);
                }
            })
        });
        Self { inner, ticker }
    }

    /// Counts one finished item; prints when a line is due or the last item is done.
    pub fn done_one(&self) {
        if let Ok(mut state) = self.inner.state.lock() {
            state.0 += 1;
        }
        if self.ticker.is_some() {
            let total = self.inner.total;
            let done = self.inner.state.lock().map_or(0, |s| s.0);
            self.inner
                .print_if(|last| done == total || last.elapsed() >= EVERY);
        }
    }
}

impl Drop for LogLines {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl Lines {
    /// Prints a line when `due(time of the last line)`.
    fn print_if(&self, due: impl FnOnce(Instant) -> bool) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if due(state.1) {
            state.1 = Instant::now();
            eprintln!(
                "{}",
                self.line(state.0, self.started.elapsed().as_secs_f64())
            );
        }
    }

    /// The line after `done` items in `elapsed` seconds.
    fn line(&self, done: usize, elapsed: f64) -> String {
        let fresh = done.saturating_sub(self.resumed);
        if fresh == 0 {
            return format!(
                "{}: {done}/{} done, the first of this run running for {}",
                self.task,
                self.total,
                clock(elapsed)
            );
        }
        let per = elapsed / fresh as f64;
        let eta = per * self.total.saturating_sub(done) as f64;
        format!(
            "{}: {done}/{} done, {per:.1} s each (mean of this run), eta {}",
            self.task,
            self.total,
            clock(eta)
        )
    }
}

/// `1 h 02 min`, `3 min 05 s` or `12 s`.
fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s:02} s"),
        (h, m, _) => format!("{h} h {m:02} min"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_count_only_this_runs_samples_in_the_rate() {
        let lines = LogLines::new("generate", 100, 40);
        let lines = &lines.inner;
        assert_eq!(
            lines.line(40, 75.0),
            "generate: 40/100 done, the first of this run running for 1 min 15 s"
        );
        // 10 fresh samples in 50 s: 5 s each, 50 left → 250 s.
        assert_eq!(
            lines.line(50, 50.0),
            "generate: 50/100 done, 5.0 s each (mean of this run), eta 4 min 10 s"
        );
        assert_eq!(clock(3725.0), "1 h 02 min");
        assert_eq!(clock(12.4), "12 s");
    }
}
