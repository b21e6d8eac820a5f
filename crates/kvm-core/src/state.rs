//! The complete architectural state of one vCPU, and its byte format.
//!
//! Format (little-endian): magic "KVMVCPU1", then sections `tag u32, len u32, bytes`.
//! Struct sections hold the kernel's own structs (their layout is KVM ABI, so the
//! bytes mean the same on the destination kernel); the MSR section holds
//! `index u32, pad u32, value u64` records. Sizes are checked on load.
use crate::error::{invalid, Result, VCPU};
use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

/// The first bytes of every state blob.
pub const MAGIC: &[u8; 8] = b"KVMVCPU1";

const TAG_REGS: u32 = 1;
const TAG_SREGS: u32 = 2;
const TAG_FPU: u32 = 3;
const TAG_XSAVE: u32 = 4;
const TAG_XCRS: u32 = 5;
const TAG_MSRS: u32 = 6;
const TAG_EVENTS: u32 = 7;
const TAG_DEBUGREGS: u32 = 8;

/// Bound on a state blob: the largest section is the 4 KiB legacy xsave area.
pub const MAX_STATE_BYTES: usize = 64 * 1024;

/// Everything KVM lets userspace read of a vCPU that this guest can change.
#[derive(Default)]
pub struct VcpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers, EFER.
    pub sregs: kvm_sregs,
    /// Legacy FPU/SSE state; used when the host has no XSAVE.
    pub fpu: kvm_fpu,
    /// The XSAVE area (the legacy 4 KiB one), when the host supports it.
    pub xsave: Option<Box<kvm_xsave>>,
    /// Extended control registers (XCR0), when the host supports them.
    pub xcrs: Option<kvm_xcrs>,
    /// (index, value) of every MSR worth carrying that this host can save.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts, NMIs and interrupt shadows.
    pub events: kvm_vcpu_events,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
}

/// KVM ABI structs whose raw bytes are the state format.
///
/// # Safety
/// Implementors are bindgen's `#[repr(C)]` mirrors of uAPI structs made of
/// integers and integer arrays whose pads the header names as fields, so
/// every byte is initialised and any bytes form a valid value.
unsafe trait Abi: Default {}
// SAFETY: eighteen u64s.
unsafe impl Abi for kvm_regs {}
// SAFETY: segments and tables with named padding, u64 registers, a u64 array.
unsafe impl Abi for kvm_sregs {}
// SAFETY: byte arrays, u16/u8 fields with pad1 named, u64s, u32 mxcsr and pad2.
unsafe impl Abi for kvm_fpu {}
// SAFETY: a u32 array (the zero-sized flexible tail adds no bytes).
unsafe impl Abi for kvm_xsave {}
// SAFETY: u32 count and flags, an array of (u32, u32, u64), u64 padding.
unsafe impl Abi for kvm_xcrs {}
// SAFETY: u8 groups with named pads, two u32s, 26 reserved bytes and a u8
// that bring the u64 payload to offset 56.
unsafe impl Abi for kvm_vcpu_events {}
// SAFETY: u64 registers, flags and reserved words.
unsafe impl Abi for kvm_debugregs {}

fn pod_bytes<T: Abi>(v: &T) -> &[u8] {
    // SAFETY: `v` is a live T borrowed for the slice's lifetime, and Abi
    // promises all size_of::<T>() bytes are initialised.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

fn pod_from<T: Abi>(name: &str, b: &[u8]) -> Result<T> {
    if b.len() != std::mem::size_of::<T>() {
        return Err(invalid(VCPU, "VcpuState::from_bytes", format!(
            "vCPU state section {name} is {} bytes, expected {}",
            b.len(),
            std::mem::size_of::<T>()
        )));
    }
    let mut v = T::default();
    // SAFETY: `b` holds exactly size_of::<T>() bytes (checked above), `v` is
    // a distinct local of that size, and Abi makes any bytes a valid T.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), &mut v as *mut T as *mut u8, b.len()) };
    Ok(v)
}

fn xsave_from(b: &[u8]) -> Result<Box<kvm_xsave>> {
    let size = std::mem::size_of::<kvm_xsave>();
    if b.len() != size {
        return Err(invalid(VCPU, "VcpuState::from_bytes", format!("vCPU state section xsave is {} bytes, expected {size}", b.len())));
    }
    let mut v: Box<kvm_xsave> = Box::default();
    // SAFETY: `b` holds exactly size_of::<kvm_xsave>() bytes (checked above),
    // the box owns that many, and any bytes are a valid kvm_xsave (Abi).
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), &mut *v as *mut kvm_xsave as *mut u8, size) };
    Ok(v)
}

fn put(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl VcpuState {
    /// The KVMVCPU1 blob: magic, then one section per part present.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        out.extend_from_slice(MAGIC);
        put(&mut out, TAG_REGS, pod_bytes(&self.regs));
        put(&mut out, TAG_SREGS, pod_bytes(&self.sregs));
        put(&mut out, TAG_FPU, pod_bytes(&self.fpu));
        if let Some(x) = &self.xsave {
            put(&mut out, TAG_XSAVE, pod_bytes(&**x));
        }
        if let Some(x) = &self.xcrs {
            put(&mut out, TAG_XCRS, pod_bytes(x));
        }
        let mut m = Vec::with_capacity(self.msrs.len() * 16);
        for (i, v) in &self.msrs {
            m.extend_from_slice(&i.to_le_bytes());
            m.extend_from_slice(&0u32.to_le_bytes());
            m.extend_from_slice(&v.to_le_bytes());
        }
        put(&mut out, TAG_MSRS, &m);
        put(&mut out, TAG_EVENTS, pod_bytes(&self.events));
        put(&mut out, TAG_DEBUGREGS, pod_bytes(&self.debugregs));
        out
    }

    /// Parses a KVMVCPU1 blob, EINVAL on anything malformed or missing.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() > MAX_STATE_BYTES {
            return Err(invalid(VCPU, "VcpuState::from_bytes", format!("vCPU state of {} bytes exceeds {MAX_STATE_BYTES}", b.len())));
        }
        if b.len() < 8 || &b[..8] != MAGIC {
            return Err(invalid(VCPU, "VcpuState::from_bytes", "vCPU state does not start with magic KVMVCPU1"));
        }
        let mut s = VcpuState::default();
        let mut seen = 0u32;
        let mut p = 8;
        while p < b.len() {
            if b.len() - p < 8 {
                return Err(invalid(VCPU, "VcpuState::from_bytes", format!("vCPU state truncated in a section header at byte {p}")));
            }
            let tag = u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
            let len = u32::from_le_bytes(b[p + 4..p + 8].try_into().unwrap()) as usize;
            p += 8;
            if b.len() - p < len {
                return Err(invalid(VCPU, "VcpuState::from_bytes", format!("vCPU state section {tag} claims {len} bytes, {} left", b.len() - p)));
            }
            let body = &b[p..p + len];
            p += len;
            if tag == 0 || tag > 31 || seen & (1 << tag) != 0 {
                return Err(invalid(VCPU, "VcpuState::from_bytes", format!("vCPU state section tag {tag} is unknown or repeated")));
            }
            seen |= 1 << tag;
            match tag {
                TAG_REGS => s.regs = pod_from("regs", body)?,
                TAG_SREGS => s.sregs = pod_from("sregs", body)?,
                TAG_FPU => s.fpu = pod_from("fpu", body)?,
                TAG_XSAVE => s.xsave = Some(xsave_from(body)?),
                TAG_XCRS => s.xcrs = Some(pod_from("xcrs", body)?),
                TAG_EVENTS => s.events = pod_from("events", body)?,
                TAG_DEBUGREGS => s.debugregs = pod_from("debugregs", body)?,
                TAG_MSRS => {
                    if !body.len().is_multiple_of(16) {
                        return Err(invalid(VCPU, "VcpuState::from_bytes", "vCPU state MSR section is not a whole number of 16-byte records"));
                    }
                    s.msrs = body
                        .chunks_exact(16)
                        .map(|r| {
                            (u32::from_le_bytes(r[0..4].try_into().unwrap()), u64::from_le_bytes(r[8..16].try_into().unwrap()))
                        })
                        .collect();
                }
                _ => return Err(invalid(VCPU, "VcpuState::from_bytes", format!("vCPU state section tag {tag} is unknown"))),
            }
        }
        for (tag, name) in [(TAG_REGS, "regs"), (TAG_SREGS, "sregs"), (TAG_FPU, "fpu"), (TAG_MSRS, "msrs"), (TAG_EVENTS, "events")] {
            if seen & (1 << tag) == 0 {
                return Err(invalid(VCPU, "VcpuState::from_bytes", format!("vCPU state lacks the {name} section")));
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let mut s = VcpuState::default();
        s.regs.rip = 0x8000;
        s.regs.rax = 42;
        s.sregs.cr3 = 0x2000;
        s.msrs = vec![(0xc000_0081, 7), (0x10, 99)];
        let mut x: Box<kvm_xsave> = Box::default();
        x.region[3] = 5;
        s.xsave = Some(x);
        let b = s.to_bytes();
        let t = VcpuState::from_bytes(&b).unwrap();
        assert_eq!(t.regs.rip, 0x8000);
        assert_eq!(t.regs.rax, 42);
        assert_eq!(t.sregs.cr3, 0x2000);
        assert_eq!(t.msrs, s.msrs);
        assert_eq!(t.xsave.unwrap().region[3], 5);
        assert!(t.xcrs.is_none());
        assert!(VcpuState::from_bytes(&b[..b.len() - 1]).is_err());
        assert!(VcpuState::from_bytes(b"KVMVCPU0").is_err());
        assert!(VcpuState::from_bytes(b"KVMVCPU1").is_err()); // sections missing
        let mut dup = b.clone();
        dup.extend_from_slice(&b[8..8 + 8 + std::mem::size_of::<kvm_regs>()]);
        assert!(VcpuState::from_bytes(&dup).is_err());
        let mut bad = b.clone();
        bad[12] = 0xff; // regs length
        assert!(VcpuState::from_bytes(&bad).is_err());
    }
}
