//! The emulated device's migration stream (its own format, like any
//! vendor's): a header, DATA records carrying whole regions, one END record.
//! All integers little-endian.
//!
//! ```text
//! header (64): magic u64 | version u32 | flags u32 | state_size u64 |
//!              region_size u32 | regions u32 | seed u64 | reserved 16 |
//!              check u64 (mix of bytes 0..56)
//! record (56 + len): tag u32 | region u32 | generation u32 | len u32 |
//!              hash [32] = sha256(region | len | payload) | check u64 (mix of bytes 0..48)
//!              then `len` payload bytes
//! END record: tag 2, region = regions, len 16, payload = records u64 | bytes u64
//!              (the DATA record count and the stream length before END)
//! ```
//! A region may appear several times (pre-copy sends it again when it was
//! dirtied); the last copy wins. The destination never stores payloads: it
//! checks each record's hash and keeps it as the region's hash.

use super::content::{region_hasher, Layout};
use super::sha256::Sha256;

pub const MAGIC: u64 = 0x7646_494f_454d_5531; // "1UMEOIFv" in memory
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const RECORD_HDR_LEN: usize = 56;
pub const TAG_DATA: u32 = 1;
pub const TAG_END: u32 = 2;
pub const END_PAYLOAD_LEN: usize = 16;
pub const END_LEN: u64 = (RECORD_HDR_LEN + END_PAYLOAD_LEN) as u64;

/// A cheap mix protecting the fixed-size headers (the payload has its hash).
pub fn mix(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x1000_0000_01b3).rotate_left(29);
    }
    h
}

pub fn record_len(payload: u32) -> u64 {
    RECORD_HDR_LEN as u64 + payload as u64
}

/// Bytes of a full image of `layout` (header, every region once, END).
pub fn full_len(layout: Layout) -> u64 {
    HEADER_LEN as u64 + layout.regions() as u64 * RECORD_HDR_LEN as u64 + layout.state_size + END_LEN
}

pub fn encode_header(layout: Layout, seed: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&layout.state_size.to_le_bytes());
    out.extend_from_slice(&layout.region_size.to_le_bytes());
    out.extend_from_slice(&layout.regions().to_le_bytes());
    out.extend_from_slice(&seed.to_le_bytes());
    out.extend_from_slice(&[0u8; 16]);
    let m = mix(&out[start..start + 56]);
    out.extend_from_slice(&m.to_le_bytes());
}

pub fn encode_record_hdr(tag: u32, region: u32, gen: u32, len: u32, hash: &[u8; 32], out: &mut Vec<u8>) {
    let start = out.len();
    for v in [tag, region, gen, len] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(hash);
    let m = mix(&out[start..start + 48]);
    out.extend_from_slice(&m.to_le_bytes());
}

pub fn encode_end(regions: u32, records: u64, bytes_before: u64, out: &mut Vec<u8>) {
    let mut payload = [0u8; END_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&records.to_le_bytes());
    payload[8..].copy_from_slice(&bytes_before.to_le_bytes());
    let mut h = region_hasher(regions, END_PAYLOAD_LEN as u32);
    h.update(&payload);
    encode_record_hdr(TAG_END, regions, 0, END_PAYLOAD_LEN as u32, &h.finish(), out);
    out.extend_from_slice(&payload);
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Why an image was refused. `BadHeader` is what mtty answers EFAULT for
/// (wrong magic, version, flags or a device of another shape); everything
/// else is an incomplete or damaged image (EINVAL when leaving RESUMING).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    BadHeader(String),
    Corrupt(String),
}

impl Reject {
    pub fn errno(&self) -> i32 {
        match self {
            Reject::BadHeader(_) => libc::EFAULT,
            Reject::Corrupt(_) => libc::EINVAL,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            Reject::BadHeader(m) | Reject::Corrupt(m) => m,
        }
    }
}

enum Phase {
    Header,
    RecordHdr,
    Payload { tag: u32, region: u32, gen: u32, len: u32, left: u32, hash: [u8; 32], h: Box<Sha256> },
    Done,
}

/// The destination's incremental parser: bytes in any segmentation, state
/// out as per-region (generation, hash).
pub struct Loader {
    expect: Layout,
    phase: Phase,
    acc: Vec<u8>,
    end_payload: Vec<u8>,
    end_at: u64,
    pub seed: u64,
    pub gens: Vec<u32>,
    pub hashes: Vec<Option<[u8; 32]>>,
    pub bytes: u64,
    pub records: u64,
    pub error: Option<Reject>,
}

impl Loader {
    pub fn new(expect: Layout) -> Loader {
        let n = expect.regions() as usize;
        Loader {
            expect,
            phase: Phase::Header,
            acc: Vec::with_capacity(RECORD_HDR_LEN),
            end_payload: Vec::new(),
            end_at: 0,
            seed: 0,
            gens: vec![0; n],
            hashes: vec![None; n],
            bytes: 0,
            records: 0,
            error: None,
        }
    }

    pub fn header_error(&self) -> Option<&Reject> {
        match &self.error {
            Some(r @ Reject::BadHeader(_)) => Some(r),
            _ => None,
        }
    }

    fn fail(&mut self, r: Reject) {
        if self.error.is_none() {
            self.error = Some(r);
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() {
            let offset = self.bytes;
            match &mut self.phase {
                Phase::Header | Phase::RecordHdr => {
                    let want = if matches!(self.phase, Phase::Header) { HEADER_LEN } else { RECORD_HDR_LEN };
                    let take = (want - self.acc.len()).min(data.len());
                    self.acc.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.bytes += take as u64;
                    if self.acc.len() == want {
                        let acc = std::mem::take(&mut self.acc);
                        if want == HEADER_LEN {
                            self.header(&acc);
                        } else {
                            self.record_hdr(&acc, offset + take as u64 - want as u64);
                        }
                        self.acc = acc;
                        self.acc.clear();
                    }
                }
                Phase::Payload { tag, region, gen, len, left, hash, h } => {
                    let take = (*left as usize).min(data.len());
                    h.update(&data[..take]);
                    if *tag == TAG_END {
                        self.end_payload.extend_from_slice(&data[..take]);
                    }
                    *left -= take as u32;
                    data = &data[take..];
                    self.bytes += take as u64;
                    if *left == 0 {
                        let (tag, region, gen, len, hash) = (*tag, *region, *gen, *len, *hash);
                        let Phase::Payload { h, .. } = std::mem::replace(&mut self.phase, Phase::RecordHdr) else {
                            unreachable!()
                        };
                        let got = h.finish();
                        if got != hash {
                            self.fail(Reject::Corrupt(format!(
                                "record for region {region} (generation {gen}, {len} bytes) fails its hash"
                            )));
                        } else if tag == TAG_DATA {
                            self.gens[region as usize] = gen;
                            self.hashes[region as usize] = Some(got);
                            self.records += 1;
                        } else {
                            self.end();
                        }
                    }
                }
                Phase::Done => {
                    self.fail(Reject::Corrupt(format!("{} bytes after the END record", data.len())));
                    return;
                }
            }
        }
    }

    fn header(&mut self, b: &[u8]) {
        let magic = u64_at(b, 0);
        let version = u32_at(b, 8);
        let flags = u32_at(b, 12);
        let size = u64_at(b, 16);
        let rsize = u32_at(b, 24);
        let regions = u32_at(b, 28);
        if magic != MAGIC {
            return self.fail(Reject::BadHeader(format!("bad magic {magic:#018x}, expected {MAGIC:#018x}")));
        }
        if version != VERSION || flags != 0 {
            return self.fail(Reject::BadHeader(format!("unsupported version {version} flags {flags:#x}")));
        }
        if mix(&b[..56]) != u64_at(b, 56) {
            return self.fail(Reject::BadHeader("header checksum mismatch".into()));
        }
        if size != self.expect.state_size || rsize != self.expect.region_size || regions != self.expect.regions() {
            return self.fail(Reject::BadHeader(format!(
                "image of a {size}-byte device ({regions} regions of {rsize}), this device holds {} bytes ({} regions of {})",
                self.expect.state_size,
                self.expect.regions(),
                self.expect.region_size
            )));
        }
        self.seed = u64_at(b, 32);
        self.phase = Phase::RecordHdr;
    }

    fn record_hdr(&mut self, b: &[u8], at: u64) {
        let tag = u32_at(b, 0);
        let region = u32_at(b, 4);
        let gen = u32_at(b, 8);
        let len = u32_at(b, 12);
        if mix(&b[..48]) != u64_at(b, 48) {
            return self.fail(Reject::Corrupt(format!("record header at stream offset {at} fails its check")));
        }
        let ok = match tag {
            TAG_DATA => region < self.expect.regions() && len == self.expect.region_len(region),
            TAG_END => region == self.expect.regions() && len as usize == END_PAYLOAD_LEN,
            _ => false,
        };
        if !ok {
            return self.fail(Reject::Corrupt(format!(
                "record at stream offset {at}: tag {tag} region {region} length {len} does not fit this device"
            )));
        }
        let hash: [u8; 32] = b[16..48].try_into().unwrap();
        if tag == TAG_END {
            self.end_at = at;
        }
        self.phase = Phase::Payload { tag, region, gen, len, left: len, hash, h: Box::new(region_hasher(region, len)) };
    }

    fn end(&mut self) {
        let records = u64::from_le_bytes(self.end_payload[..8].try_into().unwrap());
        let before = u64::from_le_bytes(self.end_payload[8..16].try_into().unwrap());
        if records != self.records || before != self.end_at {
            return self.fail(Reject::Corrupt(format!(
                "END says {records} records in {before} bytes, received {} records in {} bytes",
                self.records, self.end_at
            )));
        }
        self.phase = Phase::Done;
    }

    /// The verdict when leaving RESUMING.
    pub fn finish(&self) -> Result<(), Reject> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.phase {
            Phase::Done => {}
            _ => return Err(Reject::Corrupt(format!("image truncated after {} bytes (no END record)", self.bytes))),
        }
        if let Some(i) = self.hashes.iter().position(|h| h.is_none()) {
            return Err(Reject::Corrupt(format!("region {i} never received")));
        }
        Ok(())
    }
}
