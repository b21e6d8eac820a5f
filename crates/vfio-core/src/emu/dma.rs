//! DMA logging (the device's own dirty tracker) and the DMA engine that
//! gives it something to track: writes into attached guest memory.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use super::content::Rng;
use vmm_sys::{copy_from_user, copy_to_user, errno};

/// The kernel copies at most one page of ranges (PAGE_SIZE / 16).
pub const LOG_MAX_RANGES: u32 = 4096 / 16;
const MAX_LOG_PAGE: u64 = 1 << 30;

/// The checks vfio_main.c makes on DMA_LOGGING_START's ranges before the
/// driver sees them: count, alignment, overflow, overlap.
pub fn read_ranges(page_size: u64, num: u32, ptr: u64) -> io::Result<Vec<(u64, u64)>> {
    if num == 0 {
        return Err(errno(libc::EINVAL));
    }
    if num > LOG_MAX_RANGES {
        return Err(errno(libc::E2BIG));
    }
    let mut raw = vec![0u8; num as usize * 16];
    let mask = page_size.wrapping_sub(1);
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(num as usize);
    for i in 0..num as usize {
        // One range at a time, as the kernel copies them.
        copy_from_user(ptr.wrapping_add(i as u64 * 16), &mut raw[i * 16..i * 16 + 16])?;
        let iova = u64::from_le_bytes(raw[i * 16..i * 16 + 8].try_into().unwrap());
        let length = u64::from_le_bytes(raw[i * 16 + 8..i * 16 + 16].try_into().unwrap());
        if iova & mask != 0 || length & mask != 0 {
            return Err(errno(libc::EINVAL));
        }
        let Some(end) = iova.checked_add(length) else {
            return Err(errno(libc::EOVERFLOW));
        };
        if length > 0 && out.iter().any(|&(s, e)| s < end && iova < e) {
            return Err(errno(libc::EINVAL));
        }
        if length > 0 {
            out.push((iova, end));
        }
    }
    Ok(out)
}

pub struct DmaLog {
    pub page_size: u64,
    /// Tracked `[start, end)`, sorted, at most the device's maximum.
    pub ranges: Vec<(u64, u64)>,
    /// Page-aligned IOVAs written since the last report.
    pub dirty: BTreeSet<u64>,
}

impl DmaLog {
    /// The driver's log_start: its page sizes, and merging when userspace
    /// asks for more ranges than the hardware tracks (as mlx5 does).
    pub fn start(page_size: u64, mut ranges: Vec<(u64, u64)>, max_ranges: u32) -> io::Result<DmaLog> {
        if page_size < 4096 || !page_size.is_power_of_two() || page_size > MAX_LOG_PAGE {
            return Err(errno(libc::EINVAL));
        }
        ranges.sort_unstable();
        while ranges.len() > max_ranges as usize {
            // Close the smallest gap: tracking a little more is allowed, less is not.
            let i = (0..ranges.len() - 1).min_by_key(|&i| ranges[i + 1].0 - ranges[i].1).unwrap();
            ranges[i].1 = ranges[i + 1].1;
            ranges.remove(i + 1);
        }
        Ok(DmaLog { page_size, ranges, dirty: BTreeSet::new() })
    }

    pub fn mark(&mut self, iova: u64) {
        if self.ranges.iter().any(|&(s, e)| s <= iova && iova < e) {
            self.dirty.insert(iova & !(self.page_size - 1));
        }
    }

    /// DMA_LOGGING_REPORT after the kernel's own checks: ORs a bit per dirty
    /// `page_size` page of `[iova, iova+length)` into the user bitmap and
    /// forgets those pages (read and clear; bits are only ever set).
    pub fn report(&mut self, iova: u64, length: u64, page_size: u64, bitmap: u64) -> io::Result<()> {
        let end = iova + length; // overflow refused by the caller
        let bits = length.div_ceil(page_size);
        let words = bits.div_ceil(64);
        // The kernel pins the whole bitmap before walking it: a bad pointer
        // faults even when nothing is dirty.
        let mut probe = [0u8; 8];
        copy_from_user(bitmap, &mut probe)?;
        copy_from_user(bitmap.wrapping_add((words - 1) * 8), &mut probe)?;
        let first = iova.saturating_sub(self.page_size - 1) & !(self.page_size - 1);
        let hit: Vec<u64> = self.dirty.range(first..end).copied().collect();
        let mut set: BTreeMap<u64, u64> = BTreeMap::new();
        let mut cleared = Vec::new();
        for p in hit {
            let s = p.max(iova);
            let e = (p + self.page_size).min(end);
            if s >= e {
                continue;
            }
            let mut b = (s - iova) / page_size;
            let last = (e - 1 - iova) / page_size;
            while b <= last {
                *set.entry(b / 64).or_default() |= 1u64 << (b % 64);
                b += 1;
            }
            if p >= iova {
                cleared.push(p);
            }
        }
        for (w, bits) in set {
            let addr = bitmap.wrapping_add(w * 8);
            let mut cur = [0u8; 8];
            copy_from_user(addr, &mut cur)?;
            let v = u64::from_le_bytes(cur) | bits;
            copy_to_user(addr, &v.to_le_bytes())?;
        }
        for p in cleared {
            self.dirty.remove(&p);
        }
        Ok(())
    }
}

/// Guest memory lent to the device. The owner (the napi layer keeps the
/// Buffer referenced) guarantees it outlives the attachment.
pub struct GuestMem {
    pub ptr: *mut u8,
    pub len: usize,
    pub iova: u64,
}

// SAFETY: the pointer is only dereferenced under the device lock, whichever
// thread holds it, and the lender keeps the memory alive until detach
// (attach_guest_memory's contract).
unsafe impl Send for GuestMem {}

#[derive(Default)]
pub struct DmaStats {
    pub writes: u64,
    pub logged: u64,
}

pub struct DmaEngine {
    pub mem: Option<GuestMem>,
    /// Page writes per second; 0 = stopped.
    pub rate: u64,
    budget: f64,
    rng: Rng,
    counter: u64,
    pub stats: DmaStats,
}

impl DmaEngine {
    pub fn new(seed: u64) -> DmaEngine {
        DmaEngine { mem: None, rate: 0, budget: 0.0, rng: Rng::new(seed ^ 0xd4a), counter: 0, stats: DmaStats::default() }
    }

    /// What a function reset leaves: no writes programmed. The attached
    /// memory (the host's IOMMU mapping) and the statistics stay.
    pub fn power_on(&mut self) {
        self.rate = 0;
        self.budget = 0.0;
    }

    pub fn active(&self) -> bool {
        self.rate > 0 && self.mem.as_ref().is_some_and(|m| m.len >= 8)
    }

    /// Performs the writes due after `dt` seconds.
    pub fn tick(&mut self, dt: f64, mut log: Option<&mut DmaLog>) {
        let Some(mem) = &self.mem else { return };
        if self.rate == 0 || mem.len < 8 {
            return;
        }
        self.budget = (self.budget + dt * self.rate as f64).min(self.rate as f64 + 1.0);
        let pages = (mem.len as u64).div_ceil(4096);
        while self.budget >= 1.0 {
            self.budget -= 1.0;
            let page = self.rng.below(pages);
            let room = (mem.len as u64 - page * 4096).min(4096);
            if room < 8 {
                continue;
            }
            let off = page * 4096 + self.rng.below(room / 8) * 8;
            self.counter += 1;
            // SAFETY: off + 8 <= len, the lender keeps the memory alive and
            // the device writes like hardware would: unsynchronised with the guest.
            unsafe { std::ptr::write_unaligned(mem.ptr.add(off as usize) as *mut u64, self.counter) };
            self.stats.writes += 1;
            if let Some(l) = log.as_deref_mut() {
                let before = l.dirty.len();
                l.mark(mem.iova + off);
                if l.dirty.len() != before {
                    self.stats.logged += 1;
                }
            }
        }
    }
}
