//! Guest RAM: a memfd mapped shared, so the same pages back the KVM memory slot,
//! the JavaScript Buffer, and (through the fd) any other process that needs them.
use crate::error::{invalid, sys, Result, RAM};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A shared, memfd-backed mapping of guest RAM, unmapped on drop.
pub struct GuestRam {
    ptr: *mut u8,
    len: usize,
    /// The file mapped at `ptr`: ours, or (local migration) the source's,
    /// mapped over ours at the same address by [`replace`](Self::replace).
    fd: Mutex<OwnedFd>,
}

// SAFETY: the pointer is to a MAP_SHARED mapping owned by this value, not
// tied to the thread that made it; moving the owner moves nothing.
unsafe impl Send for GuestRam {}
// SAFETY: every access through &self is bounds-checked and either a raw
// copy or an atomic load/store; the guest writes the same memory concurrently
// by design, so no Rust reference into it is ever handed out.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// `len` bytes (a non-zero multiple of 4096) of zeroed shared memory.
    pub fn new(len: usize) -> Result<Self> {
        if len == 0 || !len.is_multiple_of(4096) {
            return Err(invalid(RAM, "GuestRam::new", format!("size {len} is not a non-zero multiple of 4096")));
        }
        let fd = vmm_sys::mem::memfd(c"microvm-ram", len).map_err(|e| sys(&e, RAM, "memfd_create", format!("of {len} bytes")))?;
        let ptr = vmm_sys::mem::mmap_shared(&fd, len).map_err(|e| sys(&e, RAM, "mmap", format!("of {len} bytes")))?;
        Ok(GuestRam { ptr, len, fd: Mutex::new(fd) })
    }

    /// Base of the mapping, valid for [`len`](Self::len) bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Bytes of guest RAM.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a size of 0 is refused by [`new`](Self::new).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn file(&self) -> MutexGuard<'_, OwnedFd> {
        // An OwnedFd cannot be left half-updated by a panic.
        self.fd.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The memfd behind the mapping (stays owned by `self`; a
    /// [`replace`](Self::replace) closes it).
    pub fn fd(&self) -> i32 {
        self.file().as_raw_fd()
    }

    /// Maps `fd` (another process's guest RAM, passed over a UNIX socket)
    /// over this RAM at the same address and keeps it, closing the file
    /// mapped before. The address stays, so the KVM memory slot and every
    /// Buffer over this RAM see `fd`'s pages with nothing re-registered (the
    /// kernel's MMU notifier drops KVM's old translations). Refused, with
    /// `fd` closed and nothing changed, unless `fd` is exactly as long as
    /// this RAM.
    pub fn replace(&self, fd: OwnedFd) -> Result<()> {
        let size = vmm_sys::file_size(fd.as_raw_fd()).map_err(|e| sys(&e, RAM, "fstat", "of the passed RAM fd"))?;
        if size != self.len as u64 {
            return Err(invalid(RAM, "GuestRam::replace", format!("the passed RAM fd is {size} bytes, this guest RAM {} bytes", self.len)));
        }
        let mut cur = self.file();
        // SAFETY: ptr/len are exactly the mapping made in new(), still ours,
        // and no Rust reference into guest RAM is ever handed out.
        unsafe { vmm_sys::mem::mmap_shared_over(self.ptr, &fd, self.len) }.map_err(|e| sys(&e, RAM, "mmap", format!("of the passed RAM fd over {} bytes", self.len)))?;
        *cur = fd;
        Ok(())
    }

    /// Maps a fresh zeroed memfd over this RAM, letting go of the one
    /// mapped: a destination that adopted a source's RAM and then failed
    /// before the go-ahead must not keep (or later write) the source's pages.
    pub fn detach(&self) -> Result<()> {
        let fd = vmm_sys::mem::memfd(c"microvm-ram", self.len).map_err(|e| sys(&e, RAM, "memfd_create", format!("of {} bytes", self.len)))?;
        self.replace(fd)
    }

    /// The offset of `gpa..gpa+size` in the mapping, if RAM holds it all and
    /// `gpa` is a multiple of `align`; `op` names the access refused.
    fn check(&self, op: &str, gpa: u64, size: usize, align: usize) -> Result<usize> {
        let end = gpa.checked_add(size as u64);
        match end {
            Some(end) if end <= self.len as u64 => {}
            _ => return Err(invalid(RAM, op, format!("range {gpa:#x}+{size:#x} is outside guest RAM of {:#x} bytes", self.len))),
        }
        if !(gpa as usize).is_multiple_of(align) {
            return Err(invalid(RAM, op, format!("unaligned {size}-byte access at {gpa:#x}")));
        }
        Ok(gpa as usize)
    }

    /// Copies `bytes` to guest-physical `gpa`; EINVAL outside RAM.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<()> {
        let off = self.check("GuestRam::write", gpa, bytes.len(), 1)?;
        // SAFETY: off..off+len lies inside the mapping (checked), which lives
        // as long as self, and a Rust slice never overlaps guest RAM.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) };
        Ok(())
    }

    /// Copies guest-physical `gpa..` into `out`; EINVAL outside RAM.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Result<()> {
        let off = self.check("GuestRam::read", gpa, out.len(), 1)?;
        // SAFETY: as in write: in bounds, alive, and disjoint from `out`.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    // Aligned scalar accesses are atomic because the guest may be writing the
    // same words concurrently (the control block).
    /// Atomic load of the aligned u32 at `gpa`.
    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        let off = self.check("GuestRam::read_u32", gpa, 4, 4)?;
        // SAFETY: in bounds and 4-aligned (checked); atomic because the guest
        // may store to the same word.
        Ok(unsafe { (*(self.ptr.add(off) as *const AtomicU32)).load(Ordering::SeqCst) })
    }

    /// Atomic store of the aligned u32 at `gpa`.
    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<()> {
        let off = self.check("GuestRam::write_u32", gpa, 4, 4)?;
        // SAFETY: in bounds and 4-aligned (checked); atomic as in read_u32.
        unsafe { (*(self.ptr.add(off) as *const AtomicU32)).store(v, Ordering::SeqCst) };
        Ok(())
    }

    /// Atomic load of the aligned u64 at `gpa`.
    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        let off = self.check("GuestRam::read_u64", gpa, 8, 8)?;
        // SAFETY: in bounds and 8-aligned (checked); atomic as in read_u32.
        Ok(unsafe { (*(self.ptr.add(off) as *const AtomicU64)).load(Ordering::SeqCst) })
    }

    /// Atomic store of the aligned u64 at `gpa`.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        let off = self.check("GuestRam::write_u64", gpa, 8, 8)?;
        // SAFETY: in bounds and 8-aligned (checked); atomic as in read_u32.
        unsafe { (*(self.ptr.add(off) as *const AtomicU64)).store(v, Ordering::SeqCst) };
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping made in new(); a buffer
        // JavaScript holds keeps its own Arc, so nothing can use it after this.
        // A failure could only be a bad range, which this cannot be.
        let _ = unsafe { vmm_sys::mem::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_sizes_and_ranges() {
        assert_eq!(GuestRam::new(0).err().unwrap().errno, libc::EINVAL);
        assert_eq!(GuestRam::new(4095).err().unwrap().errno, libc::EINVAL);
        let ram = GuestRam::new(8192).unwrap();
        assert!(ram.write(8190, &[1, 2, 3]).is_err());
        assert!(ram.read_u32(2).is_err());
        assert!(ram.read_u64(u64::MAX - 3).is_err());
        ram.write_u64(8184, 0x1122334455667788).unwrap();
        assert_eq!(ram.read_u32(8184).unwrap(), 0x55667788);
        let mut b = [0u8; 2];
        ram.read(8190, &mut b).unwrap();
        assert_eq!(b, [0x22, 0x11]);
    }

    #[test]
    fn replace_maps_the_other_file_at_the_same_address() {
        let a = GuestRam::new(8192).unwrap();
        let b = GuestRam::new(8192).unwrap();
        b.write_u64(16, 0xfeed).unwrap();
        let base = a.as_ptr();
        a.replace(vmm_sys::dup(b.fd()).unwrap()).unwrap();
        assert_eq!(a.as_ptr(), base);
        assert_eq!(a.read_u64(16).unwrap(), 0xfeed, "a reads b's page");
        a.write_u64(24, 7).unwrap();
        assert_eq!(b.read_u64(24).unwrap(), 7, "and writes it");
        a.detach().unwrap();
        assert_eq!(a.read_u64(16).unwrap(), 0, "detached: a fresh file");
        a.write_u64(24, 9).unwrap();
        assert_eq!(b.read_u64(24).unwrap(), 7, "b no longer sees a's writes");
    }

    #[test]
    fn replace_refuses_a_file_of_another_size_and_keeps_its_own() {
        let a = GuestRam::new(8192).unwrap();
        a.write_u64(0, 5).unwrap();
        let other = vmm_sys::mem::memfd(c"other", 4096).unwrap();
        let e = a.replace(other).err().unwrap();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.to_string().contains("4096 bytes, this guest RAM 8192"), "{e}");
        assert_eq!(a.read_u64(0).unwrap(), 5);
    }
}
