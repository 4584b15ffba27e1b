//! A global allocator that backs large allocations (scrypt's V array: 128·r·N bytes,
//! e.g. 2 GiB at logN 21) with transparent huge pages.
//!
//! scrypt's ROMix reads 128·r-byte blocks of V at random; with 4 KiB pages nearly every
//! read misses the TLB, and faulting in 2 GiB costs half a million page faults. Large
//! allocations are therefore mapped directly and marked `MADV_HUGEPAGE` (this machine's
//! THP mode is `madvise`). Everything else goes to the system allocator. The `scrypt`
//! crate allocates V internally and offers no way to pass a buffer, which is why this
//! lives in the allocator rather than at the call site.
//!
//! Freed large mappings are kept (at most [`CACHED`] of them) and handed to the next
//! allocation of the same size: the next KDF then reuses pre-faulted huge pages instead of
//! faulting in and zeroing fresh ones in the kernel. Zeroed allocations are cleared with
//! one `memset` in user space, which is far cheaper than the page faults it replaces.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large get their own huge-page mapping.
const HUGE_THRESHOLD: usize = 64 << 20;
/// The huge page size the mapping is aligned for.
const HUGE_PAGE: usize = 2 << 20;
/// Most freed large mappings kept for reuse (one per KDF worker on this machine size).
const CACHED: usize = 2;

/// Freed mappings: (address, mapped length); 0 marks an empty slot.
static CACHE: std::sync::Mutex<[(usize, usize); CACHED]> = std::sync::Mutex::new([(0, 0); CACHED]);

fn mapped_len(size: usize) -> usize {
    (size + HUGE_PAGE - 1) & !(HUGE_PAGE - 1)
}

/// A cached mapping of exactly this mapped length, if any.
fn take_cached(len: usize) -> Option<*mut u8> {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let slot = cache.iter_mut().find(|(addr, l)| *addr != 0 && *l == len)?;
    let addr = std::mem::take(slot).0;
    Some(addr as *mut u8)
}

/// Keep a mapping for reuse; `false` when the cache is full.
fn put_cached(ptr: *mut u8, len: usize) -> bool {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    match cache.iter_mut().find(|(addr, _)| *addr == 0) {
        Some(slot) => {
            *slot = (ptr as usize, len);
            true
        }
        None => false,
    }
}

pub struct BigAlloc;

/// Off switch (`QBACKUP_NO_HUGEPAGES=1`), read once at start-up by `main`.
pub static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn big(layout: &Layout) -> bool {
    layout.size() >= HUGE_THRESHOLD
        && layout.align() <= HUGE_PAGE
        && !DISABLED.load(std::sync::atomic::Ordering::Relaxed)
}

unsafe impl GlobalAlloc for BigAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if big(&layout) {
            if let Some(p) = take_cached(mapped_len(layout.size())) {
                return p;
            }
            // SAFETY: layout is non-zero sized (checked above).
            unsafe { map_huge(layout.size()) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if big(&layout) {
            if let Some(p) = take_cached(mapped_len(layout.size())) {
                // SAFETY: the cached mapping is at least `layout.size()` bytes.
                unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
                return p;
            }
            // Fresh anonymous mappings are zero-filled by the kernel.
            // SAFETY: layout is non-zero sized.
            unsafe { map_huge(layout.size()) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if big(&layout) {
            if put_cached(ptr, mapped_len(layout.size())) {
                return;
            }
            // SAFETY: `ptr` came from `map_huge` with this size.
            unsafe { unmap_huge(ptr, layout.size()) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_big = big(&layout);
        // SAFETY (of the unchecked layout below): new_size is non-zero and the alignment
        // comes from a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !old_big && !big(&new_layout) {
            // SAFETY: forwarded contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: forwarded contract; the copy stays within both allocations.
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

/// Map `size` bytes rounded up to whole huge pages, aligned to a huge page.
unsafe fn map_huge(size: usize) -> *mut u8 {
    if size > usize::MAX / 2 {
        return std::ptr::null_mut();
    }
    let len = mapped_len(size);
    let Some(reserve) = len.checked_add(HUGE_PAGE) else {
        return std::ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping with no address hint.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let start = base as usize;
    let aligned = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    // SAFETY: trimming the unaligned head and tail of our own mapping.
    unsafe {
        if aligned > start {
            libc::munmap(base, aligned - start);
        }
        let tail = start + reserve - (aligned + len);
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
        // Best effort: without THP the mapping still works with small pages.
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    aligned as *mut u8
}

unsafe fn unmap_huge(ptr: *mut u8, size: usize) {
    let len = mapped_len(size);
    // SAFETY: `ptr`/`len` describe exactly the mapping `map_huge` kept.
    unsafe {
        libc::munmap(ptr.cast(), len);
    }
}
