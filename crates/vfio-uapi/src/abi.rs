//! `#[repr(C)]` mirrors of the uAPI structs. Flexible `data[]` tails are not
//! part of the struct (their offset is the struct size); callers append them.

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_group_status {
    pub argsz: u32,
    pub flags: u32,
}

/// `struct vfio_device_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_info {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    pub cap_offset: u32,
    pub pad: u32,
}

/// `struct vfio_iommu_type1_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_info {
    pub argsz: u32,
    pub flags: u32,
    pub iova_pgsizes: u64,
    pub cap_offset: u32,
    pub pad: u32,
}

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_dma_map {
    pub argsz: u32,
    pub flags: u32,
    pub vaddr: u64,
    pub iova: u64,
    pub size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` (without the `data[]` tail).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_dma_unmap {
    pub argsz: u32,
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
}

/// `struct vfio_bitmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_bitmap {
    pub pgsize: u64,
    pub size: u64,
    pub data: u64,
}

/// `struct vfio_iommu_type1_dirty_bitmap` (without the `data[]` tail).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_dirty_bitmap {
    pub argsz: u32,
    pub flags: u32,
}

/// `struct vfio_iommu_type1_dirty_bitmap_get`, the tail of a GET_BITMAP call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_iommu_type1_dirty_bitmap_get {
    pub iova: u64,
    pub size: u64,
    pub bitmap: vfio_bitmap,
}

/// `struct vfio_device_feature` (without the `data[]` tail).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature {
    pub argsz: u32,
    pub flags: u32,
}

/// `struct vfio_device_feature_migration`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_migration {
    pub flags: u64,
}

/// `struct vfio_device_feature_mig_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_mig_state {
    pub device_state: u32,
    pub data_fd: i32,
}

/// `struct vfio_device_feature_dma_logging_control`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_dma_logging_control {
    pub page_size: u64,
    pub num_ranges: u32,
    pub reserved: u32,
    pub ranges: u64,
}

/// `struct vfio_device_feature_dma_logging_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_dma_logging_range {
    pub iova: u64,
    pub length: u64,
}

/// `struct vfio_device_feature_dma_logging_report`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_dma_logging_report {
    pub iova: u64,
    pub length: u64,
    pub page_size: u64,
    pub bitmap: u64,
}

/// `struct vfio_device_feature_mig_data_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_device_feature_mig_data_size {
    pub stop_copy_length: u64,
}

/// `struct vfio_precopy_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vfio_precopy_info {
    pub argsz: u32,
    pub flags: u32,
    pub initial_bytes: u64,
    pub dirty_bytes: u64,
}

/// Plain-old-data structs that may be viewed as bytes and read back from a
/// byte buffer of any alignment (how feature payloads travel).
///
/// # Safety
/// Implementors are `#[repr(C)]`, have no padding the kernel leaves
/// uninitialised that matters, and every bit pattern is a valid value.
pub unsafe trait Pod: Copy + Default {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Pod types are plain integers laid out by repr(C).
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

unsafe impl Pod for vfio_group_status {}
unsafe impl Pod for vfio_device_info {}
unsafe impl Pod for vfio_iommu_type1_info {}
unsafe impl Pod for vfio_iommu_type1_dma_map {}
unsafe impl Pod for vfio_iommu_type1_dma_unmap {}
unsafe impl Pod for vfio_bitmap {}
unsafe impl Pod for vfio_iommu_type1_dirty_bitmap {}
unsafe impl Pod for vfio_iommu_type1_dirty_bitmap_get {}
unsafe impl Pod for vfio_device_feature {}
unsafe impl Pod for vfio_device_feature_migration {}
unsafe impl Pod for vfio_device_feature_mig_state {}
unsafe impl Pod for vfio_device_feature_dma_logging_control {}
unsafe impl Pod for vfio_device_feature_dma_logging_range {}
unsafe impl Pod for vfio_device_feature_dma_logging_report {}
unsafe impl Pod for vfio_device_feature_mig_data_size {}
unsafe impl Pod for vfio_precopy_info {}
