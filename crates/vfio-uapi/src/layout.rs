//! One table of every struct layout and number this crate defines, named as
//! the C header names them, so a single loop can check the lot against the
//! real header (crates/vfio-uapi/tests/uapi_layout.rs).

use crate::abi::*;
use crate::ioctl::*;
use std::mem::{offset_of, size_of};

/// A struct's C name, size and (C field name, offset) pairs.
#[derive(Debug)]
pub struct StructLayout {
    /// The C struct name.
    pub name: &'static str,
    /// `sizeof` the struct.
    pub size: usize,
    /// Each field's C name and `offsetof`.
    pub fields: Vec<(&'static str, usize)>,
}

macro_rules! layout {
    ($ty:ident { $($field:ident $(as $cname:literal)?),* $(,)? }) => {
        StructLayout {
            name: stringify!($ty),
            size: size_of::<$ty>(),
            fields: vec![$((layout!(@name $field $($cname)?), offset_of!($ty, $field))),*],
        }
    };
    (@name $field:ident) => { stringify!($field) };
    (@name $field:ident $cname:literal) => { $cname };
}

/// Every `#[repr(C)]` struct of [`crate::abi`].
pub fn structs() -> Vec<StructLayout> {
    vec![
        layout!(vfio_group_status { argsz, flags }),
        layout!(vfio_device_info { argsz, flags, num_regions, num_irqs, cap_offset, pad }),
        layout!(vfio_iommu_type1_info { argsz, flags, iova_pgsizes, cap_offset, pad }),
        layout!(vfio_iommu_type1_dma_map { argsz, flags, vaddr, iova, size }),
        layout!(vfio_iommu_type1_dma_unmap { argsz, flags, iova, size }),
        layout!(vfio_bitmap { pgsize, size, data }),
        layout!(vfio_iommu_type1_dirty_bitmap { argsz, flags }),
        layout!(vfio_iommu_type1_dirty_bitmap_get { iova, size, bitmap }),
        layout!(vfio_device_feature { argsz, flags }),
        layout!(vfio_device_feature_migration { flags }),
        layout!(vfio_device_feature_mig_state { device_state, data_fd }),
        layout!(vfio_device_feature_dma_logging_control { page_size, num_ranges, reserved as "__reserved", ranges }),
        layout!(vfio_device_feature_dma_logging_range { iova, length }),
        layout!(vfio_device_feature_dma_logging_report { iova, length, page_size, bitmap }),
        layout!(vfio_device_feature_mig_data_size { stop_copy_length }),
        layout!(vfio_precopy_info { argsz, flags, initial_bytes, dirty_bytes }),
    ]
}

/// Every ioctl number and flag value, by its C macro name.
pub fn numbers() -> Vec<(&'static str, u64)> {
    macro_rules! n {
        ($($name:ident $(as $cname:literal)?),* $(,)?) => {
            vec![$((n!(@name $name $($cname)?), $name as u64)),*]
        };
        (@name $name:ident) => { stringify!($name) };
        (@name $name:ident $cname:literal) => { $cname };
    }
    n![
        VFIO_GET_API_VERSION,
        VFIO_CHECK_EXTENSION,
        VFIO_SET_IOMMU,
        VFIO_IOMMU_GET_INFO,
        VFIO_IOMMU_MAP_DMA,
        VFIO_IOMMU_UNMAP_DMA,
        VFIO_IOMMU_DIRTY_PAGES,
        VFIO_GROUP_GET_STATUS,
        VFIO_GROUP_SET_CONTAINER,
        VFIO_GROUP_UNSET_CONTAINER,
        VFIO_GROUP_GET_DEVICE_FD,
        VFIO_DEVICE_GET_INFO,
        VFIO_DEVICE_SET_IRQS,
        VFIO_DEVICE_RESET,
        VFIO_DEVICE_FEATURE,
        VFIO_MIG_GET_PRECOPY_INFO,
        VFIO_API_VERSION,
        VFIO_TYPE1_IOMMU,
        VFIO_TYPE1V2_IOMMU as "VFIO_TYPE1v2_IOMMU",
        VFIO_GROUP_FLAGS_VIABLE,
        VFIO_GROUP_FLAGS_CONTAINER_SET,
        VFIO_DEVICE_FLAGS_RESET,
        VFIO_DEVICE_FLAGS_PCI,
        VFIO_IOMMU_INFO_PGSIZES,
        VFIO_DMA_MAP_FLAG_READ,
        VFIO_DMA_MAP_FLAG_WRITE,
        VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
        VFIO_DMA_UNMAP_FLAG_ALL,
        VFIO_DMA_UNMAP_FLAG_VADDR,
        VFIO_DMA_MAP_FLAG_VADDR,
        VFIO_UPDATE_VADDR,
        VFIO_IRQ_SET_DATA_EVENTFD,
        VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
        VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
        VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
        VFIO_DEVICE_FEATURE_MASK,
        VFIO_DEVICE_FEATURE_GET,
        VFIO_DEVICE_FEATURE_SET,
        VFIO_DEVICE_FEATURE_PROBE,
        VFIO_DEVICE_FEATURE_MIGRATION,
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
        VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
        VFIO_MIGRATION_STOP_COPY,
        VFIO_MIGRATION_P2P,
        VFIO_MIGRATION_PRE_COPY,
    ]
}

/// `enum vfio_device_mig_state` values by their C enumerator names.
pub fn states() -> Vec<(&'static str, u64)> {
    crate::DeviceState::ALL
        .iter()
        .map(|s| (state_c_name(*s), *s as u64))
        .collect()
}

fn state_c_name(s: crate::DeviceState) -> &'static str {
    use crate::DeviceState::*;
    match s {
        Error => "VFIO_DEVICE_STATE_ERROR",
        Stop => "VFIO_DEVICE_STATE_STOP",
        Running => "VFIO_DEVICE_STATE_RUNNING",
        StopCopy => "VFIO_DEVICE_STATE_STOP_COPY",
        Resuming => "VFIO_DEVICE_STATE_RESUMING",
        RunningP2p => "VFIO_DEVICE_STATE_RUNNING_P2P",
        PreCopy => "VFIO_DEVICE_STATE_PRE_COPY",
        PreCopyP2p => "VFIO_DEVICE_STATE_PRE_COPY_P2P",
    }
}
