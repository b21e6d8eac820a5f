//! `/dev/vfio/vfio`: the legacy container, owner of the IOMMU mappings and
//! of type1 dirty tracking.

use super::error::{Result, VfioError};
use vmm_sys as sys;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use vfio_uapi::abi::*;
use vfio_uapi::ioctl::*;

/// Where the container lives.
pub const CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// An open VFIO container.
pub struct Container {
    fd: OwnedFd,
    path: String,
    // Serialises MAP/UNMAP against dirty-bitmap reads so a caller never reads
    // a bitmap for a range that is half unmapped by another thread.
    dma: Mutex<()>,
}

/// `VFIO_IOMMU_GET_INFO` answer.
#[derive(Clone, Copy, Debug)]
pub struct IommuInfo {
    /// `VFIO_IOMMU_INFO_*`.
    pub flags: u32,
    /// Bitmap of supported IOMMU page sizes.
    pub iova_pgsizes: u64,
}

/// Bytes of a dirty bitmap covering `size` bytes at `pgsize` granularity:
/// one bit per page, rounded up to whole u64 words as the kernel requires.
pub fn bitmap_bytes(size: u64, pgsize: u64) -> u64 {
    let pages = size.div_ceil(pgsize);
    pages.div_ceil(64) * 8
}

impl Container {
    /// Opens [`CONTAINER_PATH`], or `path` (tests).
    pub fn open(path: Option<&str>) -> Result<Container> {
        let path = path.unwrap_or(CONTAINER_PATH).to_string();
        let fd = sys::open_rw(&path).map_err(|e| VfioError::from_io(&e, "open", format!("{path}: open")))?;
        Ok(Container { fd, path, dma: Mutex::new(()) })
    }

    /// A container fd another process passed (a local migration): checked
    /// to be one (VFIO_GET_API_VERSION answers the one version there is),
    /// else refused, the fd closed. `label` names it in messages.
    pub fn from_fd(fd: OwnedFd, label: &str) -> Result<Container> {
        let c = Container { fd, path: label.to_string(), dma: Mutex::new(()) };
        match c.api_version() {
            Ok(v) if v == VFIO_API_VERSION as i32 => Ok(c),
            Ok(v) => Err(VfioError::new(libc::EPROTO, "VFIO_GET_API_VERSION", format!("{label}: VFIO_GET_API_VERSION"), Some(&format!("API version {v}, this VMM knows {VFIO_API_VERSION}")))),
            Err(e) => Err(VfioError::new(e.errno, "VFIO_GET_API_VERSION", format!("{label}: VFIO_GET_API_VERSION"), Some("the passed fd is not a VFIO container"))),
        }
    }

    /// The fd number (stays owned by `self`).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The path it was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn err(&self, e: std::io::Error, call: &str, what: impl std::fmt::Display) -> VfioError {
        VfioError::from_io(&e, call, format!("{}: {call} {what}", self.path))
    }

    /// `VFIO_GET_API_VERSION`.
    pub fn api_version(&self) -> Result<i32> {
        // SAFETY: VFIO_GET_API_VERSION ignores its argument.
        unsafe { sys::ioctl_val(self.raw_fd(), VFIO_GET_API_VERSION, 0) }.map_err(|e| self.err(e, "VFIO_GET_API_VERSION", ""))
    }

    /// Non-zero when the extension (e.g. `VFIO_TYPE1v2_IOMMU`) is supported.
    pub fn check_extension(&self, ext: u32) -> Result<i32> {
        // SAFETY: VFIO_CHECK_EXTENSION takes the extension number by value.
        unsafe { sys::ioctl_val(self.raw_fd(), VFIO_CHECK_EXTENSION, ext as libc::c_ulong) }
            .map_err(|e| self.err(e, "VFIO_CHECK_EXTENSION", ext))
    }

    /// Needs at least one group attached first (the kernel answers EINVAL otherwise).
    pub fn set_iommu(&self, iommu_type: u32) -> Result<()> {
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value.
        unsafe { sys::ioctl_val(self.raw_fd(), VFIO_SET_IOMMU, iommu_type as libc::c_ulong) }
            .map(|_| ())
            .map_err(|e| self.err(e, "VFIO_SET_IOMMU", iommu_type))
    }

    /// `VFIO_IOMMU_GET_INFO`.
    pub fn iommu_info(&self) -> Result<IommuInfo> {
        let mut info = vfio_iommu_type1_info { argsz: std::mem::size_of::<vfio_iommu_type1_info>() as u32, ..Default::default() };
        // SAFETY: the kernel writes at most `argsz` bytes, the struct's size.
        unsafe { sys::ioctl_ref(self.raw_fd(), VFIO_IOMMU_GET_INFO, &mut info) }.map_err(|e| self.err(e, "VFIO_IOMMU_GET_INFO", ""))?;
        Ok(IommuInfo { flags: info.flags, iova_pgsizes: info.iova_pgsizes })
    }

    /// Maps `size` bytes of this process at `vaddr` to `iova`.
    ///
    /// # Safety
    /// `vaddr..vaddr+size` must stay valid memory until it is unmapped: the
    /// device may DMA into it at any time (the napi layer keeps the JS buffer
    /// referenced for as long as the mapping exists).
    pub unsafe fn map_dma(&self, vaddr: u64, iova: u64, size: u64, flags: u32) -> Result<()> {
        let what = format!("iova {iova:#x} size {size:#x}");
        if size == 0 || iova.checked_add(size).is_none() {
            return Err(VfioError::invalid("VFIO_IOMMU_MAP_DMA", format!("{}: VFIO_IOMMU_MAP_DMA {what}", self.path), "empty or wrapping range"));
        }
        let mut m = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        let _g = self.dma.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the struct is read in place; the memory it names is this
        // function's contract with its caller.
        unsafe { sys::ioctl_ref(self.raw_fd(), VFIO_IOMMU_MAP_DMA, &mut m) }.map(|_| ()).map_err(|e| self.err(e, "VFIO_IOMMU_MAP_DMA", what))
    }

    /// Returns the number of bytes the kernel unmapped.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64> {
        let mut u = vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
        };
        let _g = self.dma.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the struct is read and written in place; without
        // GET_DIRTY_BITMAP it has no tail and no pointer.
        unsafe { sys::ioctl_ref(self.raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut u) }
            .map_err(|e| self.err(e, "VFIO_IOMMU_UNMAP_DMA", format!("iova {iova:#x} size {size:#x}")))?;
        Ok(u.size)
    }

    /// Whether the IOMMU can keep mappings across a change of vaddr
    /// (VFIO_UPDATE_VADDR: type1 since Linux 5.12).
    pub fn supports_update_vaddr(&self) -> Result<bool> {
        Ok(self.check_extension(VFIO_UPDATE_VADDR)? > 0)
    }

    /// What a local migration needs of this container to keep a kernel
    /// device's DMA mappings alive across the handover; refused, saying
    /// why, for a kernel without VFIO_UPDATE_VADDR and for a mediated
    /// device (`mdev`), which on a type1 container pins guest pages on
    /// demand and so needs a valid vaddr at every moment (QEMU refuses the
    /// same route for the same reason).
    pub fn check_vaddr_handover(&self, device: &str, mdev: bool) -> Result<()> {
        let ctx = format!("{}: local handover of {device}", self.path);
        if mdev {
            let why = "a mediated device on a type1 container needs its DMA vaddr valid at all times, which a handover through VFIO_DMA_UNMAP_FLAG_VADDR cannot give";
            return Err(VfioError::new(libc::EOPNOTSUPP, "VFIO_DMA_UNMAP_FLAG_VADDR", ctx, Some(why)));
        }
        if !self.supports_update_vaddr()? {
            let why = "this kernel's IOMMU lacks VFIO_UPDATE_VADDR, so the device's DMA mappings cannot outlive this process's vaddr";
            return Err(VfioError::new(libc::EOPNOTSUPP, "VFIO_CHECK_EXTENSION", ctx, Some(why)));
        }
        Ok(())
    }

    /// The source's half of the vaddr handover: every mapping stays (the
    /// device keeps its DMA), but its vaddr is forgotten; until the
    /// successor calls [`update_vaddr`](Self::update_vaddr) a DMA that
    /// needs a page pinned waits. `None` means every mapping
    /// (VFIO_DMA_UNMAP_FLAG_ALL). Returns the bytes the kernel covered.
    pub fn invalidate_vaddr(&self, range: Option<(u64, u64)>) -> Result<u64> {
        let mut u = invalidate_arg(range).map_err(|why| VfioError::invalid("VFIO_IOMMU_UNMAP_DMA", format!("{}: VFIO_IOMMU_UNMAP_DMA VADDR", self.path), why))?;
        let _g = self.dma.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the struct is read and written in place; with the VADDR
        // flag (and without GET_DIRTY_BITMAP) it has no tail and no pointer.
        unsafe { sys::ioctl_ref(self.raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut u) }.map_err(|e| self.err(e, "VFIO_IOMMU_UNMAP_DMA", "VADDR"))?;
        Ok(u.size)
    }

    /// The successor's half: the mapping at `iova..iova+size` (kept by the
    /// container it was passed) now reads and writes this process's
    /// `vaddr`, the same pages mapped here from the passed memfd.
    ///
    /// # Safety
    /// As [`map_dma`](Self::map_dma): `vaddr..vaddr+size` must stay valid
    /// memory, backed by the pages the mapping had, until it is unmapped.
    pub unsafe fn update_vaddr(&self, vaddr: u64, iova: u64, size: u64) -> Result<()> {
        let what = format!("VADDR iova {iova:#x} size {size:#x}");
        let mut m = update_arg(vaddr, iova, size).map_err(|why| VfioError::invalid("VFIO_IOMMU_MAP_DMA", format!("{}: VFIO_IOMMU_MAP_DMA {what}", self.path), why))?;
        let _g = self.dma.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the struct is read in place; the memory it names is this
        // function's contract with its caller.
        unsafe { sys::ioctl_ref(self.raw_fd(), VFIO_IOMMU_MAP_DMA, &mut m) }.map(|_| ()).map_err(|e| self.err(e, "VFIO_IOMMU_MAP_DMA", what))
    }

    fn dirty(&self, flags: u32, name: &str) -> Result<()> {
        let mut d = vfio_iommu_type1_dirty_bitmap { argsz: std::mem::size_of::<vfio_iommu_type1_dirty_bitmap>() as u32, flags };
        // SAFETY: START and STOP read only the two u32s of the struct.
        unsafe { sys::ioctl_ref(self.raw_fd(), VFIO_IOMMU_DIRTY_PAGES, &mut d) }.map(|_| ()).map_err(|e| self.err(e, "VFIO_IOMMU_DIRTY_PAGES", name))
    }

    /// Starts type1 dirty tracking of every mapping.
    pub fn dirty_start(&self) -> Result<()> {
        self.dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START, "START")
    }

    /// Stops type1 dirty tracking.
    pub fn dirty_stop(&self) -> Result<()> {
        self.dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, "STOP")
    }

    /// Fills `bitmap` (one bit per `pgsize` page of `iova..iova+size`, bit 0
    /// of byte 0 first) and clears the kernel's copy.
    pub fn dirty_bitmap(&self, iova: u64, size: u64, pgsize: u64, bitmap: &mut [u8]) -> Result<()> {
        let what = format!("GET_BITMAP iova {iova:#x} size {size:#x} pgsize {pgsize:#x}");
        let ctx = || format!("{}: VFIO_IOMMU_DIRTY_PAGES {what}", self.path);
        if pgsize == 0 || !pgsize.is_power_of_two() {
            return Err(VfioError::invalid("VFIO_IOMMU_DIRTY_PAGES", ctx(), "page size must be a power of two"));
        }
        if size == 0 || !size.is_multiple_of(pgsize) || !iova.is_multiple_of(pgsize) {
            return Err(VfioError::invalid("VFIO_IOMMU_DIRTY_PAGES", ctx(), "range must be non-empty and page aligned"));
        }
        let need = bitmap_bytes(size, pgsize);
        if (bitmap.len() as u64) < need {
            let why = format!("bitmap of {} bytes is too small, {need} needed", bitmap.len());
            return Err(VfioError::invalid("VFIO_IOMMU_DIRTY_PAGES", ctx(), &why));
        }
        let head = std::mem::size_of::<vfio_iommu_type1_dirty_bitmap>();
        let mut buf = vec![0u8; head + std::mem::size_of::<vfio_iommu_type1_dirty_bitmap_get>()];
        vfio_iommu_type1_dirty_bitmap { argsz: buf.len() as u32, flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP }.write_to(&mut buf);
        vfio_iommu_type1_dirty_bitmap_get {
            iova,
            size,
            bitmap: vfio_bitmap { pgsize, size: need, data: bitmap.as_mut_ptr() as u64 },
        }
        .write_to(&mut buf[head..]);
        let _g = self.dma.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `buf` is exactly header + get struct (its argsz); the
        // bitmap pointer is `bitmap`, exclusively borrowed for the call and
        // at least `need` bytes long (checked), which the kernel writes at most.
        unsafe { sys::ioctl_buf(self.raw_fd(), VFIO_IOMMU_DIRTY_PAGES, &mut buf) }.map(|_| ()).map_err(|e| VfioError::from_io(&e, "VFIO_IOMMU_DIRTY_PAGES", ctx()))
    }
}

/// The UNMAP argument that forgets vaddrs: of `range` (iova, size), or of
/// every mapping. The kernel wants iova and size 0 with FLAG_ALL.
fn invalidate_arg(range: Option<(u64, u64)>) -> std::result::Result<vfio_iommu_type1_dma_unmap, &'static str> {
    let (flags, iova, size) = match range {
        None => (VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL, 0, 0),
        Some((iova, size)) if size == 0 || iova.checked_add(size).is_none() => return Err("empty or wrapping range"),
        Some((iova, size)) => (VFIO_DMA_UNMAP_FLAG_VADDR, iova, size),
    };
    Ok(vfio_iommu_type1_dma_unmap { argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32, flags, iova, size })
}

/// The MAP argument that gives a kept mapping its new vaddr: FLAG_VADDR
/// alone (the kernel refuses READ/WRITE with it: the mapping keeps its own).
fn update_arg(vaddr: u64, iova: u64, size: u64) -> std::result::Result<vfio_iommu_type1_dma_map, &'static str> {
    if size == 0 || iova.checked_add(size).is_none() || vaddr.checked_add(size).is_none() {
        return Err("empty or wrapping range");
    }
    Ok(vfio_iommu_type1_dma_map { argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32, flags: VFIO_DMA_MAP_FLAG_VADDR, vaddr, iova, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::test_fds::memfd_open;

    #[test]
    fn vaddr_arguments_carry_only_the_vaddr_flags() {
        let all = invalidate_arg(None).unwrap();
        assert_eq!((all.flags, all.iova, all.size), (VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL, 0, 0));
        assert_eq!(all.argsz as usize, std::mem::size_of::<vfio_iommu_type1_dma_unmap>());
        let one = invalidate_arg(Some((0x10000, 0x2000))).unwrap();
        assert_eq!((one.flags, one.iova, one.size), (VFIO_DMA_UNMAP_FLAG_VADDR, 0x10000, 0x2000));
        assert!(invalidate_arg(Some((0, 0))).is_err());
        assert!(invalidate_arg(Some((u64::MAX, 2))).is_err());
        let m = update_arg(0x7f00_0000_0000, 0x10000, 0x2000).unwrap();
        assert_eq!((m.flags, m.vaddr, m.iova, m.size), (VFIO_DMA_MAP_FLAG_VADDR, 0x7f00_0000_0000, 0x10000, 0x2000));
        assert_eq!(m.flags & (VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE), 0, "READ/WRITE would be refused with VADDR");
        assert!(update_arg(u64::MAX - 1, 0, 4096).is_err(), "a wrapping vaddr");
        assert!(update_arg(0, 0, 0).is_err());
    }

    #[test]
    fn a_passed_fd_that_is_no_container_is_refused_and_closed() {
        let fd = vmm_sys::mem::memfd(c"not-a-container", 0).unwrap();
        assert!(memfd_open("not-a-container"));
        let e = Container::from_fd(fd, "passed container").err().unwrap();
        assert_eq!(e.errno, libc::ENOTTY);
        assert!(e.to_string().contains("passed container: VFIO_GET_API_VERSION"), "{e}");
        assert!(e.to_string().contains("not a VFIO container"), "{e}");
        assert!(!memfd_open("not-a-container"), "the passed fd was closed");
    }

    #[test]
    fn vaddr_calls_reach_the_ioctl_and_name_it() {
        // /dev/null answers every ioctl ENOTTY: the calls are made and
        // fail as a container without type1 would, saying which call.
        let c = Container::open(Some("/dev/null")).unwrap();
        let e = c.supports_update_vaddr().err().unwrap();
        assert!(e.to_string().contains("VFIO_CHECK_EXTENSION 10"), "{e}");
        let e = c.invalidate_vaddr(None).err().unwrap();
        assert_eq!(e.errno, libc::ENOTTY);
        assert!(e.to_string().contains("VFIO_IOMMU_UNMAP_DMA VADDR"), "{e}");
        assert_eq!(c.invalidate_vaddr(Some((0, 0))).err().unwrap().errno, libc::EINVAL);
        // SAFETY: the ioctl fails (ENOTTY) before any mapping could exist.
        let e = unsafe { c.update_vaddr(0x1000, 0, 0x1000) }.err().unwrap();
        assert!(e.to_string().contains("VFIO_IOMMU_MAP_DMA VADDR iova 0x0 size 0x1000"), "{e}");
        // SAFETY: refused before the ioctl.
        assert_eq!(unsafe { c.update_vaddr(0x1000, 0, 0) }.err().unwrap().errno, libc::EINVAL);
    }

    #[test]
    fn the_handover_is_refused_for_an_mdev_and_without_the_extension() {
        let c = Container::open(Some("/dev/null")).unwrap();
        let e = c.check_vaddr_handover("mdev 83b8f4f2", true).err().unwrap();
        assert_eq!(e.errno, libc::EOPNOTSUPP);
        assert!(e.to_string().contains("local handover of mdev 83b8f4f2"), "{e}");
        assert!(e.to_string().contains("needs its DMA vaddr valid at all times"), "{e}");
        // No answer to VFIO_CHECK_EXTENSION is no handover either.
        assert!(c.check_vaddr_handover("0000:65:00.1", false).is_err());
    }
}
