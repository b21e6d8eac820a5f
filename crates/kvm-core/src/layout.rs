//! The microVM's fixed guest-physical layout and the workload's control block.
//! vmm/machine/workload.ts mirrors these numbers for the software vCPU; the
//! tests compare the two through `layout_facts()`.
use crate::error::{invalid, Result, VM};
use crate::ram::GuestRam;

/// Guest page size, and the granularity of KVM's dirty log.
pub const PAGE_SIZE: u64 = 4096;
/// One 2 MiB guest page per page-directory entry keeps the page tables at a few
/// fixed pages; KVM still dirty-logs at 4 KiB because logging splits host mappings.
pub const RAM_ALIGN: u64 = 2 << 20;
/// RAM is at most 4 GiB (the largest Buffer Node makes, which the migration
/// code holds the RAM in). Its first 3 GiB are at guest-physical 0; the
/// fourth GiB of the address space stays a hole, as on a PC: the exit MMIO
/// page lives there, and so do the pages Intel KVM reserves for its real-mode
/// TSS (KVM_SET_TSS_ADDR takes a 32-bit address and refuses overlap with a
/// slot). RAM past 3 GiB sits above the hole at [`HIGH_RAM_BASE`], in a slot
/// of its own. Virtual addresses are RAM offsets: the page tables map the
/// offsets past 3 GiB onto the RAM above the hole, so the program and the
/// host agree on "page N" whatever the physical layout.
pub const MAX_RAM: u64 = 4 << 30;
/// Where RAM stops below the hole (and the exit page is).
pub const LOW_RAM_END: u64 = 3 << 30;
/// Guest-physical address of RAM past [`LOW_RAM_END`].
pub const HIGH_RAM_BASE: u64 = 4 << 30;
const GIB: u64 = 1 << 30;

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// Guest-physical address of the 64-bit TSS, after the GDT in the same page.
pub const TSS_ADDR: u64 = 0x1080;
/// Limit of the TSS descriptor: a 104-byte TSS without an I/O bitmap.
pub const TSS_LIMIT: u32 = 103;
/// Guest-physical address of the PML4 (CR3).
pub const PML4_ADDR: u64 = 0x2000;
/// Guest-physical address of the single page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0x3000;
/// Four page directories back to back, so entry `va / 2 MiB` of the flat array
/// at PD_ADDR maps `va` for every virtual address below 4 GiB.
pub const PD_ADDR: u64 = 0x4000;
/// A guest of more than 3 GiB uses the fourth directory for its RAM past
/// 3 GiB, so the exit page's alias gets a directory of its own here (a page
/// the layout reserves below [`FIRST_DATA_PAGE`]).
pub const EXIT_PD_ADDR: u64 = 0xa000;
/// Where the workload program is loaded, and the vCPU's entry point.
pub const CODE_ADDR: u64 = 0x8000;
/// The control block the host and the workload share (offsets `CTL_*`).
pub const CTL_ADDR: u64 = 0x9000;
/// First page the data region may use: everything below is the layout above.
pub const FIRST_DATA_PAGE: u32 = 16;
/// The workload stores here to leave the run loop: no memory slot covers it,
/// so KVM exits with KVM_EXIT_MMIO (I/O ports fault at CPL3 under PVM). The
/// first 2 MiB of the hole, so it is never RAM.
pub const EXIT_MMIO: u64 = LOW_RAM_END;
/// The address the program stores to: a 32-bit displacement is sign-extended,
/// so EXIT_MMIO is reached through the top of the address space, which the
/// page tables map onto it (PML4[511] -> the PDPT, PDPT[511] -> the hole's PD).
/// Same instruction length as before, so the program's layout is unchanged.
pub const EXIT_VADDR: u64 = 0xffff_ffff_0000_0000 | EXIT_MMIO;
/// Where programs installed by layouts up to 1 GiB - 2 MiB stored to leave. A
/// restored RAM image carries its own program and page tables, so such a guest
/// still exits there; below that limit no slot covers the address either.
pub const LEGACY_EXIT_MMIO: u64 = 0x3fe0_0000;

// The page directories must fit below the program, the exit page inside the
// 32-bit hole, and its alias inside a sign-extended 32-bit displacement.
const _: () = assert!(PD_ADDR + (EXIT_MMIO / GIB + 1) * PAGE_SIZE <= CODE_ADDR);
const _: () = assert!(EXIT_PD_ADDR > CTL_ADDR && EXIT_PD_ADDR < FIRST_DATA_PAGE as u64 * PAGE_SIZE);
const _: () = assert!(MAX_RAM <= 4 * GIB && LOW_RAM_END.is_multiple_of(8 * PAGE_SIZE));
const _: () = assert!(EXIT_MMIO + RAM_ALIGN <= 1 << 32 && EXIT_MMIO.is_multiple_of(RAM_ALIGN));
const _: () = assert!(EXIT_VADDR as i64 == EXIT_VADDR as i64 as i32 as i64);

/// Selector of the 64-bit user code segment (GDT entry 3, RPL 3).
pub const SEL_USER_CS: u16 = 0x18 | 3;
/// Selector of the user data segment (GDT entry 4, RPL 3).
pub const SEL_USER_DS: u16 = 0x20 | 3;
/// Selector of the TSS (GDT entries 5 and 6).
pub const SEL_TSS: u16 = 0x28;

// Control block offsets (see guest/workload.S).
/// u64: iterations the workload completed.
pub const CTL_COUNTER: u64 = 0x08;
/// u32: running checksum of everything the workload wrote.
pub const CTL_CHECKSUM: u64 = 0x10;
/// u32: the xorshift32 state.
pub const CTL_RNG: u64 = 0x14;
/// u64: where in the region the next iteration writes.
pub const CTL_CURSOR: u64 = 0x18;
/// u32: first page of the data region.
pub const CTL_REGION_START: u64 = 0x20;
/// u32: pages in the data region.
pub const CTL_REGION_PAGES: u64 = 0x24;
/// u32: pages written per iteration.
pub const CTL_PAGES_PER_ITER: u64 = 0x28;
/// u32: busy-loop count after each iteration.
pub const CTL_SPIN: u64 = 0x2c;
/// u32: non-zero asks the workload to leave through the exit page.
pub const CTL_STOP: u64 = 0x30;

/// The assembled guest program (guest/workload.S).
pub static WORKLOAD_CODE: &[u8] = include_bytes!("../guest/workload.bin");

/// The workload's knobs. `seed` must be non-zero: xorshift32 stays at zero forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadParams {
    /// First guest page of the data region (at least [`FIRST_DATA_PAGE`]).
    pub region_start: u32,
    /// Pages of the data region.
    pub region_pages: u32,
    /// Pages written per iteration.
    pub pages_per_iter: u32,
    /// Busy-loop count after each iteration: the dirty-rate knob.
    pub spin: u32,
    /// xorshift32 seed.
    pub seed: u32,
}

impl WorkloadParams {
    /// Default for a RAM size: the whole RAM after the fixed layout, 8 pages per iteration.
    pub fn default_for(ram_size: u64) -> Self {
        let pages = (ram_size / PAGE_SIZE) as u32;
        WorkloadParams {
            region_start: FIRST_DATA_PAGE,
            region_pages: pages.saturating_sub(FIRST_DATA_PAGE).max(1),
            pages_per_iter: 8,
            spin: 0,
            seed: 0x1234_5678,
        }
    }

    /// EINVAL unless the region lies inside `ram_size` bytes of RAM above the
    /// fixed layout and the seed is usable.
    pub fn validate(&self, ram_size: u64) -> Result<()> {
        let ram_pages = ram_size / PAGE_SIZE;
        if self.region_start < FIRST_DATA_PAGE {
            return Err(invalid(VM, "WorkloadParams::validate", format!(
                "workload region_start {} overlaps the fixed layout (first data page is {FIRST_DATA_PAGE})",
                self.region_start
            )));
        }
        if self.region_pages == 0 {
            return Err(invalid(VM, "WorkloadParams::validate", "workload region_pages must be at least 1"));
        }
        if self.region_start as u64 + self.region_pages as u64 > ram_pages {
            return Err(invalid(VM, "WorkloadParams::validate", format!(
                "workload region {}+{} pages runs past guest RAM of {ram_pages} pages",
                self.region_start, self.region_pages
            )));
        }
        if self.seed == 0 {
            return Err(invalid(VM, "WorkloadParams::validate", "workload seed must be non-zero (xorshift32 would stay at 0)"));
        }
        Ok(())
    }
}

/// EINVAL unless `ram_size` is a non-zero multiple of [`RAM_ALIGN`] up to [`MAX_RAM`].
pub fn validate_ram_size(ram_size: u64) -> Result<()> {
    if ram_size == 0 || !ram_size.is_multiple_of(RAM_ALIGN) || ram_size > MAX_RAM {
        return Err(invalid(
            VM,
            "validate_ram_size",
            format!("guest RAM size {ram_size} must be a non-zero multiple of 2 MiB and at most 4 GiB"),
        ));
    }
    Ok(())
}

/// The guest-physical address of RAM offset `offset`: below the hole as is,
/// past 3 GiB above it.
pub fn gpa_of(offset: u64) -> u64 {
    if offset < LOW_RAM_END {
        offset
    } else {
        offset - LOW_RAM_END + HIGH_RAM_BASE
    }
}

/// The KVM memory slots of `ram_size` bytes of RAM: (guest-physical
/// address, offset into the RAM, length), low part first.
pub fn slots(ram_size: u64) -> Vec<(u64, u64, u64)> {
    let low = ram_size.min(LOW_RAM_END);
    let mut v = vec![(0, 0, low)];
    if ram_size > LOW_RAM_END {
        v.push((HIGH_RAM_BASE, LOW_RAM_END, ram_size - LOW_RAM_END));
    }
    v
}

fn gdt_entries() -> [u64; 7] {
    let tss_lo = (TSS_LIMIT as u64 & 0xffff)
        | ((TSS_ADDR & 0xff_ffff) << 16)
        | (0x8b << 40) // present, type 11: busy 64-bit TSS (what TR must hold)
        | (((TSS_ADDR >> 24) & 0xff) << 56);
    let tss_hi = TSS_ADDR >> 32;
    [
        0,
        0x00af_9b00_0000_ffff, // kernel code, long mode (unused, present for completeness)
        0x00cf_9300_0000_ffff, // kernel data
        0x00af_fb00_0000_ffff, // user code, DPL3, long mode
        0x00cf_f300_0000_ffff, // user data, DPL3
        tss_lo,
        tss_hi,
    ]
}

/// Limit of the GDT: seven 8-byte entries.
pub const GDT_LIMIT: u16 = 7 * 8 - 1;

/// Writes the page tables, GDT, TSS, guest program and control block. The
/// page-table entries carry Accessed/Dirty already so the CPU never writes them,
/// which keeps the dirty log down to the pages the program itself stores to.
pub fn install(ram: &GuestRam, params: &WorkloadParams) -> Result<()> {
    let size = ram.len() as u64;
    validate_ram_size(size)?;
    params.validate(size)?;
    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const A: u64 = 1 << 5;
    const D: u64 = 1 << 6;
    const PS: u64 = 1 << 7;
    let table = PDPT_ADDR | P | RW | US | A;
    ram.write_u64(PML4_ADDR, table)?;
    ram.write_u64(PML4_ADDR + 511 * 8, table)?;
    for g in 0..size.div_ceil(GIB) {
        ram.write_u64(PDPT_ADDR + g * 8, (PD_ADDR + g * PAGE_SIZE) | P | RW | US | A)?;
    }
    for i in 0..size / RAM_ALIGN {
        ram.write_u64(PD_ADDR + i * 8, gpa_of(i * RAM_ALIGN) | P | RW | US | A | D | PS)?;
    }
    if size <= LOW_RAM_END {
        // Up to 3 GiB the fourth directory is free: the exit page is mapped
        // there, at its own address and through the alias (the layout every
        // guest up to 3 GiB has had, which restored images carry).
        let exit_pd = (PD_ADDR + (EXIT_MMIO / GIB) * PAGE_SIZE) | P | RW | US | A;
        ram.write_u64(PDPT_ADDR + (EXIT_MMIO / GIB) * 8, exit_pd)?;
        ram.write_u64(PDPT_ADDR + ((EXIT_VADDR >> 30) & 511) * 8, exit_pd)?;
        ram.write_u64(PD_ADDR + (EXIT_MMIO / RAM_ALIGN) * 8, EXIT_MMIO | P | RW | US | A | D | PS)?;
    } else {
        // Past 3 GiB the fourth directory maps RAM: the alias alone reaches the exit page.
        ram.write(EXIT_PD_ADDR, &[0u8; PAGE_SIZE as usize])?;
        ram.write_u64(EXIT_PD_ADDR + ((EXIT_VADDR >> 21) & 511) * 8, EXIT_MMIO | P | RW | US | A | D | PS)?;
        ram.write_u64(PDPT_ADDR + ((EXIT_VADDR >> 30) & 511) * 8, EXIT_PD_ADDR | P | RW | US | A)?;
    }
    for (i, e) in gdt_entries().iter().enumerate() {
        ram.write_u64(GDT_ADDR + i as u64 * 8, *e)?;
    }
    // TSS: no I/O bitmap (offset past the limit).
    ram.write(TSS_ADDR, &[0u8; 104])?;
    ram.write(TSS_ADDR + 102, &(104u16).to_le_bytes())?;
    ram.write(CODE_ADDR, WORKLOAD_CODE)?;
    write_params(ram, params)?;
    ram.write_u64(CTL_ADDR + CTL_COUNTER, 0)?;
    ram.write_u32(CTL_ADDR + CTL_CHECKSUM, region_sum(ram, params)?)?;
    ram.write_u32(CTL_ADDR + CTL_RNG, params.seed)?;
    ram.write_u32(CTL_ADDR + CTL_CURSOR, 0)?;
    ram.write_u32(CTL_ADDR + CTL_STOP, 0)?;
    Ok(())
}

/// Rewrites the knobs only (the running state — counter, checksum, rng, cursor — stays).
pub fn write_params(ram: &GuestRam, params: &WorkloadParams) -> Result<()> {
    params.validate(ram.len() as u64)?;
    ram.write_u32(CTL_ADDR + CTL_REGION_START, params.region_start)?;
    ram.write_u32(CTL_ADDR + CTL_REGION_PAGES, params.region_pages)?;
    ram.write_u32(CTL_ADDR + CTL_PAGES_PER_ITER, params.pages_per_iter)?;
    ram.write_u32(CTL_ADDR + CTL_SPIN, params.spin)?;
    Ok(())
}

/// The checksum invariant: the sum mod 2^32 of every u32 in the data region.
pub fn region_sum(ram: &GuestRam, params: &WorkloadParams) -> Result<u32> {
    let start = params.region_start as u64 * PAGE_SIZE;
    let len = params.region_pages as u64 * PAGE_SIZE;
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    let mut sum = 0u32;
    let mut off = 0;
    while off < len {
        ram.read(start + off, &mut buf)?;
        for w in buf.chunks_exact(4) {
            sum = sum.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
        off += PAGE_SIZE;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_sizes_and_params() {
        assert!(validate_ram_size(3 << 20).is_err());
        validate_ram_size(4 << 20).unwrap();
        validate_ram_size(2 << 30).unwrap();
        validate_ram_size(3 << 30).unwrap();
        validate_ram_size(MAX_RAM).unwrap();
        assert!(validate_ram_size(MAX_RAM + RAM_ALIGN).is_err());
        let p = WorkloadParams::default_for(4 << 20);
        p.validate(4 << 20).unwrap();
        assert!(WorkloadParams { seed: 0, ..p }.validate(4 << 20).is_err());
        assert!(WorkloadParams { region_start: 8, ..p }.validate(4 << 20).is_err());
        assert!(WorkloadParams { region_pages: 0, ..p }.validate(4 << 20).is_err());
        assert!(WorkloadParams { region_pages: p.region_pages + 1, ..p }.validate(4 << 20).is_err());
    }

    #[test]
    fn install_writes_code_and_consistent_checksum() {
        let ram = GuestRam::new(2 << 20).unwrap();
        ram.write_u32(FIRST_DATA_PAGE as u64 * PAGE_SIZE, 7).unwrap();
        let p = WorkloadParams::default_for(2 << 20);
        install(&ram, &p).unwrap();
        assert_eq!(ram.read_u32(CTL_ADDR + CTL_CHECKSUM).unwrap(), 7);
        let mut code = vec![0u8; WORKLOAD_CODE.len()];
        ram.read(CODE_ADDR, &mut code).unwrap();
        assert_eq!(code, WORKLOAD_CODE);
        // The program hard-codes the control block and exit port.
        assert_eq!(&WORKLOAD_CODE[0..5], &[0xbb, 0x00, 0x90, 0x00, 0x00]);
    }

    /// The CPU's 4-level walk over the tables in guest RAM: the physical address
    /// `va` reaches at CPL3 with a write, or None where it would fault.
    fn walk(ram: &GuestRam, va: u64) -> Option<u64> {
        const NEED: u64 = 1 | 2 | 4; // present, writable, user
        let pml4e = ram.read_u64(PML4_ADDR + ((va >> 39) & 511) * 8).unwrap();
        if pml4e & NEED != NEED {
            return None;
        }
        let pdpte = ram.read_u64((pml4e & !0xfff) + ((va >> 30) & 511) * 8).unwrap();
        if pdpte & NEED != NEED || pdpte & 0x80 != 0 {
            return None;
        }
        let pde = ram.read_u64((pdpte & !0xfff) + ((va >> 21) & 511) * 8).unwrap();
        if pde & (NEED | 0x80) != NEED | 0x80 {
            return None;
        }
        Some((pde & !(RAM_ALIGN - 1) & ((1 << 52) - 1)) | (va & (RAM_ALIGN - 1)))
    }

    #[test]
    fn page_tables_map_all_ram_and_the_exit_page_only() {
        for size in [2u64 << 20, 1 << 30, (1 << 30) + RAM_ALIGN, 2 << 30, 3 << 30, (3 << 30) + RAM_ALIGN, MAX_RAM] {
            let ram = GuestRam::new(size as usize).unwrap();
            install(&ram, &WorkloadParams { region_pages: 1, ..WorkloadParams::default_for(size) }).unwrap();
            for va in [0, CTL_ADDR, (1 << 30) - 4, 1 << 30, (2 << 30) - 4, 2 << 30, (3 << 30) - 4, 3 << 30, size - 4] {
                if va < size {
                    assert_eq!(walk(&ram, va), Some(gpa_of(va)), "RAM at {va:#x} of {size:#x}");
                }
            }
            // Up to 3 GiB the byte past RAM at 3 GiB is the exit page itself, mapped 1:1 as well.
            let past = if size == EXIT_MMIO { Some(EXIT_MMIO) } else { None };
            if size < 4 << 30 {
                assert_eq!(walk(&ram, size), past, "first byte past RAM of {size:#x}");
                assert_eq!(walk(&ram, size + RAM_ALIGN), None, "past RAM of {size:#x}");
            }
            assert_eq!(walk(&ram, EXIT_VADDR), Some(EXIT_MMIO));
            assert_eq!(walk(&ram, EXIT_VADDR + RAM_ALIGN), None);
            // Entries are preset Accessed (and Dirty on leaves): the CPU never writes them.
            let pde = ram.read_u64(PD_ADDR + (size / RAM_ALIGN - 1) * 8).unwrap();
            assert_eq!(pde & 0x60, 0x60);
        }
    }

    #[test]
    fn slots_split_at_the_hole() {
        assert_eq!(slots(2 << 30), vec![(0, 0, 2 << 30)]);
        assert_eq!(slots(3 << 30), vec![(0, 0, 3 << 30)]);
        assert_eq!(slots(MAX_RAM), vec![(0, 0, 3 << 30), (HIGH_RAM_BASE, 3 << 30, 1 << 30)]);
        assert_eq!(gpa_of((3 << 30) - PAGE_SIZE), (3 << 30) - PAGE_SIZE);
        assert_eq!(gpa_of(3 << 30), HIGH_RAM_BASE);
        // The exit page and KVM's real-mode TSS stay in the hole, outside every slot.
        for (gpa, _, len) in slots(MAX_RAM) {
            assert!(EXIT_MMIO + PAGE_SIZE <= gpa || EXIT_MMIO >= gpa + len);
            assert!(0xfffb_d000 + 3 * PAGE_SIZE <= gpa || 0xfffb_d000 >= gpa + len);
        }
    }

    #[test]
    fn program_stores_to_the_exit_alias() {
        // mov %eax, disp32 (89 04 25 d32): the displacement is sign-extended.
        let at = WORKLOAD_CODE.windows(3).position(|w| w == [0x89, 0x04, 0x25]).expect("exit store");
        let d = &WORKLOAD_CODE[at + 3..at + 7];
        let va = i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64 as u64;
        assert_eq!(va, EXIT_VADDR);
        const { assert!(EXIT_MMIO >= LOW_RAM_END && EXIT_MMIO < HIGH_RAM_BASE && LEGACY_EXIT_MMIO < EXIT_MMIO) };
    }
}
