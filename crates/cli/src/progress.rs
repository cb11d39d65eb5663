//! Terminal progress bars for the libraries' progress hooks.

use fiberflow_data::Progress;
use indicatif::{ProgressBar, ProgressStyle};

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
