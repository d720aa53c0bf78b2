//! The binary's global allocator: mimalloc (a rebuild of 1 M deliveries makes and
//! frees some 60 M small allocations; under glibc's allocator they were a quarter of
//! its samples and its wall time), counting live heap bytes for `entsync bench`'s memory
//! figures: (only while counting is on) the bytes requested minus the bytes freed. Off,
//! it costs one relaxed load per call. The library sets no allocator: an application
//! that embeds it keeps its own.
//!
//! It counts what was *requested*, not what the allocator spends on it (size classes
//! and pages kept for reuse), so resident memory is higher than it counts here.

use mimalloc::MiMalloc as Inner;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// mimalloc, counting live bytes while [`start`] is in force.
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

#[global_allocator]
static GLOBAL: Counting = Counting;

// SAFETY: every call is forwarded unchanged to mimalloc; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { Inner.alloc(layout) };
        if !p.is_null() && ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { Inner.alloc_zeroed(layout) };
        if !p.is_null() && ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from mimalloc) with `layout`.
        unsafe { Inner.dealloc(ptr, layout) };
        if ON.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the caller's contract.
        let p = unsafe { Inner.realloc(ptr, layout, new_size) };
        if !p.is_null() && ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

/// Turns counting on (for the rest of the process). Bytes freed afterwards that were
/// allocated before count as negative: read differences of [`live`], never its value.
pub fn start() {
    ON.store(true, Ordering::SeqCst);
}

/// Live bytes counted so far (allocated minus freed while counting was on).
pub fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}
