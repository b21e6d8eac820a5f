//! The device state, without holding it: `state_size` bytes cut into regions,
//! region `i` at generation `g` holding bytes that are a pure function of
//! (seed, i, g). Dirtying bumps a generation; only generations and the hash
//! of each region's current bytes are kept.

use super::hash::{finish, Hasher};

/// Bytes of one state region unless configured otherwise.
pub const DEFAULT_REGION_SIZE: u32 = 64 * 1024;
/// Bounds the per-region bookkeeping (a few dozen bytes each).
pub const MAX_REGIONS: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub state_size: u64,
    pub region_size: u32,
}

impl Layout {
    pub fn regions(&self) -> u32 {
        self.state_size.div_ceil(self.region_size as u64) as u32
    }

    pub fn region_len(&self, i: u32) -> u32 {
        let start = i as u64 * self.region_size as u64;
        (self.state_size - start).min(self.region_size as u64) as u32
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// wyrand's output mix: one 64x64->128 multiply folded to 64 bits.
fn wymix(x: u64) -> u64 {
    let m = (x as u128) * ((x ^ 0xe703_7ed1_a0b4_28db) as u128);
    (m as u64) ^ ((m >> 64) as u64)
}

const WY_STEP: u64 = 0xa076_1d64_78bd_642f;

/// Fills `out` with region `region`'s bytes at generation `gen`.
/// Counter-based (word k is a pure function of the key and k), so words
/// carry no dependency on each other and the loop runs at several bytes
/// per cycle instead of waiting on a serial xorshift chain.
pub fn fill(seed: u64, region: u32, gen: u32, out: &mut [u8]) {
    let key = splitmix(seed ^ splitmix(((region as u64) << 32) | gen as u64));
    let mut chunks = out.chunks_exact_mut(8);
    let mut x = key;
    for c in &mut chunks {
        x = x.wrapping_add(WY_STEP);
        c.copy_from_slice(&wymix(x).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let w = wymix(x.wrapping_add(WY_STEP)).to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&w[..n]);
    }
}

/// The hash both sides keep per region: keyed BLAKE3 whose key names the
/// region's index and length, so a record landing in the wrong region can
/// never match. Keying rather than prefixing keeps the payload on BLAKE3's
/// 1 KiB chunk boundaries, where its SIMD path takes whole chunks (~18%
/// faster on 64 KiB here).
pub fn region_hash(region: u32, bytes: &[u8]) -> [u8; 32] {
    let mut h = region_hasher(region, bytes.len() as u32);
    h.update(bytes);
    finish(&h)
}

fn region_key(region: u32, len: u32) -> [u8; 32] {
    let mut k = *b"vfio-emu-region-v2\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    k[24..28].copy_from_slice(&region.to_le_bytes());
    k[28..32].copy_from_slice(&len.to_le_bytes());
    k
}

pub fn region_hasher(region: u32, len: u32) -> Hasher {
    Hasher::new_keyed(&region_key(region, len))
}

/// Resets `h` to the start of region `region`'s hash.
pub fn start_region(h: &mut Hasher, region: u32, len: u32) {
    *h = region_hasher(region, len);
}

/// What the device holds: a generation per region and the hash of the
/// region's bytes at that generation once somebody computed it.
#[derive(Clone)]
pub struct DeviceContent {
    pub layout: Layout,
    pub seed: u64,
    pub gens: Vec<u32>,
    /// `(generation, hash)` cached for the digest; stale when the generation moved.
    pub hashes: Vec<Option<(u32, [u8; 32])>>,
}

impl DeviceContent {
    pub fn fresh(layout: Layout, seed: u64) -> Self {
        let n = layout.regions() as usize;
        DeviceContent { layout, seed, gens: vec![0; n], hashes: vec![None; n] }
    }

    /// Generates region `i` into `out` (exactly `region_len(i)` bytes) and
    /// returns its hash, computing it only when not cached for this
    /// generation (the bytes are a pure function of seed, index and
    /// generation, so a cached hash is the hash of these bytes).
    pub fn render(&mut self, i: u32, out: &mut [u8]) -> [u8; 32] {
        let gen = self.gens[i as usize];
        fill(self.seed, i, gen, out);
        if let Some((g, h)) = self.hashes[i as usize] {
            if g == gen {
                return h;
            }
        }
        let h = region_hash(i, out);
        self.hashes[i as usize] = Some((gen, h));
        h
    }

    /// Regions whose hash must still be computed for a digest.
    pub fn stale(&self) -> Vec<(u32, u32)> {
        (0..self.gens.len())
            .filter(|&i| !matches!(self.hashes[i], Some((g, _)) if g == self.gens[i]))
            .map(|i| (i as u32, self.gens[i]))
            .collect()
    }
}

/// The state digest: over the layout and every region's hash, in order.
pub fn digest_of(layout: Layout, region_hashes: impl Iterator<Item = [u8; 32]>) -> [u8; 32] {
    let mut h = Hasher::new();
    h.update(b"vfio-emu-digest-v2");
    h.update(&layout.state_size.to_le_bytes());
    h.update(&layout.region_size.to_le_bytes());
    for r in region_hashes {
        h.update(&r);
    }
    finish(&h)
}

/// A small PRNG for choosing regions and pages (not for content).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

