//! read/write/PRECOPY_INFO on the data fds, through the backend seam.
//! The fd is identified by its open file (pipe inode), never by number.

use std::io;

use vfio_uapi::DeviceState;

use super::device::{EmuDevice, State};
use vmm_sys::{self as sys, errno};

enum Which {
    Saving,
    Resuming,
}

fn identify(st: &mut State, fd: i32, op: &str) -> io::Result<Which> {
    let ino = sys::inode(fd).map_err(|e| {
        let n = e.raw_os_error().unwrap_or(libc::EBADF);
        st.fail(n, format!("{op}: fd {fd} is not open"))
    })?;
    if st.saving.as_ref().is_some_and(|s| s.ino == ino) {
        return Ok(Which::Saving);
    }
    if st.resuming.as_ref().is_some_and(|s| s.ino == ino) {
        return Ok(Which::Resuming);
    }
    if st.stale.contains(&ino) {
        return Err(st.fail(libc::ENODEV, format!("{op}: fd {fd} belongs to a closed migration session")));
    }
    Err(st.fail(libc::EBADF, format!("{op}: fd {fd} is not a data fd of this device")))
}

fn in_precopy(s: DeviceState) -> bool {
    matches!(s, DeviceState::PreCopy | DeviceState::PreCopyP2p)
}

impl EmuDevice {
    pub(crate) fn read_data(&self, fd: i32, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let step = self.with(|st| -> io::Result<Option<usize>> {
                match identify(st, fd, "read")? {
                    Which::Resuming => return Err(st.fail(libc::EBADF, format!("read: fd {fd} is the resume fd (write-only)"))),
                    Which::Saving => {}
                }
                if st.faults.take_eagain() {
                    return Err(st.fail(libc::EAGAIN, "read: injected EAGAIN".into()));
                }
                if buf.is_empty() {
                    return Ok(Some(0));
                }
                let layout = st.content.layout;
                let state = st.state;
                let s = st.saving.as_mut().unwrap();
                let rem = s.remaining(layout);
                if rem.queued > 0 {
                    // Data is queued, so this read cannot block.
                    let cap = st.faults.take_short(buf.len().min(rem.queued));
                    let n = sys::read(fd, &mut buf[..cap])?;
                    return Ok(Some(n));
                }
                if s.w.is_none() && s.finished() {
                    return Ok(Some(0));
                }
                if s.broken {
                    return Err(st.fail(libc::EIO, "read: saving session failed".into()));
                }
                if in_precopy(state) && rem.initial == 0 && rem.dirty == 0 {
                    return Err(st.fail(libc::ENOMSG, "read: no pre-copy data right now".into()));
                }
                Ok(None)
            })?;
            if let Some(n) = step {
                return Ok(n);
            }
            // The producer is behind: wait for it outside the lock.
            let _ = sys::poll_many(&[(fd, libc::POLLIN)], 50);
        }
    }

    pub(crate) fn write_data(&self, fd: i32, buf: &[u8]) -> io::Result<usize> {
        let cap = self.with(|st| -> io::Result<usize> {
            match identify(st, fd, "write")? {
                Which::Saving => return Err(st.fail(libc::EBADF, format!("write: fd {fd} is a saving fd (read-only)"))),
                Which::Resuming => {}
            }
            let s = st.resuming.as_ref().unwrap();
            if let Some(r) = s.loader.header_error() {
                // mtty fails the write that carries a bad header with EFAULT.
                let m = format!("write: {}", r.message());
                return Err(st.fail(libc::EFAULT, m));
            }
            if st.faults.take_eagain() {
                return Err(st.fail(libc::EAGAIN, "write: injected EAGAIN".into()));
            }
            Ok(st.faults.take_short(buf.len()))
        })?;
        if cap == 0 {
            return Ok(0);
        }
        let n = sys::write_nosigpipe(fd, &buf[..cap])?;
        // mtty fails the very write that completes a bad header, not a later
        // one: while the header is still unjudged, parse what is queued now
        // rather than when the loader thread gets to it.
        self.with(|st| {
            let ino = sys::inode(fd).ok();
            let Some(s) = st.resuming.as_mut().filter(|s| Some(s.ino) == ino) else {
                return Ok(n); // reset meanwhile: the session that took these bytes is gone
            };
            if s.loader.bytes < super::stream::HEADER_LEN as u64 && s.loader.error.is_none() {
                s.drain(super::stream::HEADER_LEN);
            }
            if let Some(r) = s.loader.header_error() {
                let m = format!("write: {}", r.message());
                return Err(st.fail(libc::EFAULT, m));
            }
            Ok(n)
        })
    }

    pub(crate) fn precopy(&self, fd: i32, buf: &mut [u8]) -> io::Result<()> {
        self.with(|st| {
            if buf.len() < 24 {
                return Err(st.fail(libc::EFAULT, format!("precopy_info buffer of {} bytes", buf.len())));
            }
            let argsz = u32::from_le_bytes(buf[0..4].try_into().unwrap());
            let ino = sys::inode(fd).map_err(|e| e.raw_os_error().map(errno).unwrap_or_else(|| errno(libc::EBADF)))?;
            let saving = st.saving.as_ref().is_some_and(|s| s.ino == ino);
            let stale = st.stale.contains(&ino);
            if !saving && !stale {
                // Not a saving migration file: the ioctl is unknown to it.
                return Err(st.fail(libc::ENOTTY, format!("precopy_info: fd {fd} is not a saving data fd")));
            }
            if argsz < 24 {
                return Err(st.fail(libc::EINVAL, format!("precopy_info argsz {argsz} < 24")));
            }
            if !in_precopy(st.state) {
                return Err(st.fail(libc::EINVAL, format!("precopy_info in {}", st.state)));
            }
            if !saving {
                return Err(st.fail(libc::ENODEV, "precopy_info: session closed".into()));
            }
            if let Some(e) = st.faults.fail_precopy_info.take() {
                return Err(st.fail(e, "precopy_info failed (injected)".into()));
            }
            let rem = st.saving.as_ref().unwrap().remaining(st.content.layout);
            buf[8..16].copy_from_slice(&rem.initial.to_le_bytes());
            buf[16..24].copy_from_slice(&rem.dirty.to_le_bytes());
            Ok(())
        })
    }
}

impl crate::backend::DeviceBackend for EmuDevice {
    fn in_process(&self) -> bool {
        true
    }

    // Safe to call with any pointers in `buf`: the device reaches them only
    // through copy_from_user/copy_to_user, as the driver does.
    unsafe fn device_feature(&self, buf: &mut [u8]) -> io::Result<i32> {
        let shared = self.shared.clone();
        self.with(|st| super::feature::device_feature(&shared, st, buf))
    }

    fn get_info(&self, buf: &mut [u8]) -> io::Result<()> {
        self.with(|st| super::feature::get_info(st, buf))
    }

    fn reset(&self) -> io::Result<()> {
        self.with(|st| {
            if let Some(e) = st.faults.fail_reset.take() {
                return Err(st.fail(e, format!("reset failed (injected), device stays in {}", st.state)));
            }
            st.do_reset();
            Ok(())
        })
    }

    fn precopy_info(&self, fd: i32, buf: &mut [u8]) -> io::Result<()> {
        self.precopy(fd, buf)
    }

    fn data_read(&self, fd: i32, buf: &mut [u8]) -> io::Result<usize> {
        self.read_data(fd, buf)
    }

    fn data_write(&self, fd: i32, buf: &[u8]) -> io::Result<usize> {
        self.write_data(fd, buf)
    }

    fn name(&self) -> &str {
        self.device_name()
    }
}

