//! Boot CPU state: GDT, identity page tables, segment, control and general
//! registers, FPU and MSRs for the two supported entry protocols.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// Errors while writing the boot CPU state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A boot structure does not fit in guest memory.
    #[error("cannot write {0} into guest memory: {1}")]
    Write(&'static str, vm_memory::GuestMemoryError),
    /// The MSR list could not be built.
    #[error("cannot build the MSR list: {0}")]
    Msrs(String),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
}

const GDT_NULL: usize = 0;
const GDT_CODE64: usize = 1;
const GDT_DATA: usize = 2;
const GDT_TSS: usize = 3;
const GDT_CODE32: usize = 4;

/// The boot GDT: both a 64-bit and a 32-bit code segment, so one table
/// serves both entry modes.
const GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),            // null
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
    gdt_entry(0xc093, 0, 0xfffff), // data
    gdt_entry(0x808b, 0, 0xfffff), // TSS
    gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code
];

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Packs a segment descriptor from its flags, base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment register matching GDT entry `index`.
fn segment(index: usize) -> kvm_segment {
    let entry = GDT[index];
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            ((limit as u32) << 12) | 0xfff
        } else {
            limit as u32
        },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and the identity page tables (first 1 GiB
/// with 2 MiB pages) into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<()> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i * 8) as u64))
            .map_err(|e| Error::Write("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| Error::Write("IDT", e))?;
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(|e| Error::Write("PML4", e))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(|e| Error::Write("PDPT", e))?;
    for i in 0..512u64 {
        // Present, writable, 2 MiB page.
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(|e| Error::Write("page directory", e))?;
    }
    Ok(())
}

/// Sets the segment and control registers of the boot vCPU, starting from
/// the vCPU's reset state in `sregs`.
pub fn setup_sregs(sregs: &mut kvm_sregs, mode: EntryMode) {
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment(match mode {
        EntryMode::Linux64 => GDT_CODE64,
        EntryMode::Pvh => GDT_CODE32,
    });
    let data = segment(GDT_DATA);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT_TSS);
    debug_assert_eq!(segment(GDT_NULL).present, 0);

    match mode {
        EntryMode::Linux64 => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

/// General registers of the boot vCPU. `boot_info` is the zero page
/// (Linux64) or the `hvm_start_info` (PVH).
pub fn boot_regs(mode: EntryMode, entry: u64, boot_info: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = boot_info;
        }
        EntryMode::Pvh => regs.rbx = boot_info,
    }
    regs
}

/// FPU state at reset: x87 control word and MXCSR defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back: all RAM is cacheable.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// MSRs every vCPU starts with.
pub fn boot_msrs() -> Result<Msrs> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    Msrs::from_entries(&entries).map_err(|e| Error::Msrs(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn segments_decode_the_gdt() {
        let cs = segment(GDT_CODE64);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.selector, 8);
        let cs32 = segment(GDT_CODE32);
        assert_eq!((cs32.l, cs32.db, cs32.g), (0, 1, 1));
        let tss = segment(GDT_TSS);
        assert_eq!((tss.type_, tss.s, tss.g), (0xb, 0, 1));
    }

    #[test]
    fn page_tables_identity_map_one_gib() {
        let m = mem();
        write_boot_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let last: u64 = m.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        let gdt1: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn long_mode_and_pvh_sregs() {
        let mut s = kvm_sregs::default();
        setup_sregs(&mut s, EntryMode::Linux64);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr3, PML4_START);
        let mut s = kvm_sregs::default();
        setup_sregs(&mut s, EntryMode::Pvh);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cs.selector, (GDT_CODE32 * 8) as u16);
        let r = boot_regs(EntryMode::Pvh, 0x10_0000, PVH_INFO_START);
        assert_eq!((r.rip, r.rbx), (0x10_0000, PVH_INFO_START));
    }

    #[test]
    fn msrs_build() {
        assert_eq!(boot_msrs().unwrap().as_slice().len(), 11);
    }
}
