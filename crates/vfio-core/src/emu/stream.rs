//! The emulated device's migration stream (its own format, like any
//! vendor's): a header, DATA records carrying whole regions, one END record.
//! All integers little-endian.
//!
//! ```text
//! header (64): magic u64 | version u32 | flags u32 | state_size u64 |
//!              region_size u32 | regions u32 | seed u64 | reserved 16 |
//!              check u64 (mix of bytes 0..56)
//! record (56 + len): tag u32 | region u32 | generation u32 | len u32 |
//!              hash [32] = blake3(region | len | payload) | check u64 (mix of bytes 0..48)
//!              then `len` payload bytes
//! END record: tag 2, region = regions, len 16, payload = records u64 | bytes u64
//!              (the DATA record count and the stream length before END)
//! ```
//! A region may appear several times (pre-copy sends it again when it was
//! dirtied); the last copy wins. The destination never stores payloads: it
//! checks each record's hash as the bytes arrive and keeps it as the
//! region's hash, so judging a complete image takes O(1).
//! Version 2: BLAKE3 record hashes and counter-based content (version 1,
//! SHA-256, is refused like any unknown version).

use super::content::{region_hasher, start_region, Layout};
use super::hash::{finish, Hasher};

/// First 8 bytes of a stream.
pub const MAGIC: u64 = 0x7646_494f_454d_5531; // "1UMEOIFv" in memory
/// Stream format version.
pub const VERSION: u32 = 2;
/// Bytes of the stream header.
pub const HEADER_LEN: usize = 64;
/// Bytes of a record header (tag, region, generation, length, hash).
pub const RECORD_HDR_LEN: usize = 56;
/// Record tag: a region's contents.
pub const TAG_DATA: u32 = 1;
/// Record tag: the end of the stream.
pub const TAG_END: u32 = 2;
/// Bytes of the END record's payload.
pub const END_PAYLOAD_LEN: usize = 16;
/// Bytes of the whole END record.
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

/// Bytes of a DATA record with `payload` bytes.
pub fn record_len(payload: u32) -> u64 {
    RECORD_HDR_LEN as u64 + payload as u64
}

/// Bytes of the DATA records of regions `first..` (one copy each).
pub fn records_len(layout: Layout, first: u32) -> u64 {
    let n = layout.regions();
    if first >= n {
        return 0;
    }
    let payload = layout.state_size - first as u64 * layout.region_size as u64;
    (n - first) as u64 * RECORD_HDR_LEN as u64 + payload
}

/// Bytes of a full image of `layout` (header, every region once, END).
pub fn full_len(layout: Layout) -> u64 {
    HEADER_LEN as u64 + layout.regions() as u64 * RECORD_HDR_LEN as u64 + layout.state_size + END_LEN
}

/// Appends the stream header for `layout` and `seed`.
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

/// A record header, for writing in front of a payload already in place.
pub fn record_hdr(tag: u32, region: u32, gen: u32, len: u32, hash: &[u8; 32]) -> [u8; RECORD_HDR_LEN] {
    let mut b = [0u8; RECORD_HDR_LEN];
    for (k, v) in [tag, region, gen, len].into_iter().enumerate() {
        b[k * 4..k * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    b[16..48].copy_from_slice(hash);
    let m = mix(&b[..48]);
    b[48..].copy_from_slice(&m.to_le_bytes());
    b
}

/// Appends a record header.
pub fn encode_record_hdr(tag: u32, region: u32, gen: u32, len: u32, hash: &[u8; 32], out: &mut Vec<u8>) {
    out.extend_from_slice(&record_hdr(tag, region, gen, len, hash));
}

/// Appends the END record, which counts what came before it.
pub fn encode_end(regions: u32, records: u64, bytes_before: u64, out: &mut Vec<u8>) {
    let mut payload = [0u8; END_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&records.to_le_bytes());
    payload[8..].copy_from_slice(&bytes_before.to_le_bytes());
    let mut h = region_hasher(regions, END_PAYLOAD_LEN as u32);
    h.update(&payload);
    encode_record_hdr(TAG_END, regions, 0, END_PAYLOAD_LEN as u32, &finish(&h), out);
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
    /// The header does not match this device (EINVAL).
    BadHeader(String),
    /// A record is malformed or fails its hash (EINVAL).
    Corrupt(String),
}

impl Reject {
    /// The errno a driver would answer.
    pub fn errno(&self) -> i32 {
        match self {
            Reject::BadHeader(_) => libc::EFAULT,
            Reject::Corrupt(_) => libc::EINVAL,
        }
    }
    /// Why, in words.
    pub fn message(&self) -> &str {
        match self {
            Reject::BadHeader(m) | Reject::Corrupt(m) => m,
        }
    }
}

enum Phase {
    Header,
    RecordHdr,
    Payload { tag: u32, region: u32, gen: u32, len: u32, left: u32, hash: [u8; 32] },
    Done,
}

/// The destination's incremental parser: bytes in any segmentation, state
/// out as per-region (generation, hash). Every check happens as the bytes
/// arrive, so the verdict on a complete image is ready without a pass over
/// the state.
pub struct Loader {
    expect: Layout,
    phase: Phase,
    acc: Vec<u8>,
    /// The running hash of the payload being received (reset per record).
    h: Box<Hasher>,
    end_payload: Vec<u8>,
    end_at: u64,
    /// The source device's content seed, from the header.
    pub seed: u64,
    /// Each region's generation as loaded.
    pub gens: Vec<u32>,
    /// `(generation, hash)` of the last good record of each region: the
    /// device's content bookkeeping as is, so installing an image is a move.
    pub hashes: Vec<Option<(u32, [u8; 32])>>,
    /// Regions with no good record yet.
    missing: usize,
    /// Bytes fed so far.
    pub bytes: u64,
    /// Records applied so far.
    pub records: u64,
    /// The first rejection; once set, further input is ignored.
    pub error: Option<Reject>,
}

impl Loader {
    /// A loader for a device whose layout is `expect`.
    pub fn new(expect: Layout) -> Loader {
        let n = expect.regions() as usize;
        Loader {
            expect,
            phase: Phase::Header,
            acc: Vec::with_capacity(RECORD_HDR_LEN),
            h: Box::new(Hasher::new()),
            end_payload: Vec::new(),
            end_at: 0,
            seed: 0,
            gens: vec![0; n],
            hashes: vec![None; n],
            missing: n,
            bytes: 0,
            records: 0,
            error: None,
        }
    }

    /// The header's rejection, once the header is in.
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

    /// Parses `data`, which may cut records anywhere.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() {
            let offset = self.bytes;
            match &mut self.phase {
                Phase::Header | Phase::RecordHdr => {
                    let want = if matches!(self.phase, Phase::Header) { HEADER_LEN } else { RECORD_HDR_LEN };
                    if self.acc.is_empty() && data.len() >= want {
                        // The common case: the whole header is in this piece.
                        let (hdr, rest) = data.split_at(want);
                        data = rest;
                        self.bytes += want as u64;
                        if want == HEADER_LEN {
                            self.header(hdr);
                        } else {
                            self.record_hdr(hdr, offset);
                        }
                        continue;
                    }
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
                Phase::Payload { tag, region, gen, len, left, hash } => {
                    let take = (*left as usize).min(data.len());
                    self.h.update(&data[..take]);
                    if *tag == TAG_END {
                        self.end_payload.extend_from_slice(&data[..take]);
                    }
                    *left -= take as u32;
                    data = &data[take..];
                    self.bytes += take as u64;
                    if *left == 0 {
                        let (tag, region, gen, len, hash) = (*tag, *region, *gen, *len, *hash);
                        self.phase = Phase::RecordHdr;
                        let got = finish(&self.h);
                        if got != hash {
                            self.fail(Reject::Corrupt(format!(
                                "record for region {region} (generation {gen}, {len} bytes) fails its hash"
                            )));
                        } else if tag == TAG_DATA {
                            let slot = &mut self.hashes[region as usize];
                            if slot.is_none() {
                                self.missing -= 1;
                            }
                            *slot = Some((gen, got));
                            self.gens[region as usize] = gen;
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
        start_region(&mut self.h, region, len);
        self.phase = Phase::Payload { tag, region, gen, len, left: len, hash };
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

    /// The verdict when leaving RESUMING, O(1): everything was judged as it
    /// arrived.
    pub fn finish(&self) -> Result<(), Reject> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.phase {
            Phase::Done => {}
            _ => return Err(Reject::Corrupt(format!("image truncated after {} bytes (no END record)", self.bytes))),
        }
        if self.missing > 0 {
            // Only on a refused image: the scan names the first gap.
            let i = self.hashes.iter().position(|h| h.is_none()).unwrap_or(0);
            return Err(Reject::Corrupt(format!("region {i} never received ({} missing)", self.missing)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_len_is_the_sum_of_the_records() {
        for (state_size, region_size) in [(0u64, 4096u32), (1, 4096), (4096, 4096), (4097, 4096), (10 * 4096 + 5, 4096)] {
            let l = Layout { state_size, region_size };
            for first in 0..=l.regions() + 1 {
                let sum: u64 = (first..l.regions()).map(|i| record_len(l.region_len(i))).sum();
                assert_eq!(records_len(l, first), sum, "{l:?} from {first}");
            }
            assert_eq!(full_len(l), HEADER_LEN as u64 + records_len(l, 0) + END_LEN);
        }
    }
}
