//! DATA_STATE frames from a saving data fd straight to the migration
//! channel's fd, off the JavaScript thread: be64 marker, be64 size, payload.
//!
//! Where the kernel allows splice on the data fd (the emulated device's pipe)
//! the payload never enters userspace: it is spliced into a private pipe,
//! which tells its size for the frame header, then spliced on to the socket.
//! A data fd that refuses splice (a kernel VFIO migration file has no
//! splice_read: EINVAL) is read block by block into reused buffers, with a
//! reader thread filling one block while the other is written.
//! Either way the data fd's own verdicts (ENOMSG in PRE_COPY, end of state,
//! an error after a reset) come from its backend, never from the pipe alone.
//!
//! The resuming side is the mirror: [`DataFd::load_frames`] reads each
//! header with exact reads (never a byte past it, so whatever follows the
//! frames stays in the channel for its owner) and moves the payload from the
//! channel's fd into the data fd with the transfer engine.

use super::{DataEnd, DataFd};
use crate::kernel::error::{Result, VfioError};
use vmm_sys as sys;
use crate::transfer::{self, Endpoint, PlainFd};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What [`DataFd::pump_frames`] is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct FrameOptions {
    /// Largest payload of one frame (one read from the data fd).
    pub block_size: usize,
    /// Stop once this much payload is out; the last frame is cut short so
    /// the payload never passes it (a pre-copy round's budget is exact
    /// whatever sizes the frames come in).
    pub max_bytes: u64,
    /// The be64 that opens each frame (QEMU's VFIO_MIG_FLAG_DEV_DATA_STATE).
    pub marker: u64,
    /// Longest wait for either fd to become ready; None waits forever.
    pub idle_timeout: Option<Duration>,
    /// false: read/write even where splice would work (tests, measurements).
    pub allow_splice: bool,
}

/// Largest frame payload accepted: far above any useful block, low enough
/// that a bad argument cannot make the pump allocate without bound.
pub const MAX_FRAME_BLOCK: usize = 64 << 20;

/// What [`DataFd::pump_frames`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStats {
    /// Payload bytes sent (headers not counted).
    pub bytes: u64,
    /// Frames sent.
    pub frames: u64,
    /// Frames whose payload went fd to fd by splice (the rest were read).
    pub spliced: u64,
    /// Why it stopped.
    pub end: transfer::End,
}

thread_local! {
    // One block buffer per worker thread, reused by every pump on it.
    static FRAME_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl DataFd {
    /// Reads the data fd block by block and writes each block to `to` as a
    /// QEMU VFIO frame: be64 marker, be64 size, the bytes. Ends at the end of
    /// the state ('eof'), at ENOMSG in PRE_COPY ('enomsg') or once
    /// `max_bytes` of payload went out ('limit'). `to` may be non-blocking.
    pub fn pump_frames(&self, to: RawFd, o: &FrameOptions) -> Result<FrameStats> {
        let ctx = format!("{}: pumpFrames to fd {to}", self.label);
        check_block(o, &ctx)?;
        self.with_fd("pumpFrames", |fd| {
            let held = super::hold(to).map_err(|e| VfioError::from_io(&e, "pumpFrames", &ctx))?;
            let to = held.as_raw_fd();
            if o.allow_splice && !self.splice_refused.load(Ordering::Relaxed) {
                if let Some(st) = self.pump_spliced(fd, to, o, &ctx)? {
                    return Ok(st);
                }
                self.splice_refused.store(true, Ordering::Relaxed);
            }
            self.pump_read(fd, To::Fd(to), o, &ctx)
        })
    }

    /// [`DataFd::pump_frames`] to a channel that is no descriptor (a TLS
    /// session, `label` in messages): the data fd is read into native
    /// buffers, never spliced, and each frame goes through `to`.
    pub fn pump_frames_to(&self, to: &dyn FrameWire, label: &str, o: &FrameOptions) -> Result<FrameStats> {
        let ctx = format!("{}: pumpFrames to {label}", self.label);
        check_block(o, &ctx)?;
        self.with_fd("pumpFrames", |fd| self.pump_read(fd, To::Wire(to), o, &ctx))
    }

    /// The pump that reads the data fd: overlapped with the writes when
    /// more than one block may go, else one block at a time.
    fn pump_read(&self, fd: RawFd, to: To<'_>, o: &FrameOptions, ctx: &str) -> Result<FrameStats> {
        if o.max_bytes > o.block_size as u64 {
            return self.pump_overlapped(fd, to, o, ctx);
        }
        {
            let ctx = ctx.to_string();
            FRAME_BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                if buf.len() < o.block_size {
                    buf.resize(o.block_size, 0);
                }
                let mut st = FrameStats { bytes: 0, frames: 0, spliced: 0, end: transfer::End::Limit };
                while st.bytes < o.max_bytes {
                    let want = room(o.max_bytes, st.bytes, o.block_size);
                    let n = match self.read_block(fd, &mut buf[..want], o, &ctx, st.bytes)? {
                        Some(0) => {
                            st.end = transfer::End::Eof;
                            return Ok(st);
                        }
                        Some(n) => n,
                        None => {
                            st.end = transfer::End::NoData;
                            return Ok(st);
                        }
                    };
                    to.frame(&header(o.marker, n), &buf[..n], o, &ctx, st.bytes)?;
                    st.bytes += n as u64;
                    st.frames += 1;
                }
                Ok(st)
            })
        }
    }

    /// The splice path; None when the data fd refuses splice before any
    /// byte moved (a kernel data fd), and the caller reads it instead.
    fn pump_spliced(&self, fd: RawFd, to: RawFd, o: &FrameOptions, ctx: &str) -> Result<Option<FrameStats>> {
        let (pr, pw) = sys::pipe().map_err(|e| VfioError::from_io(&e, "pipe2", ctx))?;
        // The private pipe's fill level is the frame's size, so a frame is at
        // most what the pipe holds: ask for a block, take what is granted
        // (above pipe-max-size an unprivileged process gets EPERM).
        // Never below the default 64 KiB: a pipe holds a fixed number of
        // buffers, and partly consumed pages spliced in take one each.
        let want = o.block_size.clamp(64 << 10, i32::MAX as usize);
        let cap = sys::set_pipe_size(&pw, want).or_else(|_| sys::pipe_size(&pw)).unwrap_or(0);
        let block = if cap > 0 { o.block_size.min(cap) } else { o.block_size.min(4096) };
        let mut st = FrameStats { bytes: 0, frames: 0, spliced: 0, end: transfer::End::Limit };
        let fail = |e: &io::Error, call: &str, on: &str, done: u64| VfioError::from_io(e, call, format!("{ctx}: {call} on {on} after {done} payload bytes"));
        // Set when a wait for the producer timed out: the next empty pipe
        // goes to the backend, whose read waits (or fails) as the device says.
        let mut stalled = false;
        while st.bytes < o.max_bytes {
            let want = room(o.max_bytes, st.bytes, block);
            let mut have = 0usize;
            let mut closed = false;
            while have < want {
                match splice_nb(fd, pw.as_raw_fd(), want - have) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => have += n,
                    // The private pipe has room, so the data fd is empty right now.
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                    Err(e) if st.bytes == 0 && have == 0 && transfer::refuses_splice(&e) => return Ok(None),
                    Err(e) => return Err(fail(&e, "splice", "the data fd", st.bytes)),
                }
            }
            if have > 0 {
                write_all(to, &header(o.marker, have), o, ctx, st.bytes)?;
                let mut left = have;
                while left > 0 {
                    match splice_nb(pr.as_raw_fd(), to, left) {
                        Ok(0) => return Err(fail(&io::Error::from_raw_os_error(libc::EIO), "splice", "the channel", st.bytes)),
                        Ok(n) => left -= n,
                        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => wait_ready(to, libc::POLLOUT, o.idle_timeout).map_err(|e| wait_error(&e, ctx, st.bytes))?,
                        Err(e) => return Err(fail(&e, "splice", "the channel", st.bytes)),
                    }
                }
                st.bytes += have as u64;
                st.frames += 1;
                st.spliced += 1;
                continue;
            }
            // Out of pre-copy a device ends its data with EOF, never ENOMSG,
            // so an empty pipe only means the device is still producing: wait
            // for it and splice on, rather than take a partial block by copy.
            if !closed && !stalled && (DataEnd { fd, backend: &*self.backend, label: &self.label }).only_eof_ends() {
                match sys::poll(fd, libc::POLLIN, Some(Duration::from_millis(100))) {
                    Ok(r) if r != 0 => continue,
                    Ok(_) => stalled = true,
                    Err(e) => return Err(fail(&e, "poll", "the data fd", st.bytes)),
                }
                continue;
            }
            stalled = false;
            // An empty pipe (or its closed end) is no verdict: only the device
            // knows whether this is a pause, ENOMSG, the end of the state or
            // a failed session, and a read through its backend says which.
            let n = FRAME_BUF.with(|cell| -> Result<Option<usize>> {
                let mut buf = cell.borrow_mut();
                if buf.len() < block {
                    buf.resize(block, 0);
                }
                let n = self.read_block(fd, &mut buf[..want], o, ctx, st.bytes)?;
                if let Some(n @ 1..) = n {
                    write_frame(to, &header(o.marker, n), &buf[..n], o, ctx, st.bytes)?;
                }
                Ok(n)
            })?;
            match n {
                Some(0) => {
                    st.end = transfer::End::Eof;
                    return Ok(Some(st));
                }
                None => {
                    st.end = transfer::End::NoData;
                    return Ok(Some(st));
                }
                Some(n) => {
                    st.bytes += n as u64;
                    st.frames += 1;
                }
            }
        }
        Ok(Some(st))
    }

    /// The same frames with the device and the socket working at once: a
    /// scoped reader thread fills one buffer while this thread writes the
    /// other. The reader applies the limit itself, so it never reads a block
    /// that would not be sent.
    fn pump_overlapped(&self, fd: RawFd, to: To<'_>, o: &FrameOptions, ctx: &str) -> Result<FrameStats> {
        enum Msg {
            Block(Vec<u8>, usize),
            End(transfer::End),
            Failed(VfioError),
        }
        let (full_tx, full_rx) = mpsc::sync_channel::<Msg>(2);
        let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(2);
        for _ in 0..2 {
            free_tx.send(vec![0u8; o.block_size]).expect("the receiver is alive");
        }
        // move: the writer's channel ends drop when it returns, so a reader
        // waiting on them wakes up and ends before the scope joins it.
        std::thread::scope(move |sc| {
            sc.spawn(move || {
                let mut read = 0u64;
                loop {
                    // Err: the writer gave up (its error is what gets reported).
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let want = room(o.max_bytes, read, o.block_size);
                    let msg = match self.read_block(fd, &mut buf[..want], o, ctx, read) {
                        Ok(Some(0)) => Msg::End(transfer::End::Eof),
                        Ok(None) => Msg::End(transfer::End::NoData),
                        Ok(Some(n)) => {
                            read += n as u64;
                            Msg::Block(buf, n)
                        }
                        Err(e) => Msg::Failed(e),
                    };
                    let last = !matches!(msg, Msg::Block(..));
                    if full_tx.send(msg).is_err() || last {
                        return;
                    }
                    if read >= o.max_bytes {
                        let _ = full_tx.send(Msg::End(transfer::End::Limit));
                        return;
                    }
                }
            });
            let mut st = FrameStats { bytes: 0, frames: 0, spliced: 0, end: transfer::End::Limit };
            loop {
                match full_rx.recv() {
                    Ok(Msg::Block(buf, n)) => {
                        // On error, returning drops full_rx and free_tx, which ends the reader.
                        to.frame(&header(o.marker, n), &buf[..n], o, ctx, st.bytes)?;
                        st.bytes += n as u64;
                        st.frames += 1;
                        let _ = free_tx.send(buf);
                    }
                    Ok(Msg::End(end)) => {
                        st.end = end;
                        return Ok(st);
                    }
                    Ok(Msg::Failed(e)) => return Err(e),
                    Err(_) => return Err(VfioError::new(libc::EIO, "pumpFrames", ctx, Some("the reader thread ended without a word"))),
                }
            }
        })
    }

    /// One read through the backend; None for ENOMSG. EAGAIN waits for the fd.
    fn read_block(&self, fd: RawFd, buf: &mut [u8], o: &FrameOptions, ctx: &str, done: u64) -> Result<Option<usize>> {
        let start = Instant::now();
        loop {
            match self.backend.data_read(fd, buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    // Slices of 100 ms: an emulated fd may not report POLLIN, so retry the read anyway.
                    let slice = Duration::from_millis(100);
                    sys::poll(fd, libc::POLLIN, Some(slice)).map_err(|e| VfioError::from_io(&e, "poll", format!("{ctx}: data fd after {done} bytes")))?;
                    if o.idle_timeout.is_some_and(|t| start.elapsed() >= t) {
                        return Err(VfioError::new(libc::ETIMEDOUT, "read", format!("{ctx}: data fd after {done} bytes"), Some("device state not ready within the idle timeout")));
                    }
                }
                Err(e) => return Err(VfioError::from_io(&e, "read", format!("{ctx}: data fd after {done} bytes"))),
            }
        }
    }
}

/// A channel the frames go to or come from that is no descriptor of its
/// own: a TLS session, whose bytes must all be encrypted and decrypted.
/// Its calls wait by themselves (for room, for bytes, at most `idle`) and
/// say in their errors what failed; `after` is payload moved before, for
/// those messages.
pub trait FrameWire {
    /// Writes all of `bufs`.
    fn write_all(&self, bufs: &[&[u8]], idle: Option<Duration>, after: u64) -> Result<()>;
    /// Reads at least one byte into `buf`, never more; 0 at a clean end.
    fn read(&self, buf: &mut [u8], idle: Option<Duration>, after: u64) -> Result<usize>;
}

/// Where the pump writes its frames.
#[derive(Clone, Copy)]
enum To<'a> {
    Fd(RawFd),
    Wire(&'a dyn FrameWire),
}

impl To<'_> {
    fn frame(&self, head: &[u8; 16], data: &[u8], o: &FrameOptions, ctx: &str, done: u64) -> Result<()> {
        match *self {
            To::Fd(fd) => write_frame(fd, head, data, o, ctx, done),
            To::Wire(w) => w.write_all(&[head, data], o.idle_timeout, done),
        }
    }
}

fn check_block(o: &FrameOptions, ctx: &str) -> Result<()> {
    if o.block_size == 0 || o.block_size > MAX_FRAME_BLOCK {
        return Err(VfioError::invalid("pumpFrames", ctx, &format!("blockSize must be 1..{MAX_FRAME_BLOCK}, got {}", o.block_size)));
    }
    Ok(())
}

fn header(marker: u64, n: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&marker.to_be_bytes());
    h[8..].copy_from_slice(&(n as u64).to_be_bytes());
    h
}

/// What [`DataFd::load_frames`] is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct LoadFrameOptions {
    /// The be64 that opens each frame to take (DATA_STATE).
    pub marker: u64,
    /// Stop at the first frame boundary at or past this much payload, so the
    /// caller can account progress between calls.
    pub max_bytes: u64,
    /// Longest wait for the channel to become readable; None waits forever.
    pub idle_timeout: Option<Duration>,
    /// false: write the data fd even where splice would work.
    pub allow_splice: bool,
}

/// Why [`DataFd::load_frames`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadEnd {
    /// A be64 other than the frame marker came next; it was consumed.
    Marker(u64),
    /// `max_bytes` of payload went in; the channel is at a frame boundary.
    Limit,
    /// The channel ended at a frame boundary.
    Eof,
}

/// What [`DataFd::load_frames`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadFrameStats {
    /// Payload bytes written into the data fd.
    pub bytes: u64,
    /// Frames taken.
    pub frames: u64,
    /// Why it stopped.
    pub end: LoadEnd,
}

impl LoadFrameStats {
    /// Bytes taken from the channel: headers, payloads and a consumed marker.
    pub fn consumed(&self) -> u64 {
        self.bytes + 16 * self.frames + if matches!(self.end, LoadEnd::Marker(_)) { 8 } else { 0 }
    }
}

impl DataFd {
    /// Takes frames (be64 marker, be64 size, payload) from `from` while
    /// their marker is `o.marker`, writing each payload into the data fd
    /// (RESUMING). Nothing past the last frame is read except the be64 that
    /// ends the run, which is returned. `from` may be non-blocking.
    pub fn load_frames(&self, from: RawFd, o: &LoadFrameOptions) -> Result<LoadFrameStats> {
        let ctx = format!("{}: loadFrames from fd {from}", self.label);
        self.with_fd("loadFrames", |fd| {
            let held = super::hold(from).map_err(|e| VfioError::from_io(&e, "loadFrames", &ctx))?;
            let from = held.as_raw_fd();
            let to = DataEnd { fd, backend: &*self.backend, label: &self.label };
            let topts = transfer::Options { idle_timeout: o.idle_timeout, allow_splice: o.allow_splice, ..transfer::Options::default() };
            let mut st = LoadFrameStats { bytes: 0, frames: 0, end: LoadEnd::Limit };
            while st.bytes < o.max_bytes {
                let Some(marker) = read_be64(from, o, &ctx, &st, true)? else {
                    st.end = LoadEnd::Eof;
                    return Ok(st);
                };
                if marker != o.marker {
                    st.end = LoadEnd::Marker(marker);
                    return Ok(st);
                }
                let size = read_be64(from, o, &ctx, &st, false)?.expect("mid-frame end is an error");
                let moved = transfer::transfer(&PlainFd(from), &to, size, &topts, &ctx)?;
                if moved.bytes < size {
                    return Err(VfioError::new(
                        libc::ENODATA,
                        "loadFrames",
                        format!("{ctx}: frame {} after {} payload bytes", st.frames, st.bytes),
                        Some(&format!("the channel ended {} bytes into a {size}-byte frame", moved.bytes)),
                    ));
                }
                st.bytes += size;
                st.frames += 1;
            }
            Ok(st)
        })
    }
}

impl DataFd {
    /// [`DataFd::load_frames`] from a channel that is no descriptor (a TLS
    /// session, `label` in messages): each payload is read from `from` into
    /// a native buffer and written into the data fd. As there, nothing past
    /// the be64 that ends the run is taken from `from`.
    pub fn load_frames_from(&self, from: &dyn FrameWire, label: &str, o: &LoadFrameOptions) -> Result<LoadFrameStats> {
        let ctx = format!("{}: loadFrames from {label}", self.label);
        self.with_fd("loadFrames", |fd| {
            let to = DataEnd { fd, backend: &*self.backend, label: &self.label };
            // Decryption here and the device's writes on a scoped thread, at
            // once: one buffer filled while the one before goes into the device.
            let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize, u64)>(LOAD_BUFFERS);
            let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(LOAD_BUFFERS);
            for _ in 0..LOAD_BUFFERS {
                free_tx.send(vec![0u8; LOAD_BLOCK]).expect("the receiver is alive");
            }
            let ctx = &ctx;
            std::thread::scope(move |sc| {
                let writer = sc.spawn(move || -> Result<()> {
                    for (buf, n, at) in full_rx {
                        write_data(&to, &buf[..n], o.idle_timeout, ctx, at)?;
                        // Err: the reader is done and wants no more buffers.
                        let _ = free_tx.send(buf);
                    }
                    Ok(())
                });
                // None: the writer failed (its error is the one to report).
                let read = move || -> Result<Option<LoadFrameStats>> {
                    let mut st = LoadFrameStats { bytes: 0, frames: 0, end: LoadEnd::Limit };
                    while st.bytes < o.max_bytes {
                        let Some(marker) = wire_be64(from, o, ctx, &st, true)? else {
                            st.end = LoadEnd::Eof;
                            return Ok(Some(st));
                        };
                        if marker != o.marker {
                            st.end = LoadEnd::Marker(marker);
                            return Ok(Some(st));
                        }
                        let size = wire_be64(from, o, ctx, &st, false)?.expect("mid-frame end is an error");
                        let mut left = size;
                        while left > 0 {
                            let Ok(mut buf) = free_rx.recv() else { return Ok(None) };
                            let at = st.bytes + (size - left);
                            let want = left.min(buf.len() as u64) as usize;
                            let n = from.read(&mut buf[..want], o.idle_timeout, at)?;
                            if n == 0 {
                                return Err(VfioError::new(
                                    libc::ENODATA,
                                    "loadFrames",
                                    format!("{ctx}: frame {} after {} payload bytes", st.frames, st.bytes),
                                    Some(&format!("the channel ended {} bytes into a {size}-byte frame", size - left)),
                                ));
                            }
                            if full_tx.send((buf, n, at)).is_err() {
                                return Ok(None);
                            }
                            left -= n as u64;
                        }
                        st.bytes += size;
                        st.frames += 1;
                    }
                    Ok(Some(st))
                };
                // The reader's channel ends drop when it returns: the writer
                // finishes what it was given and ends.
                let r = read();
                drop(read);
                let w = writer.join().unwrap_or_else(|_| Err(VfioError::new(libc::EIO, "loadFrames", ctx, Some("the writer thread panicked"))));
                match (r, w) {
                    (Ok(Some(st)), Ok(())) => Ok(st),
                    (_, Err(e)) => Err(e),
                    (Err(e), Ok(())) => Err(e),
                    (Ok(None), Ok(())) => Err(VfioError::new(libc::EIO, "loadFrames", ctx, Some("the writer thread ended without a word"))),
                }
            })
        })
    }
}

/// Buffers of [`DataFd::load_frames_from`] in flight between its threads.
const LOAD_BUFFERS: usize = 3;

/// One buffer of [`DataFd::load_frames_from`]: many TLS records.
const LOAD_BLOCK: usize = 1 << 20;

/// All of `data` into the data fd through its backend; EAGAIN waits.
fn write_data(to: &DataEnd<'_>, mut data: &[u8], idle: Option<Duration>, ctx: &str, done: u64) -> Result<()> {
    let at = || format!("{ctx}: data fd after {done} payload bytes");
    while !data.is_empty() {
        match to.write(data) {
            Ok(0) => return Err(VfioError::new(libc::EIO, "write", at(), Some("the data fd took no bytes"))),
            Ok(n) => data = &data[n..],
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => wait_ready(to.fd, libc::POLLOUT, idle).map_err(|e| match e.raw_os_error() {
                Some(libc::ETIMEDOUT) => VfioError::new(libc::ETIMEDOUT, "poll", at(), Some("the data fd took nothing within the idle timeout")),
                _ => VfioError::from_io(&e, "poll", at()),
            })?,
            Err(e) => return Err(VfioError::from_io(&e, "write", at())),
        }
    }
    Ok(())
}

/// [`read_be64`] from a [`FrameWire`].
fn wire_be64(from: &dyn FrameWire, o: &LoadFrameOptions, ctx: &str, st: &LoadFrameStats, boundary: bool) -> Result<Option<u64>> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match from.read(&mut b[got..], o.idle_timeout, st.bytes)? {
            0 if got == 0 && boundary => return Ok(None),
            0 => {
                let at = format!("{ctx}: frame {} after {} payload bytes", st.frames, st.bytes);
                return Err(VfioError::new(libc::ENODATA, "read", at, Some(&format!("the channel ended inside a frame header ({got} of 8 bytes)"))));
            }
            n => got += n,
        }
    }
    Ok(Some(u64::from_be_bytes(b)))
}

/// Exactly 8 bytes from `from` as a be64. None when the channel ends before
/// the first byte and `boundary` allows it; an end anywhere else is ENODATA.
fn read_be64(from: RawFd, o: &LoadFrameOptions, ctx: &str, st: &LoadFrameStats, boundary: bool) -> Result<Option<u64>> {
    let mut b = [0u8; 8];
    let mut got = 0;
    let at = || format!("{ctx}: frame {} after {} payload bytes", st.frames, st.bytes);
    while got < 8 {
        match sys::read(from, &mut b[got..]) {
            Ok(0) if got == 0 && boundary => return Ok(None),
            Ok(0) => return Err(VfioError::new(libc::ENODATA, "read", at(), Some(&format!("the channel ended inside a frame header ({got} of 8 bytes)")))),
            Ok(n) => got += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => wait_ready(from, libc::POLLIN, o.idle_timeout).map_err(|e| match e.raw_os_error() {
                Some(libc::ETIMEDOUT) => VfioError::new(libc::ETIMEDOUT, "poll", at(), Some("no frame header within the idle timeout")),
                _ => VfioError::from_io(&e, "poll", at()),
            })?,
            Err(e) => return Err(VfioError::from_io(&e, "read", at())),
        }
    }
    Ok(Some(u64::from_be_bytes(b)))
}


/// Payload the next frame may carry: a block, or less where the budget ends.
fn room(max: u64, done: u64, block: usize) -> usize {
    (max - done).min(block as u64) as usize
}

/// One non-blocking splice (EINTR retried): a full or empty pipe answers
/// EAGAIN, so every wait goes through poll and its timeout.
fn splice_nb(from: RawFd, to: RawFd, n: usize) -> io::Result<usize> {
    sys::splice(from, to, n)
}

/// A frame header alone (the payload follows by splice).
fn write_all(to: RawFd, head: &[u8; 16], o: &FrameOptions, ctx: &str, done: u64) -> Result<()> {
    write_frame(to, head, &[], o, ctx, done)
}

fn wait_error(e: &io::Error, ctx: &str, done: u64) -> VfioError {
    match e.raw_os_error() {
        Some(libc::ETIMEDOUT) => VfioError::new(libc::ETIMEDOUT, "poll", format!("{ctx}: after {done} payload bytes"), Some("destination not writable within the idle timeout")),
        _ => VfioError::from_io(e, "poll", format!("{ctx}: after {done} payload bytes")),
    }
}

/// writev of header + payload until all is out; EAGAIN polls for POLLOUT.
fn write_frame(to: RawFd, head: &[u8; 16], data: &[u8], o: &FrameOptions, ctx: &str, done: u64) -> Result<()> {
    let total = head.len() + data.len();
    let mut off = 0usize;
    let fail = |e: &io::Error, call: &str, off: usize| VfioError::from_io(e, call, format!("{ctx}: after {} payload bytes, {off} of a {total}-byte frame", done));
    while off < total {
        let (a, b): (&[u8], &[u8]) = if off < head.len() { (&head[off..], data) } else { (&data[off - head.len()..], &[]) };
        let iov = [
            libc::iovec { iov_base: a.as_ptr() as *mut libc::c_void, iov_len: a.len() },
            libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() },
        ];
        let cnt = if b.is_empty() { 1 } else { 2 };
        // SAFETY: both iovecs describe the live slices `a` and `b`, borrowed
        // across the call.
        match unsafe { sys::writev(to, &iov[..cnt]) } {
            Ok(0) => return Err(fail(&io::Error::from_raw_os_error(libc::EIO), "writev", off)),
            Ok(n) => off += n,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => wait_ready(to, libc::POLLOUT, o.idle_timeout).map_err(|e| wait_error(&e, ctx, done))?,
            Err(e) => return Err(fail(&e, "writev", off)),
        }
    }
    Ok(())
}

/// Waits for `events` on a channel fd. Every caller holds its own dup of
/// it (see `hold`), so a close of Node's number cannot wake this and cannot
/// matter; a shutdown(2) of the socket does wake it (POLLHUP), and the idle
/// timeout bounds the rest.
fn wait_ready(fd: RawFd, events: i16, timeout: Option<Duration>) -> io::Result<()> {
    match sys::poll(fd, events, timeout)? {
        0 => Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
        r if r & libc::POLLNVAL != 0 => Err(io::Error::from_raw_os_error(libc::EBADF)),
        // POLLHUP/POLLERR included: the next read or write says what happened.
        _ => Ok(()),
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    const DATA_STATE: u64 = 0xffff_ffff_ef10_0004;

    fn opts(block: usize, max: u64, splice: bool) -> FrameOptions {
        FrameOptions { block_size: block, max_bytes: max, marker: DATA_STATE, idle_timeout: Some(Duration::from_secs(5)), allow_splice: splice }
    }

    fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            assert_eq!(u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()), DATA_STATE);
            let n = u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()) as usize;
            out.push(bytes[at + 16..at + 16 + n].to_vec());
            at += 16 + n;
        }
        out
    }

    fn read_to_end(fd: OwnedFd) -> Vec<u8> {
        let mut got = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut got).unwrap();
        got
    }

    /// Frames spliced on the splice path, none on the read path.
    fn spliced(splice: bool, frames: u64) -> u64 {
        if splice {
            frames
        } else {
            0
        }
    }

    #[test]
    fn frames_a_pipe_into_a_socket_until_eof() {
        for splice in [true, false] {
            let (r, w) = sys::pipe().unwrap();
            let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
            sys::write(w.as_raw_fd(), &data).unwrap();
            drop(w);
            let d = DataFd::for_testing(r);
            let (a, b) = sys::socketpair().unwrap();
            let st = d.pump_frames(a.as_raw_fd(), &opts(4096, u64::MAX, splice)).unwrap();
            drop(a);
            assert_eq!(st, FrameStats { bytes: 10_000, frames: 3, spliced: spliced(splice, 3), end: transfer::End::Eof });
            let f = frames(&read_to_end(b));
            assert_eq!(f.iter().map(|x| x.len()).collect::<Vec<_>>(), vec![4096, 4096, 1808]);
            assert_eq!(f.concat(), data);
        }
    }

    #[test]
    fn cuts_the_last_frame_at_the_limit_and_refuses_bad_blocks() {
        for splice in [true, false] {
            let (r, w) = sys::pipe().unwrap();
            sys::write(w.as_raw_fd(), &[1u8; 9000]).unwrap();
            let d = DataFd::for_testing(r);
            let (a, _b) = sys::socketpair().unwrap();
            let st = d.pump_frames(a.as_raw_fd(), &opts(4096, 5000, splice)).unwrap();
            assert_eq!((st.bytes, st.frames, st.end), (5000, 2, transfer::End::Limit), "the second frame cut at the budget");
            let st = d.pump_frames(a.as_raw_fd(), &opts(4096, 1, splice)).unwrap();
            assert_eq!((st.bytes, st.frames, st.end), (1, 1, transfer::End::Limit));
            let st = d.pump_frames(a.as_raw_fd(), &opts(4096, 3999, splice)).unwrap();
            assert_eq!((st.bytes, st.frames, st.end), (3999, 1, transfer::End::Limit), "the rest, nothing more taken");
            let e = d.pump_frames(a.as_raw_fd(), &opts(0, 10, splice)).unwrap_err();
            assert_eq!(e.errno, libc::EINVAL);
            let e = d.pump_frames(a.as_raw_fd(), &opts(MAX_FRAME_BLOCK + 1, 10, splice)).unwrap_err();
            assert_eq!(e.errno, libc::EINVAL);
            let e = d.pump_frames(-1, &opts(4096, 10, splice)).unwrap_err();
            assert_eq!(e.errno, libc::EBADF);
            drop(w);
        }
    }

    #[test]
    fn survives_partial_writes_and_eagain_on_a_full_non_blocking_socket() {
        for splice in [true, false] {
            let (r, w) = sys::pipe().unwrap();
            let data: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
            sys::write(w.as_raw_fd(), &data).unwrap();
            drop(w);
            let d = DataFd::for_testing(r);
            let (a, b) = sys::socketpair().unwrap();
            // SAFETY: setsockopt reads one int from a local; fcntl takes an int.
            unsafe {
                let small: libc::c_int = 4096;
                libc::setsockopt(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &small as *const _ as *const libc::c_void, 4);
                libc::fcntl(a.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
            }
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                read_to_end(b)
            });
            let st = d.pump_frames(a.as_raw_fd(), &opts(16384, u64::MAX, splice)).unwrap();
            drop(a);
            assert_eq!((st.bytes, st.frames, st.spliced, st.end), (60_000, 4, spliced(splice, 4), transfer::End::Eof));
            let f = frames(&reader.join().unwrap());
            assert_eq!(f.iter().map(|x| x.len()).collect::<Vec<_>>(), vec![16384, 16384, 16384, 10848]);
            assert_eq!(f.concat(), data);
        }
    }

    #[test]
    fn a_closed_peer_fails_the_pump_without_hanging_the_reader() {
        for splice in [true, false] {
            let (r, w) = sys::pipe().unwrap();
            sys::write(w.as_raw_fd(), &[7u8; 20_000]).unwrap();
            let d = DataFd::for_testing(r);
            let (a, b) = sys::socketpair().unwrap();
            drop(b);
            drop(w);
            let e = d.pump_frames(a.as_raw_fd(), &opts(4096, u64::MAX, splice)).unwrap_err();
            assert_eq!(e.errno, libc::EPIPE, "{}", e.message);
        }
    }

    #[test]
    fn a_data_fd_that_refuses_splice_is_read_instead() {
        // eventfd has read but no splice_read, like a kernel VFIO migration
        // file: splice answers EINVAL and the pump reads (8 bytes: the counter).
        // SAFETY: eventfd takes only integers.
        let efd = unsafe { libc::eventfd(5, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(efd >= 0);
        // SAFETY: a fresh eventfd (checked above) that nothing else owns.
        let d = DataFd::for_testing(unsafe { OwnedFd::from_raw_fd(efd) });
        let (a, b) = sys::socketpair().unwrap();
        let st = d.pump_frames(a.as_raw_fd(), &opts(4096, 8, true)).unwrap();
        assert_eq!((st.bytes, st.frames, st.spliced, st.end), (8, 1, 0, transfer::End::Limit));
        drop(a);
        let f = frames(&read_to_end(b));
        assert_eq!(f, vec![5u64.to_ne_bytes().to_vec()]);
    }

    #[test]
    fn the_largest_block_works_whatever_pipe_size_is_granted() {
        // 64 MiB is above the default pipe-max-size (1 MiB): an unprivileged
        // process is refused (EPERM) and frames are cut to the pipe it has,
        // root gets the size; either way every byte arrives in bounded frames.
        let (r, w) = sys::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![3u8; 1 << 20];
            for _ in 0..3 {
                let mut off = 0;
                while off < chunk.len() {
                    off += sys::write(w.as_raw_fd(), &chunk[off..]).unwrap();
                }
            }
        });
        let d = DataFd::for_testing(r);
        let (a, b) = sys::socketpair().unwrap();
        let reader = std::thread::spawn(move || read_to_end(b));
        let st = d.pump_frames(a.as_raw_fd(), &opts(MAX_FRAME_BLOCK, u64::MAX, true)).unwrap();
        writer.join().unwrap();
        drop(a);
        assert_eq!((st.bytes, st.end), (3 << 20, transfer::End::Eof));
        let f = frames(&reader.join().unwrap());
        assert!(f.iter().all(|x| x.len() <= MAX_FRAME_BLOCK && !x.is_empty()));
        assert_eq!(f.concat().len(), 3 << 20);
    }

    fn lopts(max: u64, splice: bool) -> LoadFrameOptions {
        LoadFrameOptions { marker: DATA_STATE, max_bytes: max, idle_timeout: Some(Duration::from_secs(5)), allow_splice: splice }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = DATA_STATE.to_be_bytes().to_vec();
        v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn loads_frames_until_another_marker_and_leaves_what_follows() {
        for splice in [true, false] {
            let (a, b) = sys::socketpair().unwrap();
            let p1: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
            let p2 = vec![9u8; 70_000];
            let mut wire = frame(&p1);
            wire.extend(frame(&p2));
            wire.extend(0xffff_ffff_ef10_0001u64.to_be_bytes());
            wire.extend(b"rest");
            let writer = std::thread::spawn(move || {
                let mut off = 0;
                while off < wire.len() {
                    off += sys::write(a.as_raw_fd(), &wire[off..]).unwrap();
                }
                a
            });
            let (r, w) = sys::pipe().unwrap();
            let reader = std::thread::spawn(move || read_to_end(r));
            let d = DataFd::for_testing(w);
            let st = d.load_frames(b.as_raw_fd(), &lopts(u64::MAX, splice)).unwrap();
            assert_eq!(st, LoadFrameStats { bytes: 75_000, frames: 2, end: LoadEnd::Marker(0xffff_ffff_ef10_0001) });
            assert_eq!(st.consumed(), 75_000 + 32 + 8);
            d.close();
            let mut expect = p1.clone();
            expect.extend(&p2);
            assert_eq!(reader.join().unwrap(), expect);
            drop(writer.join().unwrap());
            assert_eq!(read_to_end(b), b"rest");
        }
    }

    #[test]
    fn stops_at_the_frame_boundary_past_the_limit_and_at_a_clean_end() {
        let (a, b) = sys::socketpair().unwrap();
        let mut wire = frame(&[1u8; 100]);
        wire.extend(frame(&[2u8; 100]));
        wire.extend(frame(&[3u8; 100]));
        sys::write(a.as_raw_fd(), &wire).unwrap();
        drop(a);
        let (r, w) = sys::pipe().unwrap();
        let d = DataFd::for_testing(w);
        let st = d.load_frames(b.as_raw_fd(), &lopts(150, true)).unwrap();
        assert_eq!((st.bytes, st.frames, st.end), (200, 2, LoadEnd::Limit));
        let st = d.load_frames(b.as_raw_fd(), &lopts(u64::MAX, true)).unwrap();
        assert_eq!((st.bytes, st.frames, st.end, st.consumed()), (100, 1, LoadEnd::Eof, 116));
        d.close();
        assert_eq!(read_to_end(r).len(), 300);
    }

    #[test]
    fn an_end_inside_a_header_or_a_payload_is_enodata() {
        for (cut, what) in [(4usize, "inside a frame header"), (12, "inside a frame header"), (16 + 50, "50 bytes into a 100-byte frame")] {
            let (a, b) = sys::socketpair().unwrap();
            sys::write(a.as_raw_fd(), &frame(&[5u8; 100])[..cut]).unwrap();
            drop(a);
            let (_r, w) = sys::pipe().unwrap();
            let e = DataFd::for_testing(w).load_frames(b.as_raw_fd(), &lopts(u64::MAX, true)).unwrap_err();
            assert_eq!(e.errno, libc::ENODATA, "{}", e.message);
            assert!(e.message.contains(what), "{}", e.message);
        }
    }

    #[test]
    fn waits_on_a_non_blocking_channel_and_times_out_when_nothing_comes() {
        let (a, b) = sys::socketpair().unwrap();
        sys::set_nonblocking(&b).unwrap();
        let writer = std::thread::spawn(move || {
            let f = frame(&[6u8; 3000]);
            for part in f.chunks(7) {
                std::thread::sleep(Duration::from_micros(200));
                sys::write(a.as_raw_fd(), part).unwrap();
            }
            a
        });
        let (r, w) = sys::pipe().unwrap();
        // Drained as it fills: 7-byte packets spliced in take a pipe slot each.
        let reader = std::thread::spawn(move || read_to_end(r));
        let d = DataFd::for_testing(w);
        let st = d.load_frames(b.as_raw_fd(), &lopts(1, true)).unwrap();
        assert_eq!((st.bytes, st.end), (3000, LoadEnd::Limit));
        let _a = writer.join().unwrap();
        let o = LoadFrameOptions { idle_timeout: Some(Duration::from_millis(300)), ..lopts(u64::MAX, true) };
        let e = d.load_frames(b.as_raw_fd(), &o).unwrap_err();
        assert_eq!(e.errno, libc::ETIMEDOUT, "{}", e.message);
        d.close();
        assert_eq!(reader.join().unwrap(), vec![6u8; 3000]);
    }

    #[test]
    fn a_data_fd_that_refuses_splice_is_written_instead() {
        // SAFETY: eventfd takes only integers.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(efd >= 0);
        // SAFETY: a fresh eventfd (checked above) that nothing else owns.
        let d = DataFd::for_testing(unsafe { OwnedFd::from_raw_fd(efd) });
        let (a, b) = sys::socketpair().unwrap();
        sys::write(a.as_raw_fd(), &frame(&3u64.to_ne_bytes())).unwrap();
        drop(a);
        let st = d.load_frames(b.as_raw_fd(), &lopts(u64::MAX, true)).unwrap();
        assert_eq!((st.bytes, st.end), (8, LoadEnd::Eof));
        let mut v = [0u8; 8];
        sys::read(efd, &mut v).unwrap();
        assert_eq!(u64::from_ne_bytes(v), 3);
    }
}
