//! `PassedVfio`: the kernel VFIO objects a local migration's source passed
//! (container, group and device fds), held by the destination as one set
//! until it starts the guest on them or gives them up. Until then nothing
//! here touches the device: adopting only asks each fd what it is.

use crate::container::Container;
use crate::device::Device;
use crate::error::{blocking, u64_arg, Blocking};
use crate::group::Group;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use vfio_core::kernel::{Passed, VfioError};

/// A passed device fd and the name the source gave the device.
#[napi(object)]
pub struct PassedDeviceFd {
    /// The descriptor, taken from the channel; owned by the call from then on.
    pub fd: i32,
    /// "0000:65:00.1" or an mdev UUID.
    pub name: String,
}

struct Held {
    passed: Passed,
    // Per container, iova -> the Buffer whose address the mapping now reads
    // and writes: held so the memory outlives the kernel's use of it.
    vaddrs: Vec<BTreeMap<u64, Buffer>>,
}

/// The set of passed kernel VFIO objects. `close()` lets go of all of them;
/// objects handed out by `container(i)`, `group(i)`, `device(i)` hold their
/// own references to the same fds.
#[napi]
pub struct PassedVfio {
    held: Arc<Mutex<Option<Held>>>,
}

fn closed(call: &str) -> VfioError {
    VfioError::new(libc::EBADF, call, format!("passed VFIO objects: {call}"), Some("already closed (the handover was given up or finished)"))
}

fn owned(fd: i32, what: &str) -> std::result::Result<OwnedFd, VfioError> {
    if fd < 0 {
        return Err(VfioError::new(libc::EBADF, "PassedVfio.adopt", format!("passed {what}: fd {fd}"), Some("not a descriptor")));
    }
    // SAFETY: the caller hands over a descriptor it took from the channel
    // (takeFds) and no longer uses; from here this OwnedFd is its owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl PassedVfio {
    fn with<T>(held: &Mutex<Option<Held>>, call: &str, f: impl FnOnce(&mut Held) -> std::result::Result<T, VfioError>) -> std::result::Result<T, VfioError> {
        let mut g = held.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_mut() {
            Some(h) => f(h),
            None => Err(closed(call)),
        }
    }
}

#[napi]
impl PassedVfio {
    /// Takes ownership of every fd given and checks each is the VFIO object
    /// it claims to be. On any refusal all of them are closed (a descriptor
    /// listed twice is refused, and closed once).
    #[napi(ts_return_type = "Promise<PassedVfio>")]
    pub fn adopt(containers: Vec<i32>, groups: Vec<i32>, devices: Vec<PassedDeviceFd>) -> AsyncTask<Blocking<PassedVfio>> {
        let mut all: Vec<i32> = containers.iter().chain(groups.iter()).copied().chain(devices.iter().map(|d| d.fd)).collect();
        all.sort_unstable();
        let dup = all.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
        // Owned at once (no syscall): whatever fails from here closes them.
        let owned_all = match dup {
            None => {
                let c: std::result::Result<Vec<_>, _> = containers.iter().map(|&fd| owned(fd, "container")).collect();
                let g: std::result::Result<Vec<_>, _> = groups.iter().map(|&fd| owned(fd, "group")).collect();
                let d: std::result::Result<Vec<_>, _> = devices.into_iter().map(|d| owned(d.fd, "device").map(|fd| (fd, d.name))).collect();
                Ok((c, g, d))
            }
            Some(fd) => {
                all.dedup();
                // Each number once, so nothing is closed twice.
                Err((fd, all.into_iter().filter(|&x| x >= 0).map(|x| owned(x, "descriptor")).collect::<Vec<_>>()))
            }
        };
        blocking(move || {
            let (c, g, d) = match owned_all {
                Ok(x) => x,
                Err((fd, to_close)) => {
                    drop(to_close);
                    return Err(VfioError::invalid("PassedVfio.adopt", format!("passed VFIO objects: fd {fd}"), "the same descriptor is listed twice"));
                }
            };
            let passed = Passed::adopt(c?, g?, d?)?;
            let vaddrs = passed.containers.iter().map(|_| BTreeMap::new()).collect();
            Ok(PassedVfio { held: Arc::new(Mutex::new(Some(Held { passed, vaddrs }))) })
        })
    }

    /// Whether the set is still held (not closed).
    #[napi(getter)]
    pub fn open(&self) -> bool {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The successor's half of the vaddr handover: the mapping of container
    /// `container` at `iova` (as long as `buffer`) now reads and writes
    /// `buffer`, this process's map of the same memfd pages. The Buffer is
    /// held until `invalidateVaddr` or `close`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn update_vaddr(&self, container: u32, buffer: Buffer, iova: BigInt) -> AsyncTask<Blocking<()>> {
        let held = self.held.clone();
        let iova = u64_arg(&iova, "iova", "VFIO_IOMMU_MAP_DMA");
        blocking(move || {
            let iova = iova?;
            Self::with(&held, "updateVaddr", |h| {
                let c = h.passed.containers.get(container as usize).cloned().ok_or_else(|| {
                    VfioError::invalid("VFIO_IOMMU_MAP_DMA", format!("passed VFIO objects: container {container}"), &format!("{} container(s) were passed", h.passed.containers.len()))
                })?;
                if buffer.is_empty() {
                    return Err(VfioError::invalid("VFIO_IOMMU_MAP_DMA", format!("{}: VFIO_IOMMU_MAP_DMA VADDR iova {iova:#x}", c.path()), "buffer is empty"));
                }
                // SAFETY: the Buffer is stored below until invalidateVaddr or
                // close, which keeps its memory alive; V8 never moves it.
                unsafe { c.update_vaddr(buffer.as_ptr() as u64, iova, buffer.len() as u64)? };
                h.vaddrs[container as usize].insert(iova, buffer);
                Ok(())
            })
        })
    }

    /// Gives back what `updateVaddr` took, for container `container`: the
    /// mappings stay, their vaddr is forgotten again (a start that failed
    /// after GO rolls back to this, so the source can resume on them).
    /// Resolves the bytes the kernel covered (0 when none was updated).
    #[napi(ts_return_type = "Promise<bigint>")]
    pub fn invalidate_vaddr(&self, container: u32) -> AsyncTask<Blocking<BigInt>> {
        let held = self.held.clone();
        blocking(move || {
            Self::with(&held, "invalidateVaddr", |h| {
                let Some(c) = h.passed.containers.get(container as usize).cloned() else {
                    return Err(VfioError::invalid("VFIO_IOMMU_UNMAP_DMA", format!("passed VFIO objects: container {container}"), "no such container"));
                };
                let mut bytes = 0;
                let maps = std::mem::take(&mut h.vaddrs[container as usize]);
                for (iova, b) in &maps {
                    bytes += c.invalidate_vaddr(Some((*iova, b.len() as u64)))?;
                }
                Ok(BigInt::from(bytes))
            })
        })
    }

    /// Lets go of every object of the set (their fds close when nothing
    /// else holds them). Resolves false when it was closed already.
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn close(&self) -> AsyncTask<Blocking<bool>> {
        let held = self.held.clone();
        // The drop is the close: off this thread, as any close of a device.
        blocking(move || Ok(held.lock().unwrap_or_else(|p| p.into_inner()).take().is_some()))
    }

    /// Container `i` as a `Container` (no mappings of its own: they are the source's).
    #[napi]
    pub fn container(&self, i: u32) -> Option<Container> {
        let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()?.passed.containers.get(i as usize).map(|c| Container::adopted(c.clone()))
    }

    /// Group `i` as a `Group`.
    #[napi]
    pub fn group(&self, i: u32) -> Option<Group> {
        let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()?.passed.groups.get(i as usize).map(|x| Group { inner: x.clone() })
    }

    /// Device `i` as a `Device`.
    #[napi]
    pub fn device(&self, i: u32) -> Option<Device> {
        let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()?.passed.devices.get(i as usize).map(|d| Device::from_backend(d.clone()))
    }
}
