//! `Group`: /dev/vfio/<N>, attachment to a container, and device fds.

use crate::container::Container;
use crate::device::Device;
use crate::error::{blocking, Blocking};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::Arc;
use vfio_core::kernel;
use vfio_uapi::ioctl::*;

#[napi(object)]
pub struct GroupStatus {
    pub flags: u32,
    /// Every device of the group is bound to a VFIO driver.
    pub viable: bool,
    pub container_set: bool,
}

#[napi]
pub struct Group {
    pub(crate) inner: Arc<kernel::Group>,
}

#[napi]
impl Group {
    /// Opens /dev/vfio/<number> (or `path`, e.g. /dev/vfio/noiommu-0).
    #[napi(ts_return_type = "Promise<Group>")]
    pub fn open(number: u32, path: Option<String>) -> AsyncTask<Blocking<Group>> {
        blocking(move || Ok(Group { inner: Arc::new(kernel::Group::open(number, path.as_deref())?) }))
    }

    #[napi(getter)]
    pub fn fd(&self) -> i32 {
        self.inner.raw_fd()
    }

    #[napi(ts_return_type = "Promise<GroupStatus>")]
    pub fn status(&self) -> AsyncTask<Blocking<GroupStatus>> {
        let g = self.inner.clone();
        blocking(move || {
            let flags = g.status()?;
            Ok(GroupStatus {
                flags,
                viable: flags & VFIO_GROUP_FLAGS_VIABLE != 0,
                container_set: flags & VFIO_GROUP_FLAGS_CONTAINER_SET != 0,
            })
        })
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_container(&self, container: &Container) -> AsyncTask<Blocking<()>> {
        let g = self.inner.clone();
        let c = container.inner.clone();
        blocking(move || g.set_container(&c))
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn unset_container(&self) -> AsyncTask<Blocking<()>> {
        let g = self.inner.clone();
        blocking(move || g.unset_container())
    }

    /// VFIO_GROUP_GET_DEVICE_FD by device name ("0000:65:00.1", an mdev UUID).
    #[napi(ts_return_type = "Promise<Device>")]
    pub fn get_device(&self, name: String) -> AsyncTask<Blocking<Device>> {
        let g = self.inner.clone();
        blocking(move || Ok(Device::from_backend(Arc::new(g.device(&name)?))))
    }
}

// A second impl block of Device, here rather than in device.rs so that only
// this file knows both classes.
#[napi]
impl Device {
    /// Same as `group.getDevice(name)`.
    #[napi(ts_return_type = "Promise<Device>")]
    pub fn open(group: &Group, name: String) -> AsyncTask<Blocking<Device>> {
        group.get_device(name)
    }
}
