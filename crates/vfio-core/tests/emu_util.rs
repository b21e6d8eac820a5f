//! Helpers shared by the emu_* tests (included with #[path]); speaks to the
//! device only through raw DeviceBackend buffers, as the kernel path would.
#![allow(dead_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, AsRawFd};

use vfio_core::backend::DeviceBackend;
use vfio_core::emu::{EmuConfig, EmuDevice};
use vfio_core::vfio_uapi::{DeviceState, MigrationFlags};

pub const GET: u32 = 1 << 16;
pub const SET: u32 = 1 << 17;
pub const PROBE: u32 = 1 << 18;

pub const ALL_FLAGS: [u64; 4] = [1, 1 | 2, 1 | 4, 1 | 2 | 4];

pub fn cfg(flags: u64, size: u64) -> EmuConfig {
    EmuConfig { flags: MigrationFlags(flags), state_size: size, ..EmuConfig::default() }
}

pub fn dev(flags: u64, size: u64) -> EmuDevice {
    EmuDevice::new(cfg(flags, size)).unwrap()
}

pub fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().expect("error without errno")
}

/// A whole `struct vfio_device_feature` with `payload`.
pub fn feature(d: &dyn DeviceBackend, flags: u32, payload: &[u8]) -> (io::Result<i32>, Vec<u8>) {
    let mut buf = Vec::with_capacity(8 + payload.len());
    buf.extend_from_slice(&((8 + payload.len()) as u32).to_le_bytes());
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(payload);
    // SAFETY: every caller's pointers are either live buffers or chosen to
    // fault, and the emulated device reaches them only through
    // process_vm_readv/writev, which fail cleanly on bad ones.
    let r = unsafe { d.device_feature(&mut buf) };
    (r, buf[8..].to_vec())
}

pub fn set_state(d: &dyn DeviceBackend, s: u32) -> io::Result<Option<OwnedFd>> {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&s.to_le_bytes());
    p[4..].copy_from_slice(&0x5a5a_5a5au32.to_le_bytes());
    let (r, out) = feature(d, SET | 2, &p);
    let fd = i32::from_le_bytes(out[4..8].try_into().unwrap());
    match r {
        // SAFETY: a successful SET handed this fresh fd to us, as the kernel does.
        Ok(_) if fd >= 0 => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
        Ok(_) => {
            assert_eq!(fd, -1, "data_fd must be -1 when no fd is returned");
            Ok(None)
        }
        Err(e) => {
            assert_eq!(fd, -1, "a failed SET answers data_fd -1");
            Err(e)
        }
    }
}

pub fn get_state(d: &dyn DeviceBackend) -> u32 {
    let (r, out) = feature(d, GET | 2, &[0u8; 8]);
    r.unwrap();
    assert_eq!(i32::from_le_bytes(out[4..8].try_into().unwrap()), -1);
    u32::from_le_bytes(out[..4].try_into().unwrap())
}

pub fn go(d: &dyn DeviceBackend, s: DeviceState) -> Option<OwnedFd> {
    set_state(d, s as u32).unwrap_or_else(|e| panic!("SET {s}: {e}"))
}

/// Reads a saving fd to EOF through the backend.
pub fn read_all(d: &dyn DeviceBackend, fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match d.data_read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Reads pre-copy data until the device says ENOMSG.
pub fn read_precopy(d: &dyn DeviceBackend, fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match d.data_read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => panic!("EOF in pre-copy"),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => return out,
            Err(e) => panic!("read: {e}"),
        }
    }
}

pub fn write_all(d: &dyn DeviceBackend, fd: &OwnedFd, mut data: &[u8], seg: usize) -> io::Result<()> {
    while !data.is_empty() {
        let n = seg.min(data.len());
        match d.data_write(fd.as_raw_fd(), &data[..n]) {
            Ok(w) => data = &data[w..],
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The whole STOP_COPY image of `d` (RUNNING -> STOP -> STOP_COPY -> STOP).
pub fn image(d: &dyn DeviceBackend) -> Vec<u8> {
    go(d, DeviceState::Stop);
    let fd = go(d, DeviceState::StopCopy).expect("STOP -> STOP_COPY opens a data fd");
    let img = read_all(d, &fd);
    go(d, DeviceState::Stop);
    img
}

/// Loads `img` into `d` (to RESUMING, write, to STOP).
pub fn load(d: &dyn DeviceBackend, img: &[u8], seg: usize) -> io::Result<()> {
    go(d, DeviceState::Stop);
    let fd = go(d, DeviceState::Resuming).expect("STOP -> RESUMING opens a data fd");
    let w = write_all(d, &fd, img, seg);
    let r = set_state(d, DeviceState::Stop as u32).map(|_| ());
    w.and(r)
}

pub fn precopy_info(d: &dyn DeviceBackend, fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&24u32.to_le_bytes());
    d.precopy_info(fd.as_raw_fd(), &mut b)?;
    Ok((u64::from_le_bytes(b[8..16].try_into().unwrap()), u64::from_le_bytes(b[16..24].try_into().unwrap())))
}
