//! Putting a fresh vCPU into 64-bit user mode at the workload's entry, and
//! moving its complete state in and out.
use crate::error::{invalid, kvm as kvm_err, refused, Result, KVM, VCPU};
use crate::layout::*;
use crate::state::VcpuState;
use kvm_bindings::{kvm_msr_entry, kvm_segment, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

/// MSRs worth carrying for a 64-bit guest (syscall/sysenter setup, TSC, PAT,
/// kernel GS); filtered at runtime by what this KVM lists as saveable.
const WANTED_MSRS: &[u32] = &[
    0x10,        // IA32_TSC
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // MISC_ENABLE
    0x277,       // PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

/// The MSRs of `WANTED_MSRS` this KVM can save and restore.
pub fn saveable_msrs(kvm: &Kvm) -> Result<Vec<u32>> {
    let list = kvm.get_msr_index_list().map_err(|e| kvm_err(e, KVM, "KVM_GET_MSR_INDEX_LIST"))?;
    let have = list.as_slice();
    Ok(WANTED_MSRS.iter().copied().filter(|m| have.contains(m)).collect())
}

/// Gives the vCPU every CPUID leaf KVM supports.
pub fn set_cpuid(kvm: &Kvm, vcpu: &VcpuFd) -> Result<()> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| kvm_err(e, KVM, "KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid).map_err(|e| kvm_err(e, VCPU, "KVM_SET_CPUID2"))
}

fn user_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl: 3,
        db: if code { 0 } else { 1 },
        s: 1,
        l: if code { 1 } else { 0 },
        g: 1,
        ..Default::default()
    }
}

/// Long mode is entered directly (no real-mode trampoline): on these hosts
/// anything outside CPL3 is emulated an instruction at a time.
pub fn init_long_mode(vcpu: &VcpuFd) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(|e| kvm_err(e, VCPU, "KVM_GET_SREGS"))?;
    sregs.cs = user_segment(SEL_USER_CS, true);
    let data = user_segment(SEL_USER_DS, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS_ADDR,
        limit: TSS_LIMIT,
        selector: SEL_TSS,
        type_: 11,
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_segment { type_: 2, present: 1, unusable: 1, ..Default::default() };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = (1 << 5) | (1 << 9) | (1 << 10); // PAE, OSFXSR, OSXMMEXCPT
    sregs.cr0 = 0x8000_0033 | (1 << 16); // PG, WP, NE, ET, MP, PE
    sregs.efer = (1 << 8) | (1 << 10); // LME, LMA
    vcpu.set_sregs(&sregs).map_err(|e| kvm_err(e, VCPU, "KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|e| kvm_err(e, VCPU, "KVM_SET_REGS"))
}

/// Reads the whole vCPU state (on the vCPU's own thread).
pub fn save(vcpu: &VcpuFd, msr_list: &[u32], has_xsave: bool, has_xcrs: bool) -> Result<VcpuState> {
    let mut s = VcpuState {
        regs: vcpu.get_regs().map_err(|e| kvm_err(e, VCPU, "KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(|e| kvm_err(e, VCPU, "KVM_GET_SREGS"))?,
        fpu: vcpu.get_fpu().map_err(|e| kvm_err(e, VCPU, "KVM_GET_FPU"))?,
        events: vcpu.get_vcpu_events().map_err(|e| kvm_err(e, VCPU, "KVM_GET_VCPU_EVENTS"))?,
        debugregs: vcpu.get_debug_regs().map_err(|e| kvm_err(e, VCPU, "KVM_GET_DEBUGREGS"))?,
        ..Default::default()
    };
    if has_xsave {
        s.xsave = Some(Box::new(vcpu.get_xsave().map_err(|e| kvm_err(e, VCPU, "KVM_GET_XSAVE"))?));
    }
    if has_xcrs {
        s.xcrs = Some(vcpu.get_xcrs().map_err(|e| kvm_err(e, VCPU, "KVM_GET_XCRS"))?);
    }
    let entries: Vec<kvm_msr_entry> = msr_list.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
    let mut msrs = Msrs::from_entries(&entries).map_err(|_| invalid(VCPU, "KVM_GET_MSRS", "too many MSRs"))?;
    let n = vcpu.get_msrs(&mut msrs).map_err(|e| kvm_err(e, VCPU, "KVM_GET_MSRS"))?;
    if n != entries.len() {
        let bad = msrs.as_slice().get(n).map(|e| e.index).unwrap_or(0);
        return Err(refused(libc::EIO, VCPU, "KVM_GET_MSRS", format!("read {n} of {} MSRs (stopped at {bad:#x})", entries.len())));
    }
    s.msrs = msrs.as_slice().iter().map(|e| (e.index, e.data)).collect();
    Ok(s)
}

/// Order matters: sregs first (mode, CR4.OSXSAVE gates xcrs), then the rest;
/// events last so a pending exception is not dropped by the register writes.
pub fn restore(vcpu: &VcpuFd, s: &VcpuState, has_xsave: bool, has_xcrs: bool) -> Result<()> {
    vcpu.set_sregs(&s.sregs).map_err(|e| kvm_err(e, VCPU, "KVM_SET_SREGS"))?;
    vcpu.set_regs(&s.regs).map_err(|e| kvm_err(e, VCPU, "KVM_SET_REGS"))?;
    match (&s.xsave, has_xsave) {
        // SAFETY: the buffer is the legacy 4 KiB area the ioctl expects.
        (Some(x), true) => unsafe { vcpu.set_xsave(x) }.map_err(|e| kvm_err(e, VCPU, "KVM_SET_XSAVE"))?,
        _ => vcpu.set_fpu(&s.fpu).map_err(|e| kvm_err(e, VCPU, "KVM_SET_FPU"))?,
    }
    if let (Some(x), true) = (&s.xcrs, has_xcrs) {
        vcpu.set_xcrs(x).map_err(|e| kvm_err(e, VCPU, "KVM_SET_XCRS"))?;
    }
    let entries: Vec<kvm_msr_entry> =
        s.msrs.iter().map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| invalid(VCPU, "KVM_SET_MSRS", "too many MSRs in the vCPU state"))?;
    let n = vcpu.set_msrs(&msrs).map_err(|e| kvm_err(e, VCPU, "KVM_SET_MSRS"))?;
    if n != entries.len() {
        let bad = entries.get(n).map(|e| e.index).unwrap_or(0);
        return Err(refused(libc::EINVAL, VCPU, "KVM_SET_MSRS", format!("rejected MSR {bad:#x} ({n} of {} set)", entries.len())));
    }
    vcpu.set_debug_regs(&s.debugregs).map_err(|e| kvm_err(e, VCPU, "KVM_SET_DEBUGREGS"))?;
    vcpu.set_vcpu_events(&s.events).map_err(|e| kvm_err(e, VCPU, "KVM_SET_VCPU_EVENTS"))
}
