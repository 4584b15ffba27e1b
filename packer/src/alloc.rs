//! A global allocator that maps large blocks (scrypt's 128·r·N-byte arrays, 100 MiB
//! chunk buffers) directly with `mmap` (2 MiB aligned) and keeps freed ones for reuse:
//! faulting in 2 GiB of fresh memory cost about as much as a logN 21 KDF itself on the
//! test machine (a VM), and `MADV_HUGEPAGE` made it worse (direct compaction), so
//! each KDF thread faults its memory in once per archive. Freed large blocks are kept (at most
//! [`CACHE_SLOTS`] blocks, [`CACHE_BYTES`] in all), so the next KDF of the same size
//! does not fault its memory in again. Smaller blocks go to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks at least this large are mapped directly.
const LARGE: usize = 32 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// Freed large blocks kept for reuse.
const CACHE_SLOTS: usize = 4;
/// Most bytes the cache keeps.
const CACHE_BYTES: usize = 4 << 30;

/// (address, rounded length) of cached blocks; 0 = empty slot.
static CACHE: std::sync::Mutex<[(usize, usize); CACHE_SLOTS]> =
    std::sync::Mutex::new([(0, 0); CACHE_SLOTS]);

fn take_cached(len: usize) -> Option<*mut u8> {
    let mut c = CACHE.lock().ok()?;
    let slot = c.iter_mut().find(|s| s.0 != 0 && s.1 == len)?;
    let p = slot.0;
    *slot = (0, 0);
    Some(p as *mut u8)
}

fn put_cached(ptr: *mut u8, len: usize) -> bool {
    let Ok(mut c) = CACHE.lock() else {
        return false;
    };
    let used: usize = c.iter().map(|s| s.1).sum();
    if used.saturating_add(len) > CACHE_BYTES {
        return false;
    }
    match c.iter_mut().find(|s| s.0 == 0) {
        Some(slot) => {
            *slot = (ptr as usize, len);
            true
        }
        None => false,
    }
}

/// See the module documentation.
pub struct HugeAlloc;

fn large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= HUGE_PAGE
}

fn rounded(size: usize) -> Option<usize> {
    size.checked_add(HUGE_PAGE - 1)
        .map(|s| s & !(HUGE_PAGE - 1))
}

unsafe fn map(size: usize) -> *mut u8 {
    let Some(len) = rounded(size) else {
        return std::ptr::null_mut();
    };
    let Some(total) = len.checked_add(HUGE_PAGE) else {
        return std::ptr::null_mut();
    };
    // SAFETY: anonymous private mapping, no file descriptor; failures return MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let start = p as usize;
    let aligned = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let head = aligned - start;
    let tail = total - head - len;
    // SAFETY: trimming the unaligned head and the unused tail of our own mapping; the
    // calls only affect [p, p + total).
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    aligned as *mut u8
}

unsafe fn unmap(ptr: *mut u8, size: usize) {
    if let Some(len) = rounded(size) {
        if put_cached(ptr, len) {
            return;
        }
        // SAFETY: `ptr` and the rounded length are exactly what `map` kept mapped.
        unsafe {
            libc::munmap(ptr.cast(), len);
        }
    }
}

// SAFETY: large blocks are fresh anonymous mappings (zeroed, aligned to 2 MiB ≥ the
// requested alignment) released with the same length; everything else is `System`'s.
unsafe impl GlobalAlloc for HugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if large(&layout) {
            if let Some(p) = rounded(layout.size()).and_then(take_cached) {
                return p;
            }
            // SAFETY: see above.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarding the caller's contract.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if large(&layout) {
            if let Some(p) = rounded(layout.size()).and_then(take_cached) {
                // SAFETY: a cached block of at least `layout.size()` bytes.
                unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
                return p;
            }
            // SAFETY: anonymous mappings are zero-filled.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarding the caller's contract.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if large(&layout) {
            // SAFETY: allocated by `map` with this size.
            unsafe { unmap(ptr, layout.size()) }
        } else {
            // SAFETY: forwarding the caller's contract.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !large(&layout) && !large(&new_layout) {
            // SAFETY: forwarding the caller's contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the common prefix, release the old block.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
