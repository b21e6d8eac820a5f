//! ioctl numbers and flag values of include/uapi/linux/vfio.h.
//!
//! VFIO ioctls are `_IO(';', 100 + n)`: the number encodes neither direction
//! nor size (each struct carries its own `argsz`), so `_IO` is all we need.

/// `_IO(type, nr)` from asm-generic/ioctl.h: no direction, no size bits.
pub const fn io(ty: u8, nr: u8) -> u64 {
    ((ty as u64) << 8) | nr as u64
}

pub const VFIO_TYPE: u8 = b';';
pub const VFIO_BASE: u8 = 100;

const fn vfio(n: u8) -> u64 {
    io(VFIO_TYPE, VFIO_BASE + n)
}

// Container (/dev/vfio/vfio).
pub const VFIO_GET_API_VERSION: u64 = vfio(0);
pub const VFIO_CHECK_EXTENSION: u64 = vfio(1);
pub const VFIO_SET_IOMMU: u64 = vfio(2);
pub const VFIO_IOMMU_GET_INFO: u64 = vfio(12);
pub const VFIO_IOMMU_MAP_DMA: u64 = vfio(13);
pub const VFIO_IOMMU_UNMAP_DMA: u64 = vfio(14);
pub const VFIO_IOMMU_DIRTY_PAGES: u64 = vfio(17);

// Group (/dev/vfio/N).
pub const VFIO_GROUP_GET_STATUS: u64 = vfio(3);
pub const VFIO_GROUP_SET_CONTAINER: u64 = vfio(4);
pub const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio(5);
pub const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio(6);

// Device.
pub const VFIO_DEVICE_GET_INFO: u64 = vfio(7);
pub const VFIO_DEVICE_RESET: u64 = vfio(11);
pub const VFIO_DEVICE_FEATURE: u64 = vfio(17);

// Migration data fd.
pub const VFIO_MIG_GET_PRECOPY_INFO: u64 = vfio(21);

/// The only API version the kernel has ever answered.
pub const VFIO_API_VERSION: u32 = 0;
pub const VFIO_TYPE1_IOMMU: u32 = 1;
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;

pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;

pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;

pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;

pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;

pub const VFIO_DEVICE_FEATURE_MIGRATION: u32 = 1;
pub const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: u32 = 2;
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_START: u32 = 6;
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: u32 = 7;
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: u32 = 8;
pub const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: u32 = 9;

pub const VFIO_MIGRATION_STOP_COPY: u64 = 1 << 0;
pub const VFIO_MIGRATION_P2P: u64 = 1 << 1;
pub const VFIO_MIGRATION_PRE_COPY: u64 = 1 << 2;

/// A name for a feature index, for error messages and `syscall` strings.
pub fn feature_name(index: u32) -> &'static str {
    match index {
        VFIO_DEVICE_FEATURE_MIGRATION => "MIGRATION",
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => "MIG_DEVICE_STATE",
        3 => "LOW_POWER_ENTRY",
        4 => "LOW_POWER_ENTRY_WITH_WAKEUP",
        5 => "LOW_POWER_EXIT",
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START => "DMA_LOGGING_START",
        VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => "DMA_LOGGING_STOP",
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => "DMA_LOGGING_REPORT",
        VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => "MIG_DATA_SIZE",
        10 => "BUS_MASTER",
        _ => "UNKNOWN",
    }
}

/// "GET", "SET", "PROBE", "PROBE|GET", ... for the flags of a feature call.
pub fn feature_op(flags: u32) -> String {
    let mut parts = Vec::new();
    if flags & VFIO_DEVICE_FEATURE_PROBE != 0 {
        parts.push("PROBE");
    }
    if flags & VFIO_DEVICE_FEATURE_GET != 0 {
        parts.push("GET");
    }
    if flags & VFIO_DEVICE_FEATURE_SET != 0 {
        parts.push("SET");
    }
    if parts.is_empty() {
        "NONE".to_string()
    } else {
        parts.join("|")
    }
}
