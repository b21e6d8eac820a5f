//! Guest RAM pages between guest memory and the migration socket, in QEMU's
//! RAM format, on worker threads: `ramSendPages` for RamSaver and
//! `ramLoadPages` for RamLoader (vmm/ram/direct-save.ts, direct-load.ts).
//! Every argument is checked on the JavaScript thread before any work; the
//! typed arrays are held by the task until it settles.

mod decode;
mod encode;
mod mem;
mod sock;

use crate::channel::js_channel::{target_arg, Target};
use crate::channel::tls_wire::TlsWire;
use crate::error::{blocking, js_error, len_arg, Blocking, VResult};
use mem::{GuestMem, PageBits, PAGE};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use sock::Sock;
use std::time::{Duration, Instant};
use vmm_sys::Error as NativeError;

#[napi(object, object_to_js = false)]
pub struct RamSendBlock {
    /// The block's guest memory (read while the guest may write it).
    pub memory: Uint8Array,
    /// The block id (1..255 bytes).
    pub name: Buffer,
    /// Index of the block's page 0 in the bitmap.
    pub first_page: f64,
    pub pages: f64,
}

#[napi(object, object_to_js = false)]
pub struct RamSendOptions {
    pub cursor_block: u32,
    pub cursor_page: f64,
    /// Index of the block named last in this section, -1 for none.
    pub last_sent: i32,
    /// Pages the saver counts as dirty.
    pub max_pages: f64,
    /// Start pages only while fewer bytes than this went out; omitted: no limit.
    pub max_bytes: Option<f64>,
    /// Stop once this long has passed, tested after every 64th page of the round; omitted: never.
    pub time_left_ms: Option<f64>,
    /// Pages the round sent before this call.
    pub round_pages: f64,
    /// Return at every 64th page of the round instead of reading a clock.
    pub stop_at_clock: Option<bool>,
}

#[napi(object)]
pub struct RamSendResult {
    pub normal_pages: f64,
    pub zero_pages: f64,
    /// Bytes written to the socket.
    pub bytes: f64,
    pub cursor_block: u32,
    pub cursor_page: f64,
    pub last_sent: i32,
    #[napi(ts_type = "'pages' | 'exhausted' | 'rate' | 'time' | 'clock'")]
    pub end: String,
}

#[napi(object, object_to_js = false)]
pub struct RamLoadBlock {
    pub memory: Uint8Array,
    pub name: Buffer,
    /// One bit per page of the block (page i: bit i % 8 of byte i / 8),
    /// set for every page applied; untouched by anything else.
    pub received: Option<Uint8Array>,
}

/// A record whose head the caller took and checked, its payload partly read.
#[napi(object, object_to_js = false)]
pub struct RamPendingPage {
    pub block: u32,
    pub offset: f64,
    pub zero: bool,
    /// Payload bytes already in guest memory (0 for a zero page).
    pub got: u32,
    /// Stream offset of the record's first byte.
    pub at: f64,
}

#[napi(object, object_to_js = false)]
pub struct RamLoadOptions {
    /// Index of the last block named, -1 for none.
    pub last: i32,
    /// Stream offset of the socket's next byte.
    pub base: f64,
    pub pending: Option<RamPendingPage>,
}

#[napi(object)]
pub struct RamLoadResult {
    /// Bytes taken from the socket.
    pub consumed: f64,
    pub normal_pages: f64,
    pub zero_pages: f64,
    pub last: i32,
    /// 'eos' (the section's records are done), 'stop' (the next record is
    /// the caller's to read), 'eof', 'truncated' (the stream ended inside a
    /// page) or 'zero-fill' (a zero page whose fill byte is not 0).
    #[napi(ts_type = "'eos' | 'stop' | 'eof' | 'truncated' | 'zero-fill'")]
    pub end: String,
    /// 'truncated' / 'zero-fill': the record's stream offset, block, page offset and kind.
    pub at: Option<f64>,
    pub block: Option<u32>,
    pub offset: Option<f64>,
    pub zero: Option<bool>,
    /// 'truncated': payload bytes of the record that did arrive.
    pub got: Option<u32>,
    /// 'zero-fill': the byte found.
    pub fill: Option<u32>,
}

fn bad(call: &str, what: &str, why: &str) -> NativeError {
    NativeError::invalid(call, format!("{call}: {what}"), why)
}

fn name_arg(name: &[u8], i: usize, call: &str) -> VResult<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(bad(call, &format!("blocks[{i}].name"), &format!("must be 1..255 bytes, got {}", name.len())));
    }
    Ok(())
}

fn memory_arg(memory: &Uint8Array, pages: Option<u64>, i: usize, call: &str) -> VResult<()> {
    let len = memory.len();
    if len == 0 || len & (PAGE - 1) != 0 {
        return Err(bad(call, &format!("blocks[{i}].memory"), &format!("must be a positive multiple of {PAGE} bytes, got {len}")));
    }
    if let Some(p) = pages {
        if (len / PAGE) as u64 != p {
            return Err(bad(call, &format!("blocks[{i}].memory"), &format!("is {len} bytes, pages says {p}")));
        }
    }
    Ok(())
}

fn guest(memory: &mut Uint8Array) -> GuestMem {
    // SAFETY: the typed array lives in the task as long as this is used.
    unsafe {
        let s = memory.as_mut();
        GuestMem::new(s.as_mut_ptr(), s.len())
    }
}

impl encode::Sink for Sock {
    unsafe fn write_all(&mut self, iov: &mut [libc::iovec], after: u64) -> VResult<()> {
        // SAFETY: the iovecs are readable until we return (Sink's contract).
        unsafe { self.writev_all(iov, after) }
    }
}

impl encode::Sink for TlsWire {
    unsafe fn write_all(&mut self, iov: &mut [libc::iovec], after: u64) -> VResult<()> {
        // SAFETY: each iovec is readable for iov_len bytes until we return
        // (Sink's contract), and the slices do not outlive this call.
        let bufs: Vec<&[u8]> = iov.iter().map(|v| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }).collect();
        TlsWire::write_all(self, &bufs, None, after)
    }
}

impl decode::Source for TlsWire {
    fn take(&self, after: u64, f: &mut dyn FnMut(&[u8]) -> usize) -> VResult<usize> {
        TlsWire::take(self, decode::PEEK_SIZE, after, f)
    }

    fn wait_more(&self, have: usize, after: u64) -> VResult<bool> {
        TlsWire::wait_more(self, have, decode::PEEK_SIZE, after)
    }
}

/// The socket's dup, or the TLS channel, a RAM call works on.
enum Wire {
    Sock(Sock),
    Tls(TlsWire),
}

fn wire(target: Unknown<'_>, call: &str) -> VResult<Wire> {
    match target_arg(target, "fd", call)? {
        Target::Fd(fd) => Sock::dup(fd, call).map(Wire::Sock),
        Target::Tls(t) => Ok(Wire::Tls(t)),
    }
}

struct SendJob {
    blocks: Vec<RamSendBlock>,
    layout: Vec<(usize, usize)>,
    bitmap: Uint32Array,
    cursor: encode::Cursor,
    limits: encode::Limits,
    sock: Wire,
}

fn send_job(fd: Unknown<'_>, blocks: Vec<RamSendBlock>, bitmap: Uint32Array, o: RamSendOptions) -> VResult<SendJob> {
    const CALL: &str = "ramSendPages";
    if blocks.is_empty() {
        return Err(bad(CALL, "blocks", "must not be empty"));
    }
    let bits = bitmap.len() as u64 * 32;
    let mut layout = Vec::with_capacity(blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        name_arg(&b.name, i, CALL)?;
        let first = len_arg(b.first_page, &format!("blocks[{i}].firstPage"), CALL)?;
        let pages = len_arg(b.pages, &format!("blocks[{i}].pages"), CALL)?;
        memory_arg(&b.memory, Some(pages), i, CALL)?;
        if first + pages > bits {
            return Err(bad(CALL, &format!("blocks[{i}]"), &format!("pages {first}..{} lie past the bitmap's {bits} bits", first + pages)));
        }
        layout.push((first as usize, pages as usize));
    }
    let cb = o.cursor_block as usize;
    if cb >= blocks.len() {
        return Err(bad(CALL, "cursorBlock", &format!("must be below {}, got {cb}", blocks.len())));
    }
    let cp = len_arg(o.cursor_page, "cursorPage", CALL)? as usize;
    if cp > layout[cb].1 {
        return Err(bad(CALL, "cursorPage", &format!("must be at most {}, got {cp}", layout[cb].1)));
    }
    if o.last_sent < -1 || o.last_sent >= blocks.len() as i32 {
        return Err(bad(CALL, "lastSent", &format!("must be -1..{}, got {}", blocks.len() - 1, o.last_sent)));
    }
    let deadline = match o.time_left_ms {
        None => None,
        Some(t) if t.is_finite() => Some(Instant::now() + Duration::from_secs_f64(t.max(0.0) / 1000.0)),
        Some(t) => return Err(bad(CALL, "timeLeftMs", &format!("must be a finite number, got {t}"))),
    };
    let limits = encode::Limits {
        max_pages: len_arg(o.max_pages, "maxPages", CALL)?,
        max_bytes: o.max_bytes.map(|m| len_arg(m, "maxBytes", CALL)).transpose()?,
        deadline,
        round_pages: len_arg(o.round_pages, "roundPages", CALL)?,
        stop_at_clock: o.stop_at_clock.unwrap_or(false),
    };
    let cursor = encode::Cursor { block: cb, page: cp, last_sent: usize::try_from(o.last_sent).ok() };
    let sock = wire(fd, CALL)?;
    Ok(SendJob { blocks, layout, bitmap, cursor, limits, sock })
}

fn run_send(mut j: SendJob) -> VResult<RamSendResult> {
    let mems: Vec<GuestMem> = j.blocks.iter_mut().map(|b| guest(&mut b.memory)).collect();
    let blocks: Vec<encode::Block> = j
        .blocks
        .iter()
        .zip(&mems)
        .zip(&j.layout)
        .map(|((b, &mem), &(first_page, pages))| encode::Block { mem, name: &b.name, first_page, pages })
        .collect();
    // SAFETY: the saver does not touch its bitmap until this call settles.
    let words = unsafe { j.bitmap.as_mut() };
    let sink: &mut dyn encode::Sink = match &mut j.sock {
        Wire::Sock(s) => s,
        Wire::Tls(t) => t,
    };
    let s = encode::send(&blocks, words, &mut j.cursor, &j.limits, sink)?;
    Ok(RamSendResult {
        normal_pages: s.normal as f64,
        zero_pages: s.zero as f64,
        bytes: s.bytes as f64,
        cursor_block: j.cursor.block as u32,
        cursor_page: j.cursor.page as f64,
        last_sent: j.cursor.last_sent.map_or(-1, |b| b as i32),
        end: s.end.name().to_string(),
    })
}

/// Sends dirty pages from guest memory to the socket `fd` as QEMU RAM
/// records, clearing their bits in `bitmap` (RamSaver's send bitmap), until
/// `maxPages` went, the bitmap has none left, `maxBytes` is reached or the
/// time is up. The socket must have nothing queued by the caller. A TLS
/// channel is passed as itself (it hands out no fd): the records are then
/// encrypted through its session on the worker thread.
#[napi(ts_args_type = "fd: number | NativeChannel, blocks: Array<RamSendBlock>, bitmap: Uint32Array, options: RamSendOptions", ts_return_type = "Promise<RamSendResult>")]
pub fn ram_send_pages(env: Env, fd: Unknown<'_>, blocks: Vec<RamSendBlock>, bitmap: Uint32Array, options: RamSendOptions) -> Result<AsyncTask<Blocking<RamSendResult>>> {
    match send_job(fd, blocks, bitmap, options) {
        Ok(j) => Ok(blocking(move || run_send(j))),
        Err(e) => Err(js_error(&env, &e)),
    }
}

struct LoadJob {
    blocks: Vec<RamLoadBlock>,
    state: decode::State,
    base: u64,
    sock: Wire,
}

fn load_job(fd: Unknown<'_>, blocks: Vec<RamLoadBlock>, o: RamLoadOptions) -> VResult<LoadJob> {
    const CALL: &str = "ramLoadPages";
    if blocks.is_empty() {
        return Err(bad(CALL, "blocks", "must not be empty"));
    }
    for (i, b) in blocks.iter().enumerate() {
        name_arg(&b.name, i, CALL)?;
        memory_arg(&b.memory, None, i, CALL)?;
        if let Some(r) = &b.received {
            let need = (b.memory.len() / PAGE).div_ceil(8);
            if r.len() < need {
                return Err(bad(CALL, &format!("blocks[{i}].received"), &format!("must have {need} bytes for the block's pages, has {}", r.len())));
            }
        }
    }
    if o.last < -1 || o.last >= blocks.len() as i32 {
        return Err(bad(CALL, "last", &format!("must be -1..{}, got {}", blocks.len() - 1, o.last)));
    }
    let base = len_arg(o.base, "base", CALL)?;
    let pending = match o.pending {
        None => None,
        Some(p) => {
            let block = p.block as usize;
            if block >= blocks.len() {
                return Err(bad(CALL, "pending.block", &format!("must be below {}, got {block}", blocks.len())));
            }
            let offset = len_arg(p.offset, "pending.offset", CALL)? as usize;
            let len = blocks[block].memory.len();
            if offset & (PAGE - 1) != 0 || offset > len - PAGE {
                return Err(bad(CALL, "pending.offset", &format!("must be a page of the block's {len} bytes, got {offset}")));
            }
            let got = p.got as usize;
            if got >= PAGE || (p.zero && got != 0) {
                return Err(bad(CALL, "pending.got", &format!("must be below {} for a {} page, got {got}", if p.zero { 1 } else { PAGE }, if p.zero { "zero" } else { "data" })));
            }
            Some(decode::Pending { block, offset, zero: p.zero, got, at: len_arg(p.at, "pending.at", CALL)? })
        }
    };
    let sock = wire(fd, CALL)?;
    let state = decode::State { last: usize::try_from(o.last).ok(), pending, normal: 0, zero: 0 };
    Ok(LoadJob { blocks, state, base, sock })
}

fn run_load(mut j: LoadJob) -> VResult<RamLoadResult> {
    let mems: Vec<GuestMem> = j.blocks.iter_mut().map(|b| guest(&mut b.memory)).collect();
    let received: Vec<Option<PageBits>> = j
        .blocks
        .iter_mut()
        .map(|b| {
            b.received.as_mut().map(|r| {
                // SAFETY: the typed array is held by the job until it ends, and
                // the loader leaves it alone until this call settles.
                let bytes = unsafe { r.as_mut() };
                // SAFETY: the pointer and length describe those live bytes.
                unsafe { PageBits::new(bytes.as_mut_ptr(), bytes.len()) }
            })
        })
        .collect();
    let blocks: Vec<decode::Block> = j
        .blocks
        .iter()
        .zip(&mems)
        .zip(&received)
        .map(|((b, &mem), &received)| decode::Block { mem, name: &b.name, received })
        .collect();
    let source: &dyn decode::Source = match &j.sock {
        Wire::Sock(s) => s,
        Wire::Tls(t) => t,
    };
    let (consumed, end) = decode::load(source, &blocks, &mut j.state, j.base)?;
    let st = &j.state;
    // A failed record is the one still pending.
    let p = st.pending;
    let (name, at, block, offset, fill) = match end {
        decode::End::Eos => ("eos", None, None, None, None),
        decode::End::Stop => ("stop", None, None, None, None),
        decode::End::Eof => ("eof", None, None, None, None),
        decode::End::Truncated => ("truncated", p.map(|p| p.at as f64), p.map(|p| p.block as u32), p.map(|p| p.offset as f64), None),
        decode::End::ZeroFill { ch } => ("zero-fill", p.map(|p| p.at as f64), p.map(|p| p.block as u32), p.map(|p| p.offset as f64), Some(ch as u32)),
    };
    Ok(RamLoadResult {
        consumed: consumed as f64,
        normal_pages: st.normal as f64,
        zero_pages: st.zero as f64,
        last: st.last.map_or(-1, |b| b as i32),
        end: name.to_string(),
        at,
        block,
        offset,
        zero: p.filter(|_| at.is_some()).map(|p| p.zero),
        got: p.filter(|_| at.is_some()).map(|p| p.got as u32),
        fill,
    })
}

/// Reads RAM records from the socket `fd` into the blocks' memory until EOS
/// or a record it leaves to the caller (which stays in the socket). Takes
/// nothing past the records it applied; `pending` finishes a record whose
/// head the caller already took. A TLS channel is passed as itself: records
/// are decrypted on the worker thread, and those left for the caller stay
/// in the session's look-ahead, which the channel's next read returns first.
#[napi(ts_args_type = "fd: number | NativeChannel, blocks: Array<RamLoadBlock>, options: RamLoadOptions", ts_return_type = "Promise<RamLoadResult>")]
pub fn ram_load_pages(env: Env, fd: Unknown<'_>, blocks: Vec<RamLoadBlock>, options: RamLoadOptions) -> Result<AsyncTask<Blocking<RamLoadResult>>> {
    match load_job(fd, blocks, options) {
        Ok(j) => Ok(blocking(move || run_load(j))),
        Err(e) => Err(js_error(&env, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::tls_wire::tests::tls_pair;
    use crate::channel::tls_wire::TlsWire;

    /// RAM records through a TLS session both ways: the encoder's sink
    /// encrypts, the decoder peeks the decrypted look-ahead, and the record
    /// it leaves for RamLoader is what the channel's next read returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_cross_a_tls_session_and_what_the_decoder_leaves_is_read_next() {
        let (dst, src) = tls_pair("ram").await;
        let pages = 600;
        let mut ram: Vec<u8> = (0..pages * PAGE).map(|i| (i / PAGE * 7 + i % 13) as u8).collect();
        ram[5 * PAGE..6 * PAGE].fill(0);
        let expect = ram.clone();
        let mut out = TlsWire::of(&src, "ramSendPages").unwrap();
        let sender = std::thread::spawn(move || {
            // SAFETY: `ram` outlives the send, which is all this block does.
            let mem = unsafe { GuestMem::new(ram.as_mut_ptr(), ram.len()) };
            let blocks = [encode::Block { mem, name: b"pc.ram", first_page: 0, pages }];
            let mut words = vec![!0u32; pages.div_ceil(32)];
            let mut cur = encode::Cursor { block: 0, page: 0, last_sent: None };
            let lim = encode::Limits { max_pages: pages as u64, max_bytes: None, deadline: None, round_pages: 0, stop_at_clock: false };
            let s = encode::send(&blocks, &mut words, &mut cur, &lim, &mut out).unwrap();
            // A MEM_SIZE record: not the decoder's, RamLoader's.
            out.write_all(&[&(8u64 << 20 | 0x04).to_be_bytes(), b"tail"], None, s.bytes).unwrap();
            s
        });
        let mut mem = vec![1u8; pages * PAGE];
        // SAFETY: `mem` outlives the load.
        let blocks = [decode::Block { mem: unsafe { GuestMem::new(mem.as_mut_ptr(), mem.len()) }, name: b"pc.ram", received: None }];
        let mut st = decode::State::default();
        let input = TlsWire::of(&dst, "ramLoadPages").unwrap();
        let (consumed, end) = decode::load(&input, &blocks, &mut st, 0).unwrap();
        let sent = sender.join().unwrap();
        assert_eq!((end, consumed), (decode::End::Stop, sent.bytes));
        assert_eq!((st.normal, st.zero), (sent.normal, sent.zero));
        assert_eq!(st.zero, 1);
        assert!(mem == expect, "guest memory differs");
        let mut rest = vec![0u8; 64];
        let mut got = Vec::new();
        while got.len() < 12 {
            let n = input.read(&mut rest, Some(Duration::from_secs(5)), 0).unwrap();
            got.extend_from_slice(&rest[..n]);
        }
        assert_eq!(&got[..8], &(8u64 << 20 | 0x04).to_be_bytes());
        assert_eq!(&got[8..], b"tail");
    }
}
