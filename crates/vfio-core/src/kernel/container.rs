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
