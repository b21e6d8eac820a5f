//! Data fd sessions: a pipe whose far end userspace holds, served by a
//! thread. Saving produces the stream into the pipe; resuming parses what
//! userspace writes. All bookkeeping lives in the device state (under its
//! lock); the thread only moves bytes and sleeps in poll.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::content::{DeviceContent, Layout};
use super::stream::{self, Loader};
use vmm_sys as sys;

/// A data fd's pipe, both ends close-on-exec (the kernel hands out data fds
/// O_CLOEXEC): `(read end, write end)`.
fn session_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = sys::pipe()?;
    // A bigger pipe means fewer wakeups per record; the default limit for
    // unprivileged users is 1 MiB, and failure only costs speed.
    let _ = sys::set_pipe_size(&w, 1 << 20);
    Ok((r, w))
}

const UNSENT: u32 = u32::MAX;
/// Bytes a session thread moves per hold of the device lock.
pub(super) const BATCH: usize = 4 << 20;

pub struct SaveSession {
    pub id: u64,
    pub ino: (u64, u64),
    /// Our write end; None once the END record is out (the reader sees EOF
    /// when the thread drops its clone too).
    pub w: Option<Arc<OwnedFd>>,
    /// A read end kept for FIONREAD: bytes still queued count as unread.
    pub probe: OwnedFd,
    pub wake: Arc<OwnedFd>,
    pub thread: Option<JoinHandle<()>>,
    pub stop_copy: bool,
    initial_total: u64,
    initial_regions: u32,
    header_done: bool,
    cursor: u32,
    deferred: u32,
    sent_gen: Vec<u32>,
    dirty: VecDeque<u32>,
    in_dirty: Vec<bool>,
    dirty_pending: u64,
    pub produced: u64,
    pub written: u64,
    records: u64,
    pub end_produced: bool,
    /// The piece of stream being written: `buf[off..end]` is still to go.
    /// `buf` only grows (to one record), so producing never zero-fills.
    buf: Vec<u8>,
    off: usize,
    end: usize,
    corrupt: Vec<u64>,
    pub broken: bool,
}

pub struct LoadSession {
    pub id: u64,
    pub ino: (u64, u64),
    pub r: Arc<OwnedFd>,
    pub wake: Arc<OwnedFd>,
    pub thread: Option<JoinHandle<()>>,
    pub loader: Loader,
    pub writer_gone: bool,
    buf: Vec<u8>,
}

/// Unread/unproduced byte counts of a saving session, for PRECOPY_INFO and
/// MIG_DATA_SIZE.
pub struct Remaining {
    pub initial: u64,
    pub dirty: u64,
    pub stop_copy: u64,
    pub queued: usize,
}

impl SaveSession {
    pub fn new(
        id: u64,
        layout: Layout,
        initial_bytes: Option<u64>,
        corrupt: Vec<u64>,
        stop_copy: bool,
    ) -> io::Result<(SaveSession, OwnedFd)> {
        let (r, w) = session_pipe()?;
        sys::set_nonblocking(&w)?;
        let probe = r.try_clone()?;
        let ino = sys::inode(r.as_raw_fd())?;
        let n = layout.regions();
        // The initial phase: the header and the leading regions that fit.
        let mut initial_total = stream::HEADER_LEN as u64;
        let mut initial_regions = 0;
        let limit = if stop_copy { u64::MAX } else { initial_bytes.unwrap_or(u64::MAX) };
        while initial_regions < n {
            let next = initial_total + stream::record_len(layout.region_len(initial_regions));
            if next > limit {
                break;
            }
            initial_total = next;
            initial_regions += 1;
        }
        let s = SaveSession {
            id,
            ino,
            w: Some(Arc::new(w)),
            probe,
            wake: Arc::new(sys::eventfd()?),
            thread: None,
            stop_copy,
            initial_total,
            initial_regions,
            header_done: false,
            cursor: 0,
            deferred: initial_regions,
            sent_gen: vec![UNSENT; n as usize],
            dirty: VecDeque::new(),
            in_dirty: vec![false; n as usize],
            dirty_pending: 0,
            produced: 0,
            written: 0,
            records: 0,
            end_produced: false,
            buf: Vec::new(),
            off: 0,
            end: 0,
            corrupt,
            broken: false,
        };
        Ok((s, r))
    }

    /// A region changed: if userspace already has an older copy, it is dirty.
    pub fn dirtied(&mut self, layout: Layout, i: u32) {
        let k = i as usize;
        if self.sent_gen[k] != UNSENT && !self.in_dirty[k] {
            self.in_dirty[k] = true;
            self.dirty.push_back(i);
            self.dirty_pending += stream::record_len(layout.region_len(i));
        }
    }

    pub fn remaining(&self, layout: Layout) -> Remaining {
        let queued = sys::fionread(self.probe.as_raw_fd()).unwrap_or(0);
        let read = self.written.saturating_sub(queued as u64);
        let initial_unproduced = self.initial_total.saturating_sub(self.produced);
        let unread = self.produced - read + initial_unproduced + self.dirty_pending;
        let initial = self.initial_total.saturating_sub(read);
        let deferred = stream::records_len(layout, self.deferred);
        let end = if self.end_produced { 0 } else { stream::END_LEN };
        Remaining { initial, dirty: unread - initial, stop_copy: unread + deferred + end, queued }
    }

    /// Everything produced, written and the pipe closed on our side.
    pub fn finished(&self) -> bool {
        self.end_produced && self.off == self.end
    }

    fn room(&mut self, n: usize) {
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        self.end = n;
    }

    fn put(&mut self, bytes: &[u8]) {
        self.room(bytes.len());
        self.buf[..bytes.len()].copy_from_slice(bytes);
    }

    /// Generates the region straight into the buffer behind the room left
    /// for its header: one pass to fill, one to hash, one copy into the pipe.
    fn emit_region(&mut self, content: &mut DeviceContent, i: u32) {
        let len = content.layout.region_len(i);
        let total = stream::RECORD_HDR_LEN + len as usize;
        self.room(total);
        let hash = content.render(i, &mut self.buf[stream::RECORD_HDR_LEN..total]);
        let gen = content.gens[i as usize];
        let hdr = stream::record_hdr(stream::TAG_DATA, i, gen, len, &hash);
        self.buf[..stream::RECORD_HDR_LEN].copy_from_slice(&hdr);
        self.sent_gen[i as usize] = gen;
        self.records += 1;
    }

    /// Puts the next piece of the stream into the buffer; false when there
    /// is nothing to send right now.
    fn produce(&mut self, content: &mut DeviceContent) -> bool {
        let layout = content.layout;
        self.off = 0;
        self.end = 0;
        let mut small = Vec::new();
        if !self.header_done {
            stream::encode_header(layout, content.seed, &mut small);
            self.put(&small);
            self.header_done = true;
        } else if self.cursor < self.initial_regions {
            let i = self.cursor;
            self.cursor += 1;
            self.emit_region(content, i);
        } else if let Some(i) = self.dirty.pop_front() {
            self.in_dirty[i as usize] = false;
            self.dirty_pending -= stream::record_len(layout.region_len(i));
            self.emit_region(content, i);
        } else if self.stop_copy && self.deferred < layout.regions() {
            let i = self.deferred;
            self.deferred += 1;
            self.emit_region(content, i);
        } else if self.stop_copy && !self.end_produced {
            stream::encode_end(layout.regions(), self.records, self.produced, &mut small);
            self.put(&small);
            self.end_produced = true;
        } else {
            return false;
        }
        // Fault injection: flip the requested stream bytes as they go out.
        let start = self.produced;
        let end = start + self.end as u64;
        for &at in &self.corrupt {
            if at >= start && at < end {
                self.buf[(at - start) as usize] ^= 0xff;
            }
        }
        self.produced = end;
        true
    }

    /// Moves bytes into the pipe until it is full, the batch is done or
    /// there is nothing to send. Returns whether we wait for POLLOUT: also
    /// after a full batch, since a reader that keeps pace never fills the
    /// pipe and nothing else would wake us for the rest.
    pub(super) fn pump(&mut self, content: &mut DeviceContent) -> bool {
        let Some(w) = self.w.clone() else { return false };
        let mut moved = 0;
        loop {
            if self.broken {
                return false;
            }
            if moved >= BATCH {
                return true;
            }
            if self.off == self.end && !self.produce(content) {
                break;
            }
            match sys::write(w.as_raw_fd(), &self.buf[self.off..self.end]) {
                Ok(n) => {
                    self.off += n;
                    self.written += n as u64;
                    moved += n;
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return true,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => self.broken = true,
            }
        }
        false
    }
}

impl LoadSession {
    pub fn new(id: u64, layout: Layout) -> io::Result<(LoadSession, OwnedFd)> {
        let (r, w) = session_pipe()?;
        sys::set_nonblocking(&r)?;
        let ino = sys::inode(r.as_raw_fd())?;
        let s = LoadSession {
            id,
            ino,
            r: Arc::new(r),
            wake: Arc::new(sys::eventfd()?),
            thread: None,
            loader: Loader::new(layout),
            writer_gone: false,
            buf: vec![0; 1 << 20],
        };
        Ok((s, w))
    }

    /// Parses what is queued in the pipe, at most `limit` bytes.
    pub fn drain(&mut self, limit: usize) {
        let mut moved = 0;
        while moved < limit && !self.writer_gone {
            match sys::read(self.r.as_raw_fd(), &mut self.buf) {
                Ok(0) => self.writer_gone = true,
                Ok(n) => {
                    self.loader.feed(&self.buf[..n]);
                    moved += n;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => break, // EAGAIN: all that was written is parsed
            }
        }
    }
}
