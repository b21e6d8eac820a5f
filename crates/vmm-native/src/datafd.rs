//! `DataFd`: the migration data fd as a JS object. It owns the fd; every
//! call runs on a worker thread and `close()` waits for calls in flight.

use crate::channel::js_channel::{target_arg, Target};
use crate::channel::tls_wire::TlsWire;
use crate::error::{blocking, fd_arg, len_arg, ms_arg, u64_arg, Blocking};
use crate::transfer::{options, TransferOptions, TransferStats};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::Arc;
use vfio_core::datafd;
use vfio_core::kernel::VfioError;
use vmm_sys as sys;

#[napi(object)]
pub struct PrecopyInfo {
    pub initial_bytes: BigInt,
    pub dirty_bytes: BigInt,
}

#[napi(object)]
pub struct PollResult {
    pub readable: bool,
    pub writable: bool,
    pub hangup: bool,
    pub error: bool,
    pub timed_out: bool,
}

#[napi(object)]
pub struct PumpFramesOptions {
    /// Largest payload of one frame, one read from the data fd (1..64 MiB).
    pub block_size: u32,
    /// Stop once this much payload went out; the last frame is cut to fit.
    pub max_bytes: f64,
    /// The be64 opening each frame (DATA_STATE, 0xffffffffef100004).
    pub marker: BigInt,
    /// Longest wait for either fd to become ready, in ms; omitted: forever.
    pub idle_timeout_ms: Option<f64>,
    /// false reads the data fd even where splice would work. Default true:
    /// splice where the kernel allows it (a kernel VFIO data fd does not).
    pub allow_splice: Option<bool>,
}

#[napi(object)]
pub struct PumpFramesResult {
    pub bytes: f64,
    pub frames: u32,
    /// Frames whose payload went fd to fd by splice, never entering userspace.
    pub spliced: u32,
    /// 'eof' (end of the state), 'enomsg' (PRE_COPY, nothing more for now)
    /// or 'limit' (maxBytes reached).
    #[napi(ts_type = "'eof' | 'enomsg' | 'limit'")]
    pub end: String,
}

#[napi(object)]
pub struct LoadFramesOptions {
    /// The be64 opening each frame to take (DATA_STATE, 0xffffffffef100004).
    pub marker: BigInt,
    /// Stop at the first frame boundary at or past this much payload; omitted: no limit.
    pub max_bytes: Option<f64>,
    /// Longest wait for the channel to become readable, in ms; omitted: forever.
    pub idle_timeout_ms: Option<f64>,
    /// false writes the data fd even where splice would work.
    pub allow_splice: Option<bool>,
}

#[napi(object)]
pub struct LoadFramesResult {
    /// Payload bytes written into the data fd.
    pub bytes: f64,
    pub frames: u32,
    /// Bytes taken from the channel (headers, payloads, the ending marker).
    pub consumed: f64,
    /// 'marker' (another be64 came next: `next`), 'limit' (maxBytes
    /// reached, at a frame boundary) or 'eof' (the channel ended at a boundary).
    #[napi(ts_type = "'marker' | 'limit' | 'eof'")]
    pub end: String,
    /// The be64 that ended the run, when `end` is 'marker'.
    pub next: Option<BigInt>,
}

impl datafd::FrameWire for TlsWire {
    fn write_all(&self, bufs: &[&[u8]], idle: Option<std::time::Duration>, after: u64) -> vfio_core::kernel::Result<()> {
        TlsWire::write_all(self, bufs, idle, after)
    }

    fn read(&self, buf: &mut [u8], idle: Option<std::time::Duration>, after: u64) -> vfio_core::kernel::Result<usize> {
        TlsWire::read(self, buf, idle, after)
    }
}

#[napi]
pub struct DataFd {
    inner: Arc<datafd::DataFd>,
}

impl DataFd {
    pub(crate) fn wrap(fd: datafd::DataFd) -> DataFd {
        DataFd { inner: Arc::new(fd) }
    }
}

#[napi]
impl DataFd {
    /// TESTING ONLY: a DataFd over a dup of `fd` (a pipe end) whose reads and
    /// writes are plain syscalls; no device behind it.
    #[napi]
    pub fn testing_from_fd(env: Env, fd: i32) -> Result<DataFd> {
        let r = fd_arg(fd, "fd", "dup").and_then(|fd| {
            sys::dup(fd).map_err(|e| VfioError::from_io(&e, "dup", format!("DataFd.testingFromFd: dup fd {fd}")))
        });
        match r {
            Ok(owned) => Ok(DataFd::wrap(datafd::DataFd::for_testing(owned))),
            Err(e) => Err(crate::error::js_error(&env, &e)),
        }
    }

    /// The fd number, or null once closed.
    #[napi(getter)]
    pub fn fd(&self) -> Option<i32> {
        self.inner.raw_fd()
    }

    /// Reads into `buffer`; resolves the bytes read, 0 at the end of the
    /// device state. In PRE_COPY, "nothing more for now" rejects with code ENOMSG.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn read(&self, mut buffer: Buffer) -> AsyncTask<Blocking<u32>> {
        let d = self.inner.clone();
        blocking(move || {
            // A u32 result keeps the count exact; larger reads gain nothing.
            let n = buffer.len().min(u32::MAX as usize);
            Ok(d.read(&mut buffer[..n])? as u32)
        })
    }

    /// Writes `buffer` (RESUMING); resolves the bytes written.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn write(&self, buffer: Buffer) -> AsyncTask<Blocking<u32>> {
        let d = self.inner.clone();
        blocking(move || {
            let n = buffer.len().min(u32::MAX as usize);
            Ok(d.write(&buffer[..n])? as u32)
        })
    }

    /// VFIO_MIG_GET_PRECOPY_INFO.
    #[napi(ts_return_type = "Promise<PrecopyInfo>")]
    pub fn precopy_info(&self) -> AsyncTask<Blocking<PrecopyInfo>> {
        let d = self.inner.clone();
        blocking(move || {
            let i = d.precopy_info()?;
            Ok(PrecopyInfo { initial_bytes: BigInt::from(i.initial_bytes), dirty_bytes: BigInt::from(i.dirty_bytes) })
        })
    }

    /// Waits until the fd is readable (`events` 'in', the default) or
    /// writable ('out'), at most `timeoutMs` (negative or omitted: forever).
    #[napi(ts_args_type = "events?: 'in' | 'out' | 'inout', timeoutMs?: number", ts_return_type = "Promise<PollResult>")]
    pub fn poll(&self, events: Option<String>, timeout_ms: Option<f64>) -> AsyncTask<Blocking<PollResult>> {
        let d = self.inner.clone();
        blocking(move || {
            let ev = match events.as_deref().unwrap_or("in") {
                "in" => libc::POLLIN,
                "out" => libc::POLLOUT,
                "inout" => libc::POLLIN | libc::POLLOUT,
                other => return Err(VfioError::invalid("poll", format!("{}: poll", d.label()), &format!("events must be 'in', 'out' or 'inout', got {other:?}"))),
            };
            // A negative timeout waits forever, as poll(2)'s does.
            let timeout = ms_arg(timeout_ms.filter(|t| *t >= 0.0), "timeoutMs", "poll")?;
            let r = d.poll(ev, timeout)?;
            Ok(PollResult {
                readable: r & libc::POLLIN != 0,
                writable: r & libc::POLLOUT != 0,
                hangup: r & libc::POLLHUP != 0,
                error: r & (libc::POLLERR | libc::POLLNVAL) != 0,
                timed_out: r == 0,
            })
        })
    }

    /// Closes the fd once calls in flight finish; later calls reject EBADF.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<Blocking<()>> {
        let d = self.inner.clone();
        blocking(move || {
            d.close();
            Ok(())
        })
    }

    /// Moves up to `maxBytes` (default: until the end) from the data fd to
    /// `fd`, without passing through JavaScript. Stops early at the end of
    /// the state (end 'eof') or at ENOMSG in PRE_COPY (end 'enomsg').
    #[napi(ts_return_type = "Promise<TransferStats>")]
    pub fn transfer_to(&self, fd: i32, max_bytes: Option<f64>, options_: Option<TransferOptions>) -> AsyncTask<Blocking<TransferStats>> {
        let d = self.inner.clone();
        blocking(move || {
            let fd = fd_arg(fd, "fd", "transfer")?;
            let max = match max_bytes {
                Some(m) => len_arg(m, "maxBytes", "transfer")?,
                None => u64::MAX,
            };
            let opts = options(options_.as_ref())?;
            Ok(TransferStats::from(d.transfer_to(fd, max, &opts)?))
        })
    }

    /// Moves up to `bytes` from `fd` into the data fd (RESUMING), stopping
    /// early if `fd` reaches end of file.
    #[napi(ts_return_type = "Promise<TransferStats>")]
    pub fn transfer_from(&self, fd: i32, bytes: f64, options_: Option<TransferOptions>) -> AsyncTask<Blocking<TransferStats>> {
        let d = self.inner.clone();
        blocking(move || {
            let fd = fd_arg(fd, "fd", "transfer")?;
            let n = len_arg(bytes, "bytes", "transfer")?;
            let opts = options(options_.as_ref())?;
            Ok(TransferStats::from(d.transfer_from(fd, n, &opts)?))
        })
    }

    /// Writes the data fd's bytes to `toFd` as QEMU VFIO frames (be64
    /// marker, be64 size, the bytes), all on a worker thread: spliced fd to
    /// fd where the data fd allows it, else read into reused native buffers.
    /// `toFd` may be a non-blocking socket, or a TLS channel (which hands
    /// out no fd): the frames are then encrypted through its session, on
    /// the worker thread.
    #[napi(ts_args_type = "toFd: number | NativeChannel, opts: PumpFramesOptions", ts_return_type = "Promise<PumpFramesResult>")]
    pub fn pump_frames(&self, to_fd: Unknown<'_>, opts: PumpFramesOptions) -> AsyncTask<Blocking<PumpFramesResult>> {
        let d = self.inner.clone();
        let to = target_arg(to_fd, "toFd", "pumpFrames");
        blocking(move || {
            let to = to?;
            let o = datafd::FrameOptions {
                block_size: opts.block_size as usize,
                max_bytes: len_arg(opts.max_bytes, "maxBytes", "pumpFrames")?,
                marker: u64_arg(&opts.marker, "marker", "pumpFrames")?,
                idle_timeout: ms_arg(opts.idle_timeout_ms, "idleTimeoutMs", "pumpFrames")?,
                allow_splice: opts.allow_splice.unwrap_or(true),
            };
            let st = match &to {
                Target::Fd(fd) => d.pump_frames(*fd, &o)?,
                Target::Tls(w) => d.pump_frames_to(w, "the TLS channel", &o)?,
            };
            Ok(PumpFramesResult { bytes: st.bytes as f64, frames: st.frames.min(u32::MAX as u64) as u32, spliced: st.spliced.min(u32::MAX as u64) as u32, end: st.end.name().to_string() })
        })
    }

    /// Takes frames (be64 marker, be64 size, payload) from `fromFd` while
    /// their marker is `marker` and writes each payload into the data fd
    /// (RESUMING), on a worker thread. Reads nothing past the be64 that ends
    /// the run, which comes back as `next`. `fromFd` may be non-blocking,
    /// or a TLS channel, whose session then decrypts the frames on the
    /// worker thread (what follows them stays there for the channel's reads).
    #[napi(ts_args_type = "fromFd: number | NativeChannel, opts: LoadFramesOptions", ts_return_type = "Promise<LoadFramesResult>")]
    pub fn load_frames(&self, from_fd: Unknown<'_>, opts: LoadFramesOptions) -> AsyncTask<Blocking<LoadFramesResult>> {
        let d = self.inner.clone();
        let from = target_arg(from_fd, "fromFd", "loadFrames");
        blocking(move || {
            let from = from?;
            let o = datafd::LoadFrameOptions {
                marker: u64_arg(&opts.marker, "marker", "loadFrames")?,
                max_bytes: match opts.max_bytes {
                    None => u64::MAX,
                    Some(m) => len_arg(m, "maxBytes", "loadFrames")?,
                },
                idle_timeout: ms_arg(opts.idle_timeout_ms, "idleTimeoutMs", "loadFrames")?,
                allow_splice: opts.allow_splice.unwrap_or(true),
            };
            let st = match &from {
                Target::Fd(fd) => d.load_frames(*fd, &o)?,
                Target::Tls(w) => d.load_frames_from(w, "the TLS channel", &o)?,
            };
            let (end, next) = match st.end {
                datafd::LoadEnd::Marker(m) => ("marker", Some(BigInt::from(m))),
                datafd::LoadEnd::Limit => ("limit", None),
                datafd::LoadEnd::Eof => ("eof", None),
            };
            Ok(LoadFramesResult { bytes: st.bytes as f64, frames: st.frames.min(u32::MAX as u64) as u32, consumed: st.consumed() as f64, end: end.to_string(), next })
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::channel::tls_wire::tests::{drain, fed_pipe, tls_pair};
    use crate::channel::tls_wire::TlsWire;
    use std::time::Duration;
    use vfio_core::datafd::{self, FrameOptions, LoadEnd, LoadFrameOptions};
    use vmm_sys as sys;

    const DATA_STATE: u64 = 0xffff_ffff_ef10_0004;

    /// Device state through a TLS session: frames pumped from one data fd
    /// arrive whole in the other, the be64 after them ends the load and
    /// what follows stays for the channel's reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_cross_a_tls_session_and_stop_at_the_next_marker() {
        let (dst, src) = tls_pair("frames").await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 247) as u8).collect();
        let (r, feeder) = fed_pipe(data.clone());
        let out = TlsWire::of(&src, "pumpFrames").unwrap();
        let pump = std::thread::spawn(move || {
            let d = datafd::DataFd::for_testing(r);
            let o = FrameOptions { block_size: 1 << 20, max_bytes: u64::MAX, marker: DATA_STATE, idle_timeout: Some(Duration::from_secs(5)), allow_splice: true };
            let st = d.pump_frames_to(&out, "the TLS channel", &o).unwrap();
            out.write_all(&[&0xffff_ffff_ef10_0001u64.to_be_bytes(), b"rest"], None, 0).unwrap();
            st
        });
        let (pr, pw) = sys::pipe().unwrap();
        let reader = std::thread::spawn(move || drain(pr));
        let input = TlsWire::of(&dst, "loadFrames").unwrap();
        let d = datafd::DataFd::for_testing(pw);
        let o = LoadFrameOptions { marker: DATA_STATE, max_bytes: u64::MAX, idle_timeout: Some(Duration::from_secs(5)), allow_splice: true };
        let st = d.load_frames_from(&input, "the TLS channel", &o).unwrap();
        feeder.join().unwrap();
        let sent = pump.join().unwrap();
        assert_eq!((sent.bytes, sent.spliced), (3_000_000, 0));
        assert_eq!((st.bytes, st.frames, st.end), (3_000_000, sent.frames, LoadEnd::Marker(0xffff_ffff_ef10_0001)));
        d.close();
        assert!(reader.join().unwrap() == data, "device state differs");
        let mut b = [0u8; 16];
        let n = input.read(&mut b, Some(Duration::from_secs(5)), 0).unwrap();
        assert_eq!(&b[..n], b"rest");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_cut_by_a_close_without_close_notify_fails_the_load() {
        let (dst, src) = tls_pair("frames-cut").await;
        let out = TlsWire::of(&src, "pumpFrames").unwrap();
        let mut head = DATA_STATE.to_be_bytes().to_vec();
        head.extend_from_slice(&100u64.to_be_bytes());
        out.write_all(&[&head, &[1u8; 40]], None, 0).unwrap();
        src.shutdown();
        let (_pr, pw) = sys::pipe().unwrap();
        let d = datafd::DataFd::for_testing(pw);
        let o = LoadFrameOptions { marker: DATA_STATE, max_bytes: u64::MAX, idle_timeout: Some(Duration::from_secs(5)), allow_splice: true };
        let e = d.load_frames_from(&TlsWire::of(&dst, "loadFrames").unwrap(), "the TLS channel", &o).unwrap_err();
        assert_eq!(e.errno, libc::ECONNRESET, "{}", e.message);
        assert!(e.message.contains("truncated"), "{}", e.message);
    }
}

#[cfg(test)]
mod speed {
    use crate::channel::tls_wire::tests::tls_pair;
    use crate::channel::tls_wire::TlsWire;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};
    use vfio_core::datafd::{self, FrameOptions, LoadFrameOptions};
    use vmm_sys as sys;

    const DATA_STATE: u64 = 0xffff_ffff_ef10_0004;
    const TOTAL: usize = 512 << 20;

    /// Not a test: `cargo test --release -p vmm-native speed -- --ignored --nocapture`
    /// prints how fast device state crosses a socket pair, plain and through TLS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn device_state_rate_plain_and_tls() {
        for tls in [false, true] {
            let (dst, src) = tls_pair("speed").await;
            let (a, b) = sys::socketpair().unwrap();
            let (r, w) = sys::pipe().unwrap();
            let feeder = std::thread::spawn(move || {
                let chunk = vec![5u8; 1 << 20];
                let mut left = TOTAL;
                while left > 0 {
                    let n = sys::write(w.as_raw_fd(), &chunk[..left.min(chunk.len())]).unwrap();
                    left -= n;
                }
            });
            let (pr, pw) = sys::pipe().unwrap();
            let drain = std::thread::spawn(move || {
                let mut b = vec![0u8; 1 << 20];
                let mut n = 0;
                loop {
                    match sys::read(pr.as_raw_fd(), &mut b).unwrap() {
                        0 => return n,
                        m => n += m,
                    }
                }
            });
            let start = Instant::now();
            let out = TlsWire::of(&src, "pumpFrames").unwrap();
            let af = a.as_raw_fd();
            let pump = std::thread::spawn(move || {
                let d = datafd::DataFd::for_testing(r);
                let o = FrameOptions { block_size: 1 << 20, max_bytes: u64::MAX, marker: DATA_STATE, idle_timeout: Some(Duration::from_secs(5)), allow_splice: true };
                let st = if tls { d.pump_frames_to(&out, "tls", &o).unwrap() } else { d.pump_frames(af, &o).unwrap() };
                out.write_all(&[&1u64.to_be_bytes()], None, 0).unwrap();
                sys::write(af, &1u64.to_be_bytes()).unwrap();
                st
            });
            let d = datafd::DataFd::for_testing(pw);
            let o = LoadFrameOptions { marker: DATA_STATE, max_bytes: u64::MAX, idle_timeout: Some(Duration::from_secs(5)), allow_splice: true };
            let st = if tls { d.load_frames_from(&TlsWire::of(&dst, "loadFrames").unwrap(), "tls", &o).unwrap() } else { d.load_frames(b.as_raw_fd(), &o).unwrap() };
            d.close();
            let secs = start.elapsed().as_secs_f64();
            feeder.join().unwrap();
            let sent = pump.join().unwrap();
            assert_eq!(drain.join().unwrap(), TOTAL);
            assert_eq!(st.bytes as usize, TOTAL);
            println!("{}: {:.0} MB/s ({secs:.2} s, {} frames)", if tls { "tls" } else { "plain" }, TOTAL as f64 / secs / 1e6, sent.frames);
        }
    }
}
