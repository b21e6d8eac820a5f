//! The migration data fd a MIG_DEVICE_STATE SET hands out: reads in the
//! saving states, writes in RESUMING, PRECOPY_INFO, poll, and transfers to
//! and from other fds. Reads and writes go through the device backend, so an
//! emulated device answers them exactly as its kernel counterpart would.

use crate::backend::DeviceBackend;
use crate::kernel::error::{Result, VfioError};
use crate::kernel::sys;
use crate::kernel::transfer::{self, Endpoint, Options, PlainFd, Stats};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};
use vfio_uapi::abi::{vfio_precopy_info, Pod};
use vfio_uapi::DeviceState;

pub struct DataFd {
    // Every operation holds the read lock for its whole syscall, so close
    // (the write lock) never frees a number another thread is still using.
    fd: RwLock<Option<OwnedFd>>,
    backend: Arc<dyn DeviceBackend>,
    label: String,
}

/// `VFIO_MIG_GET_PRECOPY_INFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrecopyInfo {
    pub initial_bytes: u64,
    pub dirty_bytes: u64,
}

struct DataEnd<'a> {
    fd: RawFd,
    backend: &'a dyn DeviceBackend,
    label: &'a str,
}

impl Endpoint for DataEnd<'_> {
    fn raw_fd(&self) -> RawFd {
        self.fd
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.backend.data_read(self.fd, buf)
    }
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.backend.data_write(self.fd, buf)
    }
    fn pollable(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        self.label.to_string()
    }
}

impl DataFd {
    /// `state` is the state whose entry produced the fd, for messages.
    pub fn new(fd: OwnedFd, backend: Arc<dyn DeviceBackend>, state: DeviceState) -> DataFd {
        let label = format!("{}: data fd {} ({state})", backend.name(), fd.as_raw_fd());
        DataFd { fd: RwLock::new(Some(fd)), backend, label }
    }

    /// A DataFd over any fd, reads and writes being plain syscalls. Exists so
    /// tests can drive the DataFd surface with a pipe; never used for devices.
    pub fn for_testing(fd: OwnedFd) -> DataFd {
        let backend: Arc<dyn DeviceBackend> = Arc::new(PlainBackend { name: format!("testing:fd{}", fd.as_raw_fd()) });
        let label = format!("{}: data fd {}", backend.name(), fd.as_raw_fd());
        DataFd { fd: RwLock::new(Some(fd)), backend, label }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The fd number while open.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.fd.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|f| f.as_raw_fd())
    }

    fn with_fd<T>(&self, call: &str, f: impl FnOnce(RawFd) -> Result<T>) -> Result<T> {
        let g = self.fd.read().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(fd) => f(fd.as_raw_fd()),
            None => Err(VfioError::new(libc::EBADF, call, format!("{}: {call}", self.label), Some("the data fd is closed"))),
        }
    }

    fn err(&self, e: &io::Error, call: &str) -> VfioError {
        let detail = match e.raw_os_error() {
            Some(libc::ENOMSG) => Some("no more data for now: the device is in PRE_COPY and has nothing new"),
            _ => None,
        };
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        VfioError::new(errno, call, format!("{}: {call}", self.label), detail)
    }

    /// Bytes read into `buf`; 0 is the end of the device state (STOP_COPY).
    /// In PRE_COPY a temporary end is the error ENOMSG.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        self.with_fd("read", |fd| self.backend.data_read(fd, buf).map_err(|e| self.err(&e, "read")))
    }

    pub fn write(&self, buf: &[u8]) -> Result<usize> {
        self.with_fd("write", |fd| self.backend.data_write(fd, buf).map_err(|e| self.err(&e, "write")))
    }

    pub fn precopy_info(&self) -> Result<PrecopyInfo> {
        self.with_fd("VFIO_MIG_GET_PRECOPY_INFO", |fd| {
            let mut buf = [0u8; std::mem::size_of::<vfio_precopy_info>()];
            vfio_precopy_info { argsz: buf.len() as u32, ..Default::default() }.write_to(&mut buf);
            self.backend.precopy_info(fd, &mut buf).map_err(|e| self.err(&e, "VFIO_MIG_GET_PRECOPY_INFO"))?;
            let info = vfio_precopy_info::read_from(&buf).expect("buffer is the struct's size");
            Ok(PrecopyInfo { initial_bytes: info.initial_bytes, dirty_bytes: info.dirty_bytes })
        })
    }

    /// poll(2) for `events` (POLLIN/POLLOUT bits); revents, 0 on timeout.
    pub fn poll(&self, events: i16, timeout: Option<Duration>) -> Result<i16> {
        self.with_fd("poll", |fd| sys::poll(fd, events, timeout).map_err(|e| self.err(&e, "poll")))
    }

    /// Closes the fd; later calls fail EBADF. Closing twice is not an error.
    pub fn close(&self) {
        self.fd.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Moves up to `max` bytes from the data fd to `to` (saving side).
    pub fn transfer_to(&self, to: RawFd, max: u64, opts: &Options) -> Result<Stats> {
        self.with_fd("transfer", |fd| {
            let ctx = format!("{}: transfer to fd {to}", self.label);
            sys::check_open(to).map_err(|e| VfioError::from_io(&e, "transfer", &ctx))?;
            let from = DataEnd { fd, backend: &*self.backend, label: &self.label };
            transfer::transfer(&from, &PlainFd(to), max, opts, &ctx)
        })
    }

    /// Moves up to `len` bytes from `from` into the data fd (resuming side).
    pub fn transfer_from(&self, from: RawFd, len: u64, opts: &Options) -> Result<Stats> {
        self.with_fd("transfer", |fd| {
            let ctx = format!("{}: transfer from fd {from}", self.label);
            sys::check_open(from).map_err(|e| VfioError::from_io(&e, "transfer", &ctx))?;
            let to = DataEnd { fd, backend: &*self.backend, label: &self.label };
            transfer::transfer(&PlainFd(from), &to, len, opts, &ctx)
        })
    }
}

/// What [`DataFd::pump_frames`] is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct FrameOptions {
    /// Largest payload of one frame (one read from the data fd).
    pub block_size: usize,
    /// Stop once this much payload is out. Frames are never cut, so the last
    /// one may pass it by less than `block_size`: the same blocks the JS path sends.
    pub max_bytes: u64,
    /// The be64 that opens each frame (QEMU's VFIO_MIG_FLAG_DEV_DATA_STATE).
    pub marker: u64,
    /// Longest wait for either fd to become ready; None waits forever.
    pub idle_timeout: Option<Duration>,
}

/// Largest frame payload accepted: far above any useful block, low enough
/// that a bad argument cannot make the pump allocate without bound.
pub const MAX_FRAME_BLOCK: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStats {
    pub bytes: u64,
    pub frames: u64,
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
        if o.block_size == 0 || o.block_size > MAX_FRAME_BLOCK {
            return Err(VfioError::invalid("pumpFrames", &ctx, &format!("blockSize must be 1..{MAX_FRAME_BLOCK}, got {}", o.block_size)));
        }
        self.with_fd("pumpFrames", |fd| {
            sys::check_open(to).map_err(|e| VfioError::from_io(&e, "pumpFrames", &ctx))?;
            if o.max_bytes > o.block_size as u64 {
                return self.pump_overlapped(fd, to, o, &ctx);
            }
            FRAME_BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                if buf.len() < o.block_size {
                    buf.resize(o.block_size, 0);
                }
                let mut st = FrameStats { bytes: 0, frames: 0, end: transfer::End::Limit };
                while st.bytes < o.max_bytes {
                    let n = match self.read_block(fd, &mut buf[..o.block_size], o, &ctx, st.bytes)? {
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
                    write_frame(to, &header(o.marker, n), &buf[..n], o, &ctx, st.bytes)?;
                    st.bytes += n as u64;
                    st.frames += 1;
                }
                Ok(st)
            })
        })
    }

    /// The same frames with the device and the socket working at once: a
    /// scoped reader thread fills one buffer while this thread writes the
    /// other. The reader applies the limit itself, so it never reads a block
    /// that would not be sent.
    fn pump_overlapped(&self, fd: RawFd, to: RawFd, o: &FrameOptions, ctx: &str) -> Result<FrameStats> {
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
                    let msg = match self.read_block(fd, &mut buf, o, ctx, read) {
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
            let mut st = FrameStats { bytes: 0, frames: 0, end: transfer::End::Limit };
            loop {
                match full_rx.recv() {
                    Ok(Msg::Block(buf, n)) => {
                        // On error, returning drops full_rx and free_tx, which ends the reader.
                        write_frame(to, &header(o.marker, n), &buf[..n], o, ctx, st.bytes)?;
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

fn header(marker: u64, n: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&marker.to_be_bytes());
    h[8..].copy_from_slice(&(n as u64).to_be_bytes());
    h
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
        // SAFETY: both iovecs point into live slices that outlive the call.
        let r = unsafe { libc::writev(to, iov.as_ptr(), cnt) };
        match sys::cvt_size(r) {
            Ok(0) => return Err(fail(&io::Error::from_raw_os_error(libc::EIO), "writev", off)),
            Ok(n) => off += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => wait_writable(to, o.idle_timeout).map_err(|e| match e.raw_os_error() {
                Some(libc::ETIMEDOUT) => VfioError::new(libc::ETIMEDOUT, "poll", format!("{ctx}: after {done} payload bytes"), Some("destination not writable within the idle timeout")),
                _ => fail(&e, "poll", off),
            })?,
            Err(e) => return Err(fail(&e, "writev", off)),
        }
    }
    Ok(())
}

/// Polls in short slices: closing an fd does not wake a poll already
/// sleeping on it, so a stream shut down from the JS thread is noticed here
/// (EBADF) instead of after the whole timeout, or never.
fn wait_writable(to: RawFd, timeout: Option<Duration>) -> io::Result<()> {
    let start = Instant::now();
    loop {
        let r = sys::poll(to, libc::POLLOUT, Some(Duration::from_millis(200)))?;
        if r & libc::POLLNVAL != 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if r != 0 {
            return Ok(()); // POLLHUP/POLLERR: the next writev reports what happened
        }
        sys::check_open(to)?;
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
    }
}

/// Backend of [`DataFd::for_testing`]: data calls are plain syscalls, device
/// calls fail ENOTTY as for a file that is not a device.
struct PlainBackend {
    name: String,
}

impl DeviceBackend for PlainBackend {
    fn device_feature(&self, _buf: &mut [u8]) -> io::Result<i32> {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
    fn get_info(&self, _buf: &mut [u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
    fn reset(&self) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
    fn precopy_info(&self, fd: i32, buf: &mut [u8]) -> io::Result<()> {
        // A pipe answers the real ioctl with ENOTTY, as a non-VFIO fd does.
        sys::ioctl_buf(fd, vfio_uapi::ioctl::VFIO_MIG_GET_PRECOPY_INFO, buf).map(|_| ())
    }
    fn data_read(&self, fd: i32, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(fd, buf)
    }
    fn data_write(&self, fd: i32, buf: &[u8]) -> io::Result<usize> {
        sys::write(fd, buf)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn opts(block: usize, max: u64) -> FrameOptions {
        FrameOptions { block_size: block, max_bytes: max, marker: 0xffff_ffff_ef10_0004, idle_timeout: Some(Duration::from_secs(5)) }
    }

    fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            assert_eq!(u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()), 0xffff_ffff_ef10_0004);
            let n = u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()) as usize;
            out.push(bytes[at + 16..at + 16 + n].to_vec());
            at += 16 + n;
        }
        out
    }

    #[test]
    fn frames_a_pipe_into_a_socket_until_eof() {
        let (r, w) = sys::pipe().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        sys::write(w.as_raw_fd(), &data).unwrap();
        drop(w);
        let d = DataFd::for_testing(r);
        let (a, b) = sys::socketpair().unwrap();
        let st = d.pump_frames(a.as_raw_fd(), &opts(4096, u64::MAX)).unwrap();
        drop(a);
        assert_eq!(st, FrameStats { bytes: 10_000, frames: 3, end: transfer::End::Eof });
        let mut got = Vec::new();
        unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(b)) }.read_to_end(&mut got).unwrap();
        let f = frames(&got);
        assert_eq!(f.iter().map(|x| x.len()).collect::<Vec<_>>(), vec![4096, 4096, 1808]);
        assert_eq!(f.concat(), data);
    }

    #[test]
    fn stops_after_the_block_that_reaches_the_limit_and_refuses_bad_blocks() {
        let (r, w) = sys::pipe().unwrap();
        sys::write(w.as_raw_fd(), &[1u8; 9000]).unwrap();
        let d = DataFd::for_testing(r);
        let (a, _b) = sys::socketpair().unwrap();
        let st = d.pump_frames(a.as_raw_fd(), &opts(4096, 5000)).unwrap();
        assert_eq!((st.bytes, st.frames, st.end), (8192, 2, transfer::End::Limit));
        // One block per call (the sequential path): the 808 bytes the reader left.
        let st = d.pump_frames(a.as_raw_fd(), &opts(4096, 1)).unwrap();
        assert_eq!((st.bytes, st.frames, st.end), (808, 1, transfer::End::Limit));
        let e = d.pump_frames(a.as_raw_fd(), &opts(0, 10)).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        let e = d.pump_frames(-1, &opts(4096, 10)).unwrap_err();
        assert_eq!(e.errno, libc::EBADF);
    }

    #[test]
    fn survives_partial_writes_and_eagain_on_a_full_non_blocking_socket() {
        let (r, w) = sys::pipe().unwrap();
        let data: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        sys::write(w.as_raw_fd(), &data).unwrap();
        drop(w);
        let d = DataFd::for_testing(r);
        let (a, b) = sys::socketpair().unwrap();
        unsafe {
            let small: libc::c_int = 4096;
            libc::setsockopt(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &small as *const _ as *const libc::c_void, 4);
            libc::fcntl(a.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        }
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut got = Vec::new();
            unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(b)) }.read_to_end(&mut got).unwrap();
            got
        });
        let st = d.pump_frames(a.as_raw_fd(), &opts(16384, u64::MAX)).unwrap();
        drop(a);
        assert_eq!((st.bytes, st.frames, st.end), (60_000, 4, transfer::End::Eof));
        let f = frames(&reader.join().unwrap());
        assert_eq!(f.iter().map(|x| x.len()).collect::<Vec<_>>(), vec![16384, 16384, 16384, 10848]);
        assert_eq!(f.concat(), data);
    }

    #[test]
    fn a_closed_peer_fails_the_pump_without_hanging_the_reader() {
        let (r, w) = sys::pipe().unwrap();
        sys::write(w.as_raw_fd(), &[7u8; 20_000]).unwrap();
        let d = DataFd::for_testing(r);
        let (a, b) = sys::socketpair().unwrap();
        drop(b);
        drop(w);
        let e = d.pump_frames(a.as_raw_fd(), &opts(4096, u64::MAX)).unwrap_err();
        assert_eq!(e.errno, libc::EPIPE, "{}", e.message);
    }
}
