//! `Container`: /dev/vfio/vfio, IOMMU setup, DMA mappings of JS buffers and
//! type1 dirty tracking.

use crate::error::{blocking, u64_arg, Blocking};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vfio_core::kernel::{self, VfioError};
use vfio_uapi::ioctl::*;

/// Largest bitmap allocated on the caller's behalf (covers 8 TiB at 4 KiB pages).
const MAX_BITMAP: u64 = 256 << 20;

#[napi(object)]
pub struct IommuInfo {
    /// VFIO_IOMMU_INFO_* bits.
    pub flags: u32,
    /// Bitmap of the IOMMU's page sizes.
    pub iova_pgsizes: BigInt,
}

#[napi(object)]
pub struct MapDmaOptions {
    /// Device may read the buffer (default true).
    pub read: Option<bool>,
    /// Device may write the buffer (default true).
    pub write: Option<bool>,
}

/// One DMA mapping: iova and length in bytes.
#[napi(object)]
pub struct DmaMapping {
    /// Where the device sees it.
    pub iova: BigInt,
    /// Bytes.
    pub size: BigInt,
}

#[napi]
pub struct Container {
    pub(crate) inner: Arc<kernel::Container>,
    // iova -> the JS Buffer mapped there. Holding the Buffer keeps its memory
    // alive (and unmoved) for as long as the device may DMA into it.
    maps: Arc<Mutex<BTreeMap<u64, Buffer>>>,
}

impl Container {
    /// A container the source of a local migration passed (`PassedVfio`).
    pub(crate) fn adopted(inner: Arc<kernel::Container>) -> Self {
        Container { inner, maps: Arc::default() }
    }
}

#[napi]
impl Container {
    /// Opens /dev/vfio/vfio (or `path`).
    #[napi(ts_return_type = "Promise<Container>")]
    pub fn open(path: Option<String>) -> AsyncTask<Blocking<Container>> {
        blocking(move || {
            let inner = kernel::Container::open(path.as_deref())?;
            Ok(Container { inner: Arc::new(inner), maps: Arc::default() })
        })
    }

    #[napi(getter)]
    pub fn fd(&self) -> i32 {
        self.inner.raw_fd()
    }

    #[napi(ts_return_type = "Promise<number>")]
    pub fn api_version(&self) -> AsyncTask<Blocking<i32>> {
        let c = self.inner.clone();
        blocking(move || c.api_version())
    }

    /// Non-zero when supported (e.g. 3 = VFIO_TYPE1v2_IOMMU).
    #[napi(ts_return_type = "Promise<number>")]
    pub fn check_extension(&self, extension: u32) -> AsyncTask<Blocking<i32>> {
        let c = self.inner.clone();
        blocking(move || c.check_extension(extension))
    }

    /// VFIO_SET_IOMMU; defaults to type1v2 (3). Needs a group attached first.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_iommu(&self, iommu_type: Option<u32>) -> AsyncTask<Blocking<()>> {
        let c = self.inner.clone();
        blocking(move || c.set_iommu(iommu_type.unwrap_or(VFIO_TYPE1V2_IOMMU)))
    }

    #[napi(ts_return_type = "Promise<IommuInfo>")]
    pub fn iommu_info(&self) -> AsyncTask<Blocking<IommuInfo>> {
        let c = self.inner.clone();
        blocking(move || {
            let i = c.iommu_info()?;
            Ok(IommuInfo { flags: i.flags, iova_pgsizes: BigInt::from(i.iova_pgsizes) })
        })
    }

    /// Maps all of `buffer` at `iova`. The Buffer stays referenced until
    /// `unmapDma(iova)`, so JavaScript cannot free memory the device uses.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn map_dma(&self, buffer: Buffer, iova: BigInt, options: Option<MapDmaOptions>) -> AsyncTask<Blocking<()>> {
        let c = self.inner.clone();
        let maps = self.maps.clone();
        let iova = u64_arg(&iova, "iova", "VFIO_IOMMU_MAP_DMA");
        let mut flags = 0;
        let o = options.unwrap_or(MapDmaOptions { read: None, write: None });
        if o.read.unwrap_or(true) {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if o.write.unwrap_or(true) {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        blocking(move || {
            let iova = iova?;
            if buffer.is_empty() {
                return Err(VfioError::invalid("VFIO_IOMMU_MAP_DMA", format!("{}: VFIO_IOMMU_MAP_DMA iova {iova:#x}", c.path()), "buffer is empty"));
            }
            let mut maps = maps.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY: the Buffer is stored in `maps` below until unmapped, which
            // keeps its memory alive; V8 never moves a backing store.
            unsafe { c.map_dma(buffer.as_ptr() as u64, iova, buffer.len() as u64, flags)? };
            maps.insert(iova, buffer);
            Ok(())
        })
    }

    /// Unmaps the mapping made at `iova` and releases its Buffer; resolves
    /// the bytes the kernel unmapped.
    #[napi(ts_return_type = "Promise<bigint>")]
    pub fn unmap_dma(&self, iova: BigInt) -> AsyncTask<Blocking<BigInt>> {
        let c = self.inner.clone();
        let maps = self.maps.clone();
        let iova = u64_arg(&iova, "iova", "VFIO_IOMMU_UNMAP_DMA");
        blocking(move || {
            let iova = iova?;
            let mut maps = maps.lock().unwrap_or_else(|p| p.into_inner());
            let size = match maps.get(&iova) {
                Some(b) => b.len() as u64,
                None => {
                    return Err(VfioError::invalid(
                        "VFIO_IOMMU_UNMAP_DMA",
                        format!("{}: VFIO_IOMMU_UNMAP_DMA iova {iova:#x}", c.path()),
                        "no buffer was mapped at this iova by this container",
                    ))
                }
            };
            let n = c.unmap_dma(iova, size)?;
            maps.remove(&iova);
            Ok(BigInt::from(n))
        })
    }

    /// The mappings made through `mapDma`, ascending by iova: what a local
    /// migration's source checks its declared DMA list against.
    #[napi(getter)]
    pub fn mappings(&self) -> Vec<DmaMapping> {
        let maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.iter().map(|(iova, b)| DmaMapping { iova: BigInt::from(*iova), size: BigInt::from(b.len() as u64) }).collect()
    }

    /// Whether the IOMMU has VFIO_UPDATE_VADDR (DMA mappings that outlive
    /// this process's vaddr: a local migration of a device that DMAs).
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn supports_update_vaddr(&self) -> AsyncTask<Blocking<bool>> {
        let c = self.inner.clone();
        blocking(move || c.supports_update_vaddr())
    }

    /// A local migration's switchover, on the source: every mapping of
    /// this container stays (the device keeps its DMA), its vaddr is
    /// forgotten, so the successor can give its own. Resolves the bytes
    /// the kernel covered.
    #[napi(ts_return_type = "Promise<bigint>")]
    pub fn invalidate_vaddr(&self) -> AsyncTask<Blocking<BigInt>> {
        let c = self.inner.clone();
        blocking(move || Ok(BigInt::from(c.invalidate_vaddr(None)?)))
    }

    /// The source resumes after a handover that failed: every mapping made
    /// through `mapDma` gets its vaddr (this process's Buffer) back.
    /// Refused by the kernel (EINVAL) for a mapping whose vaddr is valid,
    /// which is what it is when the successor already gave its own: two
    /// processes cannot both own the device's DMA. Resolves the count.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn revalidate_vaddr(&self) -> AsyncTask<Blocking<u32>> {
        let c = self.inner.clone();
        let maps = self.maps.clone();
        blocking(move || {
            let maps = maps.lock().unwrap_or_else(|p| p.into_inner());
            for (iova, b) in maps.iter() {
                // SAFETY: the Buffer is the one `mapDma` stored, still held by
                // `maps` (so alive and unmoved) until `unmapDma`.
                unsafe { c.update_vaddr(b.as_ptr() as u64, *iova, b.len() as u64)? };
            }
            Ok(maps.len() as u32)
        })
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn dirty_start(&self) -> AsyncTask<Blocking<()>> {
        let c = self.inner.clone();
        blocking(move || c.dirty_start())
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn dirty_stop(&self) -> AsyncTask<Blocking<()>> {
        let c = self.inner.clone();
        blocking(move || c.dirty_stop())
    }

    /// Reads and clears the dirty bitmap of `iova..iova+size` at `pageSize`
    /// granularity into `bitmap` (allocated when omitted); resolves the bitmap.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn dirty_bitmap(&self, iova: BigInt, size: BigInt, page_size: BigInt, bitmap: Option<Buffer>) -> AsyncTask<Blocking<Buffer>> {
        let c = self.inner.clone();
        let call = "VFIO_IOMMU_DIRTY_PAGES";
        let args = (u64_arg(&iova, "iova", call), u64_arg(&size, "size", call), u64_arg(&page_size, "pageSize", call));
        blocking(move || {
            let (iova, size, pgsize) = (args.0?, args.1?, args.2?);
            let mut bitmap = match bitmap {
                Some(b) => b,
                None if pgsize != 0 => {
                    let n = kernel::container::bitmap_bytes(size, pgsize);
                    if n > MAX_BITMAP {
                        let why = format!("a bitmap of {n} bytes is over the {MAX_BITMAP}-byte limit; split the range");
                        return Err(VfioError::invalid(call, format!("{}: {call} GET_BITMAP", c.path()), &why));
                    }
                    Buffer::from(vec![0u8; n as usize])
                }
                None => Buffer::from(Vec::new()),
            };
            c.dirty_bitmap(iova, size, pgsize, &mut bitmap)?;
            Ok(bitmap)
        })
    }
}
