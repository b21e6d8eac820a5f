//! DataFd::load_frames into an emulated device in RESUMING, from a socket
//! holding the input: it takes exactly the frames a plain reading of the
//! bytes finds (be64 marker, be64 size, payload), fails (ENODATA) where one
//! is cut short, and never reports success for less than its frames
//! declared. Leaving RESUMING then gives the device's verdict, which must
//! be the image parser's (emu::stream::Loader) on the bytes that went in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use vfio_core::backend::DeviceBackend;
use vfio_core::datafd::{LoadEnd, LoadFrameOptions};
use vfio_core::device::Device;
use vfio_core::emu::stream::Loader;
use vfio_core::emu::{EmuConfig, EmuDevice};
use vfio_core::vfio_uapi::{DeviceState, MigrationFlags};
use vfio_core::vmm_sys as sys;

const DATA_STATE: u64 = 0xffff_ffff_ef10_0004;

/// What a plain reading of `ch` says load_frames must do, and the payload bytes it moves.
fn expected(ch: &[u8], max: u64) -> (Result<(u64, u64, LoadEnd), &'static str>, Vec<u8>) {
    let (mut pos, mut bytes, mut frames, mut moved) = (0usize, 0u64, 0u64, Vec::new());
    let be64 = |p: usize| u64::from_be_bytes(ch[p..p + 8].try_into().unwrap());
    while bytes < max {
        if pos == ch.len() {
            return (Ok((bytes, frames, LoadEnd::Eof)), moved);
        }
        if ch.len() - pos < 8 {
            return (Err("cut inside a marker"), moved);
        }
        let m = be64(pos);
        pos += 8;
        if m != DATA_STATE {
            return (Ok((bytes, frames, LoadEnd::Marker(m))), moved);
        }
        if ch.len() - pos < 8 {
            return (Err("cut inside a size"), moved);
        }
        let size = be64(pos);
        pos += 8;
        let have = (ch.len() - pos) as u64;
        if have < size {
            moved.extend_from_slice(&ch[pos..]);
            return (Err("cut inside a payload"), moved);
        }
        moved.extend_from_slice(&ch[pos..pos + size as usize]);
        pos += size as usize;
        bytes += size;
        frames += 1;
    }
    (Ok((bytes, frames, LoadEnd::Limit)), moved)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, ch)) = data.split_first() else { return };
    let splice = mode & 1 != 0;
    let max = if mode & 2 != 0 { 64 * (mode as u64 >> 2) } else { u64::MAX };
    let cfg = EmuConfig { flags: MigrationFlags(1), state_size: 8192, region_size: 4096, seed: 5, ..EmuConfig::default() };
    let layout = cfg.layout();
    let emu = Arc::new(EmuDevice::new(cfg).expect("device"));
    let backend: Arc<dyn DeviceBackend> = emu.clone();
    let dev = Device::new(backend);
    dev.set_state(DeviceState::Stop).expect("RUNNING -> STOP");
    let fd = dev.set_state(DeviceState::Resuming).expect("STOP -> RESUMING").expect("a resuming data fd");

    let (a, b) = sys::socketpair().expect("socketpair");
    // The input fits the socket's buffer (libFuzzer's -max_len is below it).
    let mut off = 0;
    while off < ch.len() {
        off += sys::write(a.as_raw_fd(), &ch[off..]).expect("write to the socket");
    }
    drop(a);
    let opts = LoadFrameOptions { marker: DATA_STATE, max_bytes: max, idle_timeout: Some(Duration::from_secs(5)), allow_splice: splice };
    let got = fd.load_frames(b.as_raw_fd(), &opts);
    let (want, moved) = expected(ch, max);
    let mut parser = Loader::new(layout);
    parser.feed(&moved);
    let parsed = parser.finish();
    // The device refuses a write whose bytes break its image (EFAULT for a
    // header of another device, as mtty does): its verdict, which the parser
    // must share, and which leaving RESUMING must not undo.
    let refused = matches!(&got, Err(e) if e.errno == libc::EFAULT || e.errno == libc::EINVAL);
    match (&got, &want) {
        (Ok(st), Ok((bytes, frames, end))) => assert_eq!((st.bytes, st.frames, st.end), (*bytes, *frames, *end), "load_frames and the plain reading disagree"),
        (Err(e), _) if refused => assert!(parsed.is_err(), "the device refused a write (errno {}: {}) of an image the parser accepts", e.errno, e.message),
        (Err(e), Err(why)) => assert_eq!(e.errno, libc::ENODATA, "{why}: errno {} ({})", e.errno, e.message),
        (Ok(st), Err(why)) => panic!("load_frames reported success ({st:?}) for a channel {why}"),
        (Err(e), Ok(w)) => panic!("load_frames failed (errno {}: {}) where the plain reading takes {w:?}", e.errno, e.message),
    }
    fd.close();
    let verdict = dev.set_state(DeviceState::Stop);
    match (&verdict, &parsed) {
        (Ok(_), Ok(())) | (Err(_), Err(_)) => {}
        (Ok(_), Err(r)) => panic!("the device left RESUMING accepting an image the parser refuses: {}", r.message()),
        (Err(e), Ok(())) => panic!("the device refused ({e}) an image the parser accepts"),
    }
});
