//! The device state, without holding it: `state_size` bytes cut into regions,
//! region `i` at generation `g` holding bytes that are a pure function of
//! (seed, i, g). Dirtying bumps a generation; only generations and the hash
//! of each region's current bytes are kept.

use super::sha256::Sha256;

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

/// Fills `out` with region `region`'s bytes at generation `gen`.
pub fn fill(seed: u64, region: u32, gen: u32, out: &mut [u8]) {
    let key = splitmix(seed ^ splitmix(((region as u64) << 32) | gen as u64));
    // xorshift64* keyed per region: fast and never stuck at zero.
    let mut s = key | 1;
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        c.copy_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let w = s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&w[..n]);
    }
}

/// The hash both sides keep per region: over its index, length and bytes,
/// so a record landing in the wrong region can never match.
pub fn region_hash(region: u32, bytes: &[u8]) -> [u8; 32] {
    let mut h = region_hasher(region, bytes.len() as u32);
    h.update(bytes);
    h.finish()
}

pub fn region_hasher(region: u32, len: u32) -> Sha256 {
    let mut h = Sha256::new();
    h.update(&region.to_le_bytes());
    h.update(&len.to_le_bytes());
    h
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

    /// Generates region `i` into `out` (resized) and caches its hash.
    pub fn render(&mut self, i: u32, out: &mut Vec<u8>) -> [u8; 32] {
        let len = self.layout.region_len(i) as usize;
        out.resize(len, 0);
        let gen = self.gens[i as usize];
        fill(self.seed, i, gen, out);
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
    let mut h = Sha256::new();
    h.update(b"vfio-emu-digest-v1");
    h.update(&layout.state_size.to_le_bytes());
    h.update(&layout.region_size.to_le_bytes());
    for r in region_hashes {
        h.update(&r);
    }
    h.finish()
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
