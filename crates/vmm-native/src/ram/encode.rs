//! The source's page records, built off the JavaScript thread: the same walk
//! over the dirty bitmap as RamSaver.sendNext (vmm/ram/save.ts), the same
//! records (docs/ram-format.md), the same stop conditions, so the bytes on
//! the wire do not depend on which path wrote them. Pages go to the socket
//! by reference from guest memory, two iovecs per page, up to IOV_MAX per
//! writev.

use super::mem::{GuestMem, PAGE};
use crate::error::VResult;
use std::time::Instant;

const FLAG_ZERO: u64 = 0x02;
const FLAG_PAGE: u64 = 0x08;
const FLAG_CONTINUE: u64 = 0x20;
/// RamSaver's CLOCK_EVERY: the clock is read after every 64th page of a round (a power of two).
pub const CLOCK_EVERY: u64 = 64;

const MAX_IOV: usize = 1024;
/// Room for the headers of a full batch (one named record at most per block change).
const SMALL_CAP: usize = 64 << 10;
/// The longest record head: be64, u8 length, a 255-byte name, the zero fill byte.
const MAX_HEAD: usize = 8 + 1 + 255 + 1;

pub struct Block<'a> {
    pub mem: GuestMem,
    pub name: &'a [u8],
    /// Index of the block's page 0 in the bitmap.
    pub first_page: usize,
    pub pages: usize,
}

/// Where the walk stands: RamSaver's cursorBlock/cursorPage/lastSent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub block: usize,
    pub page: usize,
    pub last_sent: Option<usize>,
}

pub struct Limits {
    /// Pages the saver counts as dirty: no more are sent.
    pub max_pages: u64,
    /// The rate limiter's allowance: a page starts only while fewer bytes went out.
    pub max_bytes: Option<u64>,
    /// MAX_ITERATE_MS, tested after every CLOCK_EVERY-th page of the round.
    pub deadline: Option<Instant>,
    /// Pages the round sent before this call (the phase of the clock test).
    pub round_pages: u64,
    /// Return at every clock test instead (the saver reads its own clock).
    pub stop_at_clock: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// max_pages sent.
    Pages,
    /// No dirty bit anywhere, though pages were still counted dirty.
    Exhausted,
    Rate,
    Time,
    Clock,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Pages => "pages",
            End::Exhausted => "exhausted",
            End::Rate => "rate",
            End::Time => "time",
            End::Clock => "clock",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Sent {
    pub normal: u64,
    pub zero: u64,
    pub bytes: u64,
    pub end: End,
}

/// Where the batches go: the socket, or a Vec in tests.
pub trait Sink {
    /// Writes all bytes the iovecs describe; `after` is the count already written (for messages).
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads of `iov_len` bytes
    /// until the call returns.
    unsafe fn write_all(&mut self, iov: &mut [libc::iovec], after: u64) -> VResult<()>;
}

enum Seg {
    Small(usize, usize),
    Page(*const u8),
}

struct Batch {
    small: Vec<u8>,
    segs: Vec<Seg>,
    iov: Vec<libc::iovec>,
    written: u64,
}

impl Batch {
    fn new() -> Batch {
        Batch { small: Vec::with_capacity(SMALL_CAP), segs: Vec::with_capacity(MAX_IOV), iov: Vec::with_capacity(MAX_IOV), written: 0 }
    }

    fn put(&mut self, b: &[u8]) {
        let start = self.small.len();
        self.small.extend_from_slice(b);
        match self.segs.last_mut() {
            Some(Seg::Small(_, end)) if *end == start => *end = self.small.len(),
            _ => self.segs.push(Seg::Small(start, self.small.len())),
        }
    }

    fn page(&mut self, p: *const u8) {
        self.segs.push(Seg::Page(p));
    }

    fn full(&self) -> bool {
        self.segs.len() + 2 > MAX_IOV || self.small.len() + MAX_HEAD > SMALL_CAP
    }

    fn flush(&mut self, sink: &mut dyn Sink) -> VResult<()> {
        if self.segs.is_empty() {
            return Ok(());
        }
        self.iov.clear();
        let mut bytes = 0u64;
        for s in &self.segs {
            let (base, len) = match *s {
                Seg::Small(a, b) => (self.small[a..b].as_ptr(), b - a),
                Seg::Page(p) => (p, PAGE),
            };
            bytes += len as u64;
            self.iov.push(libc::iovec { iov_base: base as *mut libc::c_void, iov_len: len });
        }
        // SAFETY: small segments point into `self.small`, untouched until the
        // call returns; page segments came from GuestMem::page_ptr, in bounds
        // of a block the caller keeps alive for the whole send.
        unsafe { sink.write_all(&mut self.iov, self.written)? };
        self.written += bytes;
        self.segs.clear();
        self.small.clear();
        Ok(())
    }
}

/// The first dirty page in [from, end), as DirtyBitmap.findNext.
fn find_next(words: &[u32], from: usize, end: usize) -> Option<usize> {
    if from >= end {
        return None;
    }
    let mut wi = from >> 5;
    let last = (end - 1) >> 5;
    let mut v = words[wi] & (!0u32 << (from & 31));
    loop {
        if v != 0 {
            let i = wi * 32 + v.trailing_zeros() as usize;
            return (i < end).then_some(i);
        }
        wi += 1;
        if wi > last {
            return None;
        }
        v = words[wi];
    }
}

/// The next dirty page after the cursor, wrapping through the blocks once (RamSaver.sendNext).
fn next(blocks: &[Block], words: &[u32], cur: &mut Cursor) -> Option<(usize, usize)> {
    for _ in 0..=blocks.len() {
        let b = &blocks[cur.block];
        if let Some(i) = find_next(words, b.first_page + cur.page, b.first_page + b.pages) {
            cur.page = i - b.first_page + 1;
            return Some((cur.block, i));
        }
        cur.block = (cur.block + 1) % blocks.len();
        cur.page = 0;
    }
    None
}

/// Sends dirty pages (clearing their bits) until a limit stops the walk.
/// The caller has validated the blocks against the bitmap and the cursor.
pub fn send(blocks: &[Block], words: &mut [u32], cur: &mut Cursor, lim: &Limits, sink: &mut dyn Sink) -> VResult<Sent> {
    let mut batch = Batch::new();
    let mut s = Sent { normal: 0, zero: 0, bytes: 0, end: End::Pages };
    let mut n = 0u64;
    s.end = loop {
        if n >= lim.max_pages {
            break End::Pages;
        }
        if lim.max_bytes.is_some_and(|m| s.bytes >= m) {
            break End::Rate;
        }
        let Some((bi, idx)) = next(blocks, words, cur) else {
            break End::Exhausted;
        };
        words[idx >> 5] &= !(1u32 << (idx & 31));
        let b = &blocks[bi];
        let offset = (idx - b.first_page) * PAGE;
        let zero = b.mem.page_is_zero(offset);
        let cont = cur.last_sent == Some(bi);
        let head = offset as u64 | if zero { FLAG_ZERO } else { FLAG_PAGE } | if cont { FLAG_CONTINUE } else { 0 };
        batch.put(&head.to_be_bytes());
        s.bytes += 8;
        if !cont {
            batch.put(&[b.name.len() as u8]);
            batch.put(b.name);
            s.bytes += 1 + b.name.len() as u64;
            cur.last_sent = Some(bi);
        }
        if zero {
            batch.put(&[0]);
            s.bytes += 1;
            s.zero += 1;
        } else {
            batch.page(b.mem.page_ptr(offset));
            s.bytes += PAGE as u64;
            s.normal += 1;
        }
        n += 1;
        if batch.full() {
            batch.flush(sink)?;
        }
        if (lim.round_pages + n) & (CLOCK_EVERY - 1) == 0 {
            if lim.stop_at_clock {
                break End::Clock;
            }
            if lim.deadline.is_some_and(|d| Instant::now() > d) {
                break End::Time;
            }
        }
    };
    batch.flush(sink)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct VecSink(Vec<u8>);

    impl Sink for VecSink {
        unsafe fn write_all(&mut self, iov: &mut [libc::iovec], _after: u64) -> VResult<()> {
            for v in iov.iter() {
                // SAFETY: each iovec is readable for iov_len bytes (the trait's contract).
                self.0.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) });
            }
            Ok(())
        }
    }

    fn limits(max_pages: u64) -> Limits {
        Limits { max_pages, max_bytes: None, deadline: None, round_pages: 0, stop_at_clock: false }
    }

    #[test]
    fn records_continue_and_zero_pages() {
        let mut ram = vec![0u8; 3 * PAGE];
        ram[PAGE] = 7;
        // SAFETY: the test's buffers outlive every use of the blocks made here.
        let mem = unsafe { GuestMem::new(ram.as_mut_ptr(), ram.len()) };
        let blocks = [Block { mem, name: b"pc.ram", first_page: 0, pages: 3 }];
        let mut words = vec![0b111u32];
        let mut cur = Cursor { block: 0, page: 0, last_sent: None };
        let mut sink = VecSink(Vec::new());
        let s = send(&blocks, &mut words, &mut cur, &limits(3), &mut sink).unwrap();
        assert_eq!(s, Sent { normal: 1, zero: 2, bytes: 8 + 7 + 1 + 8 + PAGE as u64 + 8 + 1, end: End::Pages });
        let w = &sink.0;
        assert_eq!(&w[..8], &FLAG_ZERO.to_be_bytes());
        assert_eq!(&w[8..15], b"\x06pc.ram");
        assert_eq!(w[15], 0);
        assert_eq!(&w[16..24], &(PAGE as u64 | FLAG_PAGE | FLAG_CONTINUE).to_be_bytes());
        assert_eq!(w[24], 7);
        assert_eq!(words[0], 0, "sent pages are clear");
        assert_eq!(cur, Cursor { block: 0, page: 3, last_sent: Some(0) });
    }

    #[test]
    fn stops_at_the_byte_allowance_and_at_the_clock() {
        let mut ram = vec![1u8; 200 * PAGE];
        // SAFETY: the test's buffers outlive every use of the blocks made here.
        let mem = unsafe { GuestMem::new(ram.as_mut_ptr(), ram.len()) };
        let blocks = [Block { mem, name: b"a", first_page: 0, pages: 200 }];
        let mut words = vec![!0u32; 7];
        words[6] &= (1 << 8) - 1;
        let mut cur = Cursor { block: 0, page: 0, last_sent: None };
        let mut lim = limits(200);
        lim.max_bytes = Some(2 * PAGE as u64);
        let s = send(&blocks, &mut words, &mut cur, &lim, &mut VecSink(Vec::new())).unwrap();
        assert_eq!((s.normal, s.end), (2, End::Rate), "a page starts only while under the allowance");
        lim.max_bytes = None;
        lim.stop_at_clock = true;
        lim.round_pages = 2;
        let s = send(&blocks, &mut words, &mut cur, &lim, &mut VecSink(Vec::new())).unwrap();
        assert_eq!((s.normal, s.end), (62, End::Clock), "the round's 64th page ends the call");
    }

    #[test]
    fn wraps_through_the_blocks_and_reports_an_empty_bitmap() {
        let mut a = vec![1u8; 2 * PAGE];
        let mut b = vec![1u8; PAGE];
        let blocks = [
            // SAFETY: the test's buffers outlive every use of the blocks made here.
            Block { mem: unsafe { GuestMem::new(a.as_mut_ptr(), a.len()) }, name: b"a", first_page: 0, pages: 2 },
            // SAFETY: the test's buffers outlive every use of the blocks made here.
            Block { mem: unsafe { GuestMem::new(b.as_mut_ptr(), b.len()) }, name: b"b", first_page: 2, pages: 1 },
        ];
        let mut words = vec![0b101u32];
        let mut cur = Cursor { block: 1, page: 1, last_sent: Some(1) };
        let s = send(&blocks, &mut words, &mut cur, &limits(5), &mut VecSink(Vec::new())).unwrap();
        assert_eq!((s.normal, s.end), (2, End::Exhausted));
        assert_eq!(words[0], 0);
    }
}
