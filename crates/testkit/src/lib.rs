//! Test support for the fuzz tests of fiberflow's readers, one copy for every test binary
//! that installs it: a global allocator that counts live heap bytes and their peak, and
//! refuses any single request above a cap, so a reader that trusts a damaged length field
//! fails its test (an allocation failure) instead of taking the machine's memory.
//!
//! A test binary installs it with
//! `#[global_allocator] static A: CountingAllocator = CountingAllocator::with_cap(64 << 20);`
//! and measures a body with [`reset_peak`] before and [`peak`] after.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their peak; requests above `cap` fail.
pub struct CountingAllocator {
    cap: usize,
}

impl CountingAllocator {
    /// Refuses any single request of more than `cap` bytes.
    pub const fn with_cap(cap: usize) -> Self {
        Self { cap }
    }
}

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the caller's arguments, or refused
// with a null pointer as `GlobalAlloc` allows; the counters only observe.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > self.cap {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > self.cap {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > self.cap {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

/// Live heap bytes now.
pub fn current() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Starts a measurement: the peak is set to the bytes live now, which are returned.
pub fn reset_peak() -> usize {
    let base = current();
    PEAK.store(base, Ordering::Relaxed);
    base
}

/// The most bytes live since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Runs `body` alone among this binary's tests that use it (the counters are shared) and
/// fails if the heap grew by `cap` bytes or more meanwhile.
pub fn assert_heap_growth_below<T>(cap: usize, body: impl FnOnce() -> T) -> T {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = reset_peak();
    let out = body();
    let grown = peak().saturating_sub(base);
    assert!(
        grown < cap,
        "the heap grew by {grown} bytes, more than the cap of {cap}"
    );
    out
}
