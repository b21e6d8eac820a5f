//! Guest RAM: a memfd mapped shared, so the same pages back the KVM memory slot,
//! the JavaScript Buffer, and (through the fd) any other process that needs them.
use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub struct GuestRam {
    ptr: *mut u8,
    len: usize,
    fd: OwnedFd,
}

// The mapping is plain shared memory; concurrent access goes through atomics
// (host side) or is the guest's own business.
unsafe impl Send for GuestRam {}
unsafe impl Sync for GuestRam {}

impl GuestRam {
    pub fn new(len: usize) -> Result<Self> {
        if len == 0 || !len.is_multiple_of(4096) {
            return Err(Error::invalid(format!("guest RAM size {len} is not a non-zero multiple of 4096")));
        }
        let name = c"microvm-ram";
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last_os("memfd_create(guest RAM)"));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(Error::last_os(&format!("ftruncate(guest RAM, {len})")));
        }
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::last_os(&format!("mmap(guest RAM, {len})")));
        }
        Ok(GuestRam { ptr: ptr as *mut u8, len, fd })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn check(&self, gpa: u64, size: usize) -> Result<usize> {
        let end = gpa.checked_add(size as u64);
        match end {
            Some(end) if end <= self.len as u64 => Ok(gpa as usize),
            _ => Err(Error::invalid(format!(
                "guest range {gpa:#x}+{size:#x} is outside guest RAM of {:#x} bytes",
                self.len
            ))),
        }
    }

    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<()> {
        let off = self.check(gpa, bytes.len())?;
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) };
        Ok(())
    }

    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Result<()> {
        let off = self.check(gpa, out.len())?;
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    // Aligned scalar accesses are atomic because the guest may be writing the
    // same words concurrently (the control block).
    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        let off = self.check(gpa, 4)?;
        if off % 4 != 0 {
            return Err(Error::invalid(format!("unaligned u32 access at {gpa:#x}")));
        }
        Ok(unsafe { (*(self.ptr.add(off) as *const AtomicU32)).load(Ordering::SeqCst) })
    }

    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<()> {
        let off = self.check(gpa, 4)?;
        if off % 4 != 0 {
            return Err(Error::invalid(format!("unaligned u32 access at {gpa:#x}")));
        }
        unsafe { (*(self.ptr.add(off) as *const AtomicU32)).store(v, Ordering::SeqCst) };
        Ok(())
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        let off = self.check(gpa, 8)?;
        if off % 8 != 0 {
            return Err(Error::invalid(format!("unaligned u64 access at {gpa:#x}")));
        }
        Ok(unsafe { (*(self.ptr.add(off) as *const AtomicU64)).load(Ordering::SeqCst) })
    }

    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        let off = self.check(gpa, 8)?;
        if off % 8 != 0 {
            return Err(Error::invalid(format!("unaligned u64 access at {gpa:#x}")));
        }
        unsafe { (*(self.ptr.add(off) as *const AtomicU64)).store(v, Ordering::SeqCst) };
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
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
}
