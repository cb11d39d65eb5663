//! Resident memory of the process around a measurement: Linux's high-water mark
//! `VmHWM` from `/proc/self/status`, reset first by writing 5 to `/proc/self/clear_refs`
//! (proc(5)). Host memory only; elsewhere there is no measurement.

use serde::Serialize;

/// Resident memory of the process around a measurement, MiB.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Memory {
    /// Resident set when the measurement started.
    pub rss_before_mib: f64,
    /// Highest resident set during the measurement (it includes `rss_before_mib`).
    pub peak_rss_mib: f64,
}

/// Resets the high-water mark and remembers the resident set at the start.
pub(super) struct MemoryProbe {
    rss_before_kib: Option<u64>,
}

impl MemoryProbe {
    pub(super) fn start() -> Self {
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        Self {
            rss_before_kib: reset.then(|| proc_status_kib("VmRSS")).flatten(),
        }
    }

    pub(super) fn finish(self) -> Option<Memory> {
        let before = self.rss_before_kib?;
        let peak = proc_status_kib("VmHWM")?;
        let mib = |kib: u64| kib as f64 / 1024.0;
        Some(Memory {
            rss_before_mib: mib(before),
            peak_rss_mib: mib(peak.max(before)),
        })
    }
}

fn proc_status_kib(key: &str) -> Option<u64> {
    status_kib(&std::fs::read_to_string("/proc/self/status").ok()?, key)
}

/// The value in kB of `key` in a `/proc/PID/status` text (`VmHWM:\t  1234 kB`).
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed_in_kib() {
        let text = "Name:\tbench\nVmPeak:\t  9000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t  4096 kB\n";
        assert_eq!(status_kib(text, "VmHWM"), Some(5120));
        assert_eq!(status_kib(text, "VmRSS"), Some(4096));
        assert_eq!(status_kib(text, "VmSwap"), None);
        assert_eq!(status_kib("VmHWM:\tlots\n", "VmHWM"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_peak_covers_a_buffer_touched_during_the_measurement() {
        // The buffer stays alive until `finish`: other tests of this process may reset
        // the high-water mark meanwhile, but never below the current resident set.
        let probe = MemoryProbe::start();
        let buffer = std::hint::black_box(vec![1u8; 256 << 20]);
        let m = probe.finish().expect("Linux reports VmHWM");
        assert_eq!(buffer[12345], 1);
        assert!(m.peak_rss_mib - m.rss_before_mib >= 200.0, "{m:?}");
    }
}
