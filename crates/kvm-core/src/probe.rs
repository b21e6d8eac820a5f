//! Does KVM work here, and if not, why not (the software vCPU is used then).
use kvm_ioctls::{Cap, Kvm};

/// The verdict of [`probe`].
#[derive(Debug, Clone)]
pub struct Probe {
    /// KVM can run the microVM here.
    pub available: bool,
    /// Why not, when it cannot (empty otherwise).
    pub reason: String,
    /// KVM_GET_API_VERSION, 0 when /dev/kvm could not be opened.
    pub api_version: i32,
}

/// Opens /dev/kvm, checks the API version and capabilities the machine needs,
/// and creates (then drops) a VM.
pub fn probe() -> Probe {
    let fail = |reason: String, api_version| Probe { available: false, reason, api_version };
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => return fail(format!("open /dev/kvm: {} (errno {})", std::io::Error::from_raw_os_error(e.errno()), e.errno()), 0),
    };
    let v = kvm.get_api_version();
    if v != 12 {
        return fail(format!("KVM_GET_API_VERSION is {v}, expected 12"), v);
    }
    for (cap, name) in [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS"),
    ] {
        if !kvm.check_extension(cap) {
            return fail(format!("{name} missing"), v);
        }
    }
    match kvm.create_vm() {
        Ok(_) => Probe { available: true, reason: String::new(), api_version: v },
        Err(e) => fail(format!("KVM_CREATE_VM: {} (errno {})", std::io::Error::from_raw_os_error(e.errno()), e.errno()), v),
    }
}
