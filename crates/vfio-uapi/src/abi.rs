//! `#[repr(C)]` mirrors of the uAPI structs. Flexible `data[]` tails are not
//! part of the struct (their offset is the struct size); callers append them.

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_group_status {
    /// Size of the struct the caller passes; the kernel checks it covers `flags`.
    pub argsz: u32,
    /// Set by the kernel: `VFIO_GROUP_FLAGS_VIABLE`, `VFIO_GROUP_FLAGS_CONTAINER_SET`.
    pub flags: u32,
}

/// `struct vfio_device_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_info {
    /// Size of the caller's buffer; the kernel raises it when capabilities need more.
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*`: reset support, bus type.
    pub flags: u32,
    /// Regions `VFIO_DEVICE_GET_REGION_INFO` accepts.
    pub num_regions: u32,
    /// IRQ indexes `VFIO_DEVICE_GET_IRQ_INFO` accepts.
    pub num_irqs: u32,
    /// Offset of the first capability in the buffer, 0 for none.
    pub cap_offset: u32,
    /// Keeps the struct size a multiple of 8, as the header does.
    pub pad: u32,
}

/// `struct vfio_iommu_type1_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_info {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// `VFIO_IOMMU_INFO_PGSIZES` when `iova_pgsizes` is filled in.
    pub flags: u32,
    /// Bitmap of the IOMMU page sizes the container supports.
    pub iova_pgsizes: u64,
    /// Offset of the first capability, 0 for none.
    pub cap_offset: u32,
    /// Trailing padding of the C struct.
    pub pad: u32,
}

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_dma_map {
    /// Size of this struct.
    pub argsz: u32,
    /// `VFIO_DMA_MAP_FLAG_READ` / `_WRITE`: what the device may do.
    pub flags: u32,
    /// Process virtual address of the memory to map.
    pub vaddr: u64,
    /// Device address the memory appears at.
    pub iova: u64,
    /// Bytes to map.
    pub size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` (without the `data[]` tail).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_dma_unmap {
    /// Size of this struct (plus a `vfio_bitmap` with GET_DIRTY_BITMAP).
    pub argsz: u32,
    /// `VFIO_DMA_UNMAP_FLAG_*`.
    pub flags: u32,
    /// Device address of the mapping to remove.
    pub iova: u64,
    /// Bytes to unmap; the kernel writes back how many it unmapped.
    pub size: u64,
}

/// `struct vfio_bitmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_bitmap {
    /// Bytes of memory one bit stands for.
    pub pgsize: u64,
    /// Bytes of the bitmap at `data`.
    pub size: u64,
    /// User pointer to the bitmap the kernel fills.
    pub data: u64,
}

/// `struct vfio_iommu_type1_dirty_bitmap` (without the `data[]` tail).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_dirty_bitmap {
    /// Size of this struct plus its tail.
    pub argsz: u32,
    /// One of `VFIO_IOMMU_DIRTY_PAGES_FLAG_START` / `_STOP` / `_GET_BITMAP`.
    pub flags: u32,
}

/// `struct vfio_iommu_type1_dirty_bitmap_get`, the tail of a GET_BITMAP call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_dirty_bitmap_get {
    /// Start of the range whose dirty pages are read.
    pub iova: u64,
    /// Bytes of the range.
    pub size: u64,
    /// Where the kernel writes one bit per page.
    pub bitmap: vfio_bitmap,
}

/// `struct vfio_device_feature` (without the `data[]` tail).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature {
    /// Size of this header plus the feature payload that follows it.
    pub argsz: u32,
    /// Feature index (low 16 bits) ORed with `VFIO_DEVICE_FEATURE_GET` / `_SET` / `_PROBE`.
    pub flags: u32,
}

/// `struct vfio_device_feature_migration`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_migration {
    /// `VFIO_MIGRATION_*` bits: STOP_COPY, P2P, PRE_COPY.
    pub flags: u64,
}

/// `struct vfio_device_feature_mig_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_mig_state {
    /// A `enum vfio_device_mig_state` value ([`crate::DeviceState`]).
    pub device_state: u32,
    /// The data fd a SET opened, or -1.
    pub data_fd: i32,
}

/// `struct vfio_device_feature_dma_logging_control`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_dma_logging_control {
    /// Tracking granularity asked for; the device writes back the one it uses.
    pub page_size: u64,
    /// Entries in the `ranges` array.
    pub num_ranges: u32,
    /// Must be zero.
    pub reserved: u32,
    /// User pointer to `num_ranges` `vfio_device_feature_dma_logging_range`s.
    pub ranges: u64,
}

/// `struct vfio_device_feature_dma_logging_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_dma_logging_range {
    /// Start of a range to track.
    pub iova: u64,
    /// Bytes of the range.
    pub length: u64,
}

/// `struct vfio_device_feature_dma_logging_report`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_dma_logging_report {
    /// Start of the range to report.
    pub iova: u64,
    /// Bytes of the range.
    pub length: u64,
    /// Bytes one bit of the bitmap stands for.
    pub page_size: u64,
    /// User pointer to the bitmap the device fills (u64 words).
    pub bitmap: u64,
}

/// `struct vfio_device_feature_mig_data_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_mig_data_size {
    /// The device's estimate of its STOP_COPY data, in bytes.
    pub stop_copy_length: u64,
}

/// `struct vfio_precopy_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_precopy_info {
    /// Size of this struct.
    pub argsz: u32,
    /// Must be zero.
    pub flags: u32,
    /// Bytes of initial data still to read before the device is converged enough.
    pub initial_bytes: u64,
    /// Bytes the device has dirtied since its initial data, as it estimates them.
    pub dirty_bytes: u64,
}

/// Plain-old-data structs that may be viewed as bytes and read back from a
/// byte buffer of any alignment (how feature payloads travel).
///
/// # Safety
/// Implementors are `#[repr(C)]`, have no padding the kernel leaves
/// uninitialised that matters, and every bit pattern is a valid value.
pub unsafe trait Pod: Copy + Default {
    /// The value's bytes, as the kernel would copy them.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `self` is a live, initialised value of size_of::<Self>()
        // bytes, borrowed for the slice's lifetime; Pod types are repr(C)
        // integers with no padding, so every byte is initialised.
        unsafe { std::slice::from_raw_parts(self as *const Self as *const u8, std::mem::size_of::<Self>()) }
    }
    /// Reads `Self` from the start of `buf`; `None` if `buf` is too short.
    fn read_from(buf: &[u8]) -> Option<Self> {
        if buf.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; read_unaligned copes with any alignment and
        // every bit pattern is a valid Pod value.
        Some(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const Self) })
    }
    /// Writes `self` at the start of `buf`; `false` if `buf` is too short.
    fn write_to(&self, buf: &mut [u8]) -> bool {
        let b = self.as_bytes();
        if buf.len() < b.len() {
            return false;
        }
        buf[..b.len()].copy_from_slice(b);
        true
    }
}

// Each impl below: a #[repr(C)] struct of plain integers whose order leaves
// no padding (tests/uapi_layout.rs checks sizes and offsets against the
// kernel header), so every byte is initialised and any bytes are a value.
// SAFETY: two u32s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_group_status {}
// SAFETY: six u32s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_device_info {}
// SAFETY: u32, u32, u64, u32, u32: each field at its natural alignment, no padding, any bit pattern valid.
unsafe impl Pod for vfio_iommu_type1_info {}
// SAFETY: two u32s then three u64s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_iommu_type1_dma_map {}
// SAFETY: two u32s then two u64s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_iommu_type1_dma_unmap {}
// SAFETY: three u64s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_bitmap {}
// SAFETY: two u32s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_iommu_type1_dirty_bitmap {}
// SAFETY: two u64s and a `vfio_bitmap` (three u64s), no padding, any bit pattern valid.
unsafe impl Pod for vfio_iommu_type1_dirty_bitmap_get {}
// SAFETY: two u32s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_device_feature {}
// SAFETY: one u64, no padding, any bit pattern valid.
unsafe impl Pod for vfio_device_feature_migration {}
// SAFETY: a u32 and an i32, no padding, any bit pattern valid.
unsafe impl Pod for vfio_device_feature_mig_state {}
// SAFETY: u64, u32, u32, u64, no padding, any bit pattern valid.
unsafe impl Pod for vfio_device_feature_dma_logging_control {}
// SAFETY: two u64s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_device_feature_dma_logging_range {}
// SAFETY: four u64s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_device_feature_dma_logging_report {}
// SAFETY: one u64, no padding, any bit pattern valid.
unsafe impl Pod for vfio_device_feature_mig_data_size {}
// SAFETY: two u32s then two u64s, no padding, any bit pattern valid.
unsafe impl Pod for vfio_precopy_info {}
