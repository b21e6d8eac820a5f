//! ioctl numbers and flag values of include/uapi/linux/vfio.h.
//!
//! VFIO ioctls are `_IO(';', 100 + n)`: the number encodes neither direction
//! nor size (each struct carries its own `argsz`), so `_IO` is all we need.

/// `_IO(type, nr)` from asm-generic/ioctl.h: no direction, no size bits.
pub const fn io(ty: u8, nr: u8) -> u64 {
    ((ty as u64) << 8) | nr as u64
}

/// The ioctl type byte every VFIO request uses (`';'`).
pub const VFIO_TYPE: u8 = b';';
/// Number of the first VFIO request; request `n` is `VFIO_BASE + n`.
pub const VFIO_BASE: u8 = 100;

const fn vfio(n: u8) -> u64 {
    io(VFIO_TYPE, VFIO_BASE + n)
}

// Container (/dev/vfio/vfio).
/// Container: the API version (always [`VFIO_API_VERSION`]).
pub const VFIO_GET_API_VERSION: u64 = vfio(0);
/// Container: whether an IOMMU type or extension is supported (integer argument).
pub const VFIO_CHECK_EXTENSION: u64 = vfio(1);
/// Container: selects the IOMMU model (integer argument); needs a group attached.
pub const VFIO_SET_IOMMU: u64 = vfio(2);
/// Container: `struct vfio_iommu_type1_info`.
pub const VFIO_IOMMU_GET_INFO: u64 = vfio(12);
/// Container: maps process memory for the device (`struct vfio_iommu_type1_dma_map`).
pub const VFIO_IOMMU_MAP_DMA: u64 = vfio(13);
/// Container: removes a mapping (`struct vfio_iommu_type1_dma_unmap`).
pub const VFIO_IOMMU_UNMAP_DMA: u64 = vfio(14);
/// Container: type1 dirty tracking (`struct vfio_iommu_type1_dirty_bitmap` and its tail).
pub const VFIO_IOMMU_DIRTY_PAGES: u64 = vfio(17);

// Group (/dev/vfio/N).
/// Group: viability and container attachment (`struct vfio_group_status`).
pub const VFIO_GROUP_GET_STATUS: u64 = vfio(3);
/// Group: attaches to the container whose fd the `int` argument points at.
pub const VFIO_GROUP_SET_CONTAINER: u64 = vfio(4);
/// Group: detaches from its container.
pub const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio(5);
/// Group: opens a device by the NUL-terminated name the argument points at.
pub const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio(6);

// Device.
/// Device: `struct vfio_device_info`.
pub const VFIO_DEVICE_GET_INFO: u64 = vfio(7);
/// Device: sets interrupt signalling (`struct vfio_irq_set` and its data).
pub const VFIO_DEVICE_SET_IRQS: u64 = vfio(10);
/// Device: function reset.
pub const VFIO_DEVICE_RESET: u64 = vfio(11);
/// Device: get, set or probe a feature (`struct vfio_device_feature` plus payload).
pub const VFIO_DEVICE_FEATURE: u64 = vfio(17);

// Migration data fd.
/// Data fd: bytes left to read in PRE_COPY (`struct vfio_precopy_info`).
pub const VFIO_MIG_GET_PRECOPY_INFO: u64 = vfio(21);

/// The only API version the kernel has ever answered.
pub const VFIO_API_VERSION: u32 = 0;
/// The type1 IOMMU model.
pub const VFIO_TYPE1_IOMMU: u32 = 1;
/// Type1 v2: type1 with the unmap semantics every current user wants.
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;

/// Every device of the group is bound to a VFIO driver (or unbound).
pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// The group is attached to a container.
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

/// The device supports `VFIO_DEVICE_RESET`.
pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// The device is a PCI device.
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// `iova_pgsizes` of the IOMMU info is valid.
pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;

/// The device may read the mapping.
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// The device may write the mapping.
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// Unmap and report the range's dirty bitmap in one call.
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// Unmap every mapping (iova and size must be 0).
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
/// Keep the mappings (and the device's DMA) but forget their vaddr until a
/// MAP with [`VFIO_DMA_MAP_FLAG_VADDR`] gives a new one: how a process hands
/// its DMA mappings to its successor (live update).
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;
/// Give a mapping invalidated by [`VFIO_DMA_UNMAP_FLAG_VADDR`] its new vaddr
/// (the caller's, for the same pages); no other flag may go with it.
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;
/// Extension: the type1 IOMMU supports the two VADDR flags above.
pub const VFIO_UPDATE_VADDR: u32 = 10;

/// Starts type1 dirty tracking.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
/// Stops type1 dirty tracking.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
/// Reads and clears the dirty bitmap of a range.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

/// The feature index bits of `vfio_device_feature.flags`.
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
/// Read the feature's payload.
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
/// Write the feature's payload.
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
/// Only ask whether the feature (with GET/SET) is supported.
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;

/// Feature: the device's migration flags.
pub const VFIO_DEVICE_FEATURE_MIGRATION: u32 = 1;
/// Feature: the migration state, and the data fd a move opens.
pub const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: u32 = 2;
/// Feature: starts device DMA dirty logging over ranges.
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_START: u32 = 6;
/// Feature: stops device DMA dirty logging.
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: u32 = 7;
/// Feature: reads and clears the device's dirty log of a range.
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: u32 = 8;
/// Feature: the estimated size of the STOP_COPY data.
pub const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: u32 = 9;

/// Migration flag: STOP, STOP_COPY and RESUMING (every migratable device).
pub const VFIO_MIGRATION_STOP_COPY: u64 = 1 << 0;
/// Migration flag: RUNNING_P2P (quiesce peer-to-peer DMA before stopping).
pub const VFIO_MIGRATION_P2P: u64 = 1 << 1;
/// Migration flag: PRE_COPY (state read while the device runs).
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

/// `vfio_irq_set.flags`: the data is an array of eventfds (`__s32`, -1 to unset).
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `vfio_irq_set.flags`: the action is to signal (trigger) the interrupt.
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// The PCI INTx interrupt index.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
