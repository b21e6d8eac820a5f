//! The kernel VFIO objects a local migration's source passed: containers,
//! groups and devices, adopted together or not at all. A destination that
//! keeps half of them would hold a device it cannot run (no group, no
//! container) while the source, told the migration failed, runs it; so one
//! refused fd closes every fd of the set.

use super::container::Container;
use super::device::KernelDevice;
use super::error::Result;
use super::group::Group;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Every object of one handover, in the order the source listed them.
pub struct Passed {
    /// Containers (`/dev/vfio/vfio` opens), each holding its DMA mappings.
    pub containers: Vec<Arc<Container>>,
    /// Groups, each attached to one of the containers by the source.
    pub groups: Vec<Arc<Group>>,
    /// Devices, still running as the source left them.
    pub devices: Vec<Arc<KernelDevice>>,
}

impl Passed {
    /// Checks each fd is what it is claimed to be (containers first, then
    /// groups, then devices: a group is checked to be in a container, so the
    /// containers must be there). On the first refusal every fd, checked
    /// or not, is closed (dropped) and the refusal returned.
    pub fn adopt(containers: Vec<OwnedFd>, groups: Vec<OwnedFd>, devices: Vec<(OwnedFd, String)>) -> Result<Passed> {
        let n = containers.len();
        let c: Vec<Arc<Container>> = containers
            .into_iter()
            .enumerate()
            .map(|(i, fd)| Container::from_fd(fd, &format!("passed container {}/{n}", i + 1)).map(Arc::new))
            .collect::<Result<_>>()?;
        let n = groups.len();
        let g: Vec<Arc<Group>> =
            groups.into_iter().enumerate().map(|(i, fd)| Group::from_fd(fd, &format!("passed group {}/{n}", i + 1)).map(Arc::new)).collect::<Result<_>>()?;
        let d: Vec<Arc<KernelDevice>> =
            devices.into_iter().map(|(fd, name)| KernelDevice::from_fd(fd, &name).map(Arc::new)).collect::<Result<_>>()?;
        Ok(Passed { containers: c, groups: g, devices: d })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::test_fds::memfd_open;

    fn memfd(name: &std::ffi::CStr) -> OwnedFd {
        vmm_sys::mem::memfd(name, 0).unwrap()
    }

    #[test]
    fn one_refused_fd_closes_the_whole_set() {
        // /dev/null answers VFIO_GET_API_VERSION with ENOTTY: the first
        // container is refused, and nothing after it is even looked at.
        let names = [c"passed-set-c", c"passed-set-g", c"passed-set-d"];
        let e = Passed::adopt(vec![memfd(names[0])], vec![memfd(names[1])], vec![(memfd(names[2]), "0000:65:00.1".into())]).err().unwrap();
        assert_eq!(e.errno, libc::ENOTTY);
        assert!(e.to_string().contains("passed container 1/1: VFIO_GET_API_VERSION"), "{e}");
        for n in names {
            assert!(!memfd_open(n.to_str().unwrap()), "{n:?} was closed");
        }
    }

    #[test]
    fn an_empty_set_is_adopted() {
        let p = Passed::adopt(vec![], vec![], vec![]).unwrap();
        assert!(p.containers.is_empty() && p.groups.is_empty() && p.devices.is_empty());
    }
}
