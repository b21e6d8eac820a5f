//! Shared memory for guest RAM: a memfd and its MAP_SHARED mapping, so the
//! same pages can back a KVM memory slot, a JavaScript Buffer and, through
//! the fd, another process.

use crate::{cvt, errno, owned, retry};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// A close-on-exec memfd named `name`, `len` zero bytes long.
pub fn memfd(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let size = libc::off_t::try_from(len).map_err(|_| errno(libc::EFBIG))?;
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let fd = owned(cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?);
    // SAFETY: ftruncate takes only integers; a bad one is an error return.
    retry(|| cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }))?;
    Ok(fd)
}

/// Maps the first `len` bytes of `fd` shared and read-write, where the
/// kernel chooses. The mapping stays until [`munmap`], whatever becomes of
/// `fd`.
pub fn mmap_shared(fd: &OwnedFd, len: usize) -> io::Result<*mut u8> {
    // SAFETY: a new mapping at an address of the kernel's choosing (null
    // hint, no MAP_FIXED) cannot alias anything Rust owns.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// Removes a mapping made by [`mmap_shared`].
///
/// # Safety
/// `ptr` and `len` must be exactly what [`mmap_shared`] returned and was
/// given, and nothing may use the memory afterwards.
pub unsafe fn munmap(ptr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: the caller vouches that the range is a whole mapping of ours
    // that nothing uses any more.
    cvt(unsafe { libc::munmap(ptr.cast(), len) }).map(|_| ())
}

/// Maps `len` bytes of `fd` shared and read-write exactly over
/// `ptr..ptr+len` (MAP_FIXED), replacing what was mapped there in one step:
/// whoever holds that address (a KVM memory slot, a JavaScript Buffer) sees
/// the new file's pages from now on.
///
/// # Safety
/// `ptr..ptr+len` must be a whole shared mapping this process owns (one
/// [`mmap_shared`] made) with no Rust reference into it.
pub unsafe fn mmap_shared_over(ptr: *mut u8, fd: &OwnedFd, len: usize) -> io::Result<()> {
    // SAFETY: the caller vouches that the range is our own mapping, which
    // MAP_FIXED replaces without touching any other.
    let p = unsafe {
        libc::mmap(ptr.cast(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_FIXED, fd.as_raw_fd(), 0)
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_sees_what_the_fd_holds() {
        let fd = memfd(c"vmm-sys-test", 8192).unwrap();
        let p = mmap_shared(&fd, 8192).unwrap();
        // SAFETY: the mapping is 8192 bytes long and only this test uses it.
        unsafe { *p.add(4097) = 7 };
        let mut b = [0u8; 2];
        // SAFETY: pread writes at most 2 bytes into the local buffer.
        let n = unsafe { libc::pread(fd.as_raw_fd(), b.as_mut_ptr().cast(), 2, 4096) };
        assert_eq!((n, b), (2, [0, 7]));
        // SAFETY: exactly the mapping made above, unused from here on.
        unsafe { munmap(p, 8192) }.unwrap();
        assert_eq!(memfd(c"x", usize::MAX).unwrap_err().raw_os_error(), Some(libc::EFBIG));
    }
}
