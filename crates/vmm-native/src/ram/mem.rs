//! Guest RAM as native code may touch it: a base pointer and a length that
//! JavaScript owns and a vCPU may be writing at the same time. No Rust
//! reference to it is ever formed; reads are relaxed atomic loads, writes go
//! through raw copies, every access is bounds-checked against the block.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

pub const PAGE: usize = 4096;

#[derive(Clone, Copy)]
pub struct GuestMem {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the memory stays alive while the call that made this runs (the
// napi typed array it came from is held by the task), and every access is
// bounds-checked; concurrent guest writes are allowed by design.
unsafe impl Send for GuestMem {}

impl GuestMem {
    /// # Safety
    /// `ptr..ptr+len` must stay valid for as long as this value is used.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> GuestMem {
        GuestMem { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn check(&self, offset: usize, n: usize) {
        // Callers validate first; this is the last line, never expected to fire.
        assert!(offset <= self.len && n <= self.len - offset, "guest memory access out of the block");
    }

    /// Pointer to the page at `offset` (for writev); `offset + PAGE` must fit.
    pub fn page_ptr(&self, offset: usize) -> *const u8 {
        self.check(offset, PAGE);
        // SAFETY: offset + PAGE <= len (checked), so the result stays in the block.
        unsafe { self.ptr.add(offset) }
    }

    /// Whether the page at `offset` reads as all zero right now.
    pub fn page_is_zero(&self, offset: usize) -> bool {
        self.check(offset, PAGE);
        // SAFETY: offset + PAGE <= len (checked), so the result stays in the block.
        let p = unsafe { self.ptr.add(offset) };
        if (p as usize) & 7 == 0 {
            // SAFETY: in bounds and aligned; atomics because a vCPU may write concurrently.
            (0..PAGE / 8).all(|i| unsafe { AtomicU64::from_ptr(p.add(i * 8).cast()) }.load(Ordering::Relaxed) == 0)
        } else {
            // SAFETY: in bounds (checked); a byte is always aligned; atomic
            // for the same reason as above.
            (0..PAGE).all(|i| unsafe { AtomicU8::from_ptr(p.add(i)) }.load(Ordering::Relaxed) == 0)
        }
    }

    /// Copies `src` to `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: the range is in bounds (checked) of memory alive for this
        // value's use (new's contract), and a Rust slice never overlaps
        // guest memory nobody forms references to.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(offset), src.len()) }
    }

    /// Zeroes the page at `offset` unless it already reads as zero, so the
    /// host need not back a page nobody wrote (QEMU's ram_handle_zero).
    pub fn zero_page(&self, offset: usize) {
        if !self.page_is_zero(offset) {
            // SAFETY: page_is_zero checked offset + PAGE <= len.
            unsafe { std::ptr::write_bytes(self.ptr.add(offset), 0, PAGE) }
        }
    }
}

/// One bit per page of a block (bit `i % 8` of byte `i / 8` is page `i`):
/// the destination's record of which pages arrived. JavaScript owns the
/// bytes and does not touch them while a call that holds this runs.
#[derive(Clone, Copy)]
pub struct PageBits {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: as GuestMem: the bytes stay alive while the call that made this
// runs, and every access is bounds-checked.
unsafe impl Send for PageBits {}

impl PageBits {
    /// # Safety
    /// `ptr..ptr+len` must stay valid for as long as this value is used.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> PageBits {
        PageBits { ptr, len }
    }

    /// Records that the page at byte `offset` of the block arrived.
    pub fn set(&self, offset: usize) {
        let page = offset / PAGE;
        // Callers size the bitmap for the whole block; this is the last line.
        assert!(page / 8 < self.len, "page bitmap too small for the block");
        // SAFETY: page / 8 < len (checked) and the bytes are alive (new's contract).
        unsafe { *self.ptr.add(page / 8) |= 1 << (page % 8) }
    }
}
