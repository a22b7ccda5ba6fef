//! The kernel on x86_64: an ELF (with a PVH note, or entered in long
//! mode) or a bzImage, and what it reads at entry: the command line, the
//! zero page or PVH start info, the MP table and the ACPI tables.

use std::fs::File;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START, ZERO_PAGE_START,
};
use super::{
    low_ram_end, memory_map, setup_acpi, setup_mptable, write_boot_tables, write_pvh_info,
    write_zero_page, BootInfo, EntryMode,
};
use crate::kernel::{KernelFormat, LoadError, EM_X86_64};
use crate::BootConfig;

/// What this platform boots, for messages.
pub const KERNEL_FORMATS: &str = "an x86_64 ELF vmlinux or a bzImage";

/// bzImage's 64-bit entry is 0x200 past the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// setup_header.xloadflags: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1;
/// Highest initrd end for kernels that do not say (Linux's default for
/// 64-bit kernels: below 2 GiB).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE_SIZE: u64 = 4096;

/// Errors while writing what the kernel reads at entry.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Writing the command line failed.
    #[error("cannot write the kernel command line: {0}")]
    Cmdline(String),
    /// Writing a boot structure failed.
    #[error(transparent)]
    BootInfo(#[from] super::boot::Error),
    /// Writing the boot CPU tables failed.
    #[error(transparent)]
    Regs(#[from] super::regs::Error),
    /// Writing the MP table failed.
    #[error(transparent)]
    MpTable(#[from] super::mptable::Error),
    /// Building or writing the ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] super::acpi::Error),
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    entry: u64,
    mode: EntryMode,
    end: u64,
    header: Option<setup_header>,
}

impl LoadedKernel {
    /// First guest address past the kernel.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Longest command line this kernel takes, including the NUL: what a
    /// bzImage says, else Linux's COMMAND_LINE_SIZE.
    pub fn cmdline_capacity(&self) -> usize {
        match &self.header {
            Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE),
            _ => CMDLINE_MAX_SIZE,
        }
    }
}

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEntry {
    /// Entry address.
    pub entry: u64,
    /// Entry protocol.
    pub mode: EntryMode,
    /// Address of the boot information for that protocol.
    pub boot_info: u64,
}

/// Loads a kernel of `format` from `file` into `mem`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    file: &mut File,
    format: KernelFormat,
) -> Result<LoadedKernel, LoadError> {
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf { machine: EM_X86_64 } => {
            let r = Elf::load(mem, None, file, himem).map_err(LoadError::Loader)?;
            let (entry, mode) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (addr.0, EntryMode::Pvh),
                _ => (r.kernel_load.0, EntryMode::Linux64),
            };
            Ok(LoadedKernel {
                entry,
                mode,
                end: r.kernel_end,
                header: None,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, file, himem).map_err(|e| match e {
                loader::Error::Bzimage(
                    loader::bzimage::Error::InvalidBzImage
                    | loader::bzimage::Error::ReadBzImageHeader
                    | loader::bzimage::Error::SeekBzImageHeader
                    | loader::bzimage::Error::Underflow,
                ) => LoadError::NotAKernel,
                e => LoadError::Loader(e),
            })?;
            let header = r.setup_header.ok_or(LoadError::NotAKernel)?;
            if header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoadError::No64BitEntry);
            }
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                mode: EntryMode::Linux64,
                end: r.kernel_end,
                header: Some(header),
            })
        }
        KernelFormat::Unknown => Err(LoadError::NotAKernel),
        other => Err(LoadError::WrongFormat(other)),
    }
}

/// Where an initrd may lie: above the kernel, below the end of low RAM
/// and the kernel's `initrd_addr_max`.
pub fn initrd_range(kernel: &LoadedKernel, ram: &[crate::RamRegion]) -> (u64, u64) {
    let addr_max = match &kernel.header {
        Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        _ => DEFAULT_INITRD_ADDR_MAX,
    };
    (
        kernel.end.next_multiple_of(PAGE_SIZE),
        low_ram_end(ram).min(addr_max.saturating_add(1)),
    )
}

/// Writes the command line, the boot GDT and page tables, the MP table
/// (for kernels without ACPI, and `acpi=off`), the ACPI tables (for
/// kernels that read nothing else, as Debian's stock ones) and the zero
/// page or PVH start info; returns where the boot vCPU starts.
pub fn configure_boot(mem: &GuestMemoryMmap, cfg: &BootConfig) -> Result<KernelEntry, BootError> {
    let k = cfg.kernel;
    let cl = Cmdline::try_from(cfg.cmdline, k.cmdline_capacity())
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let max_vcpus = cfg.vcpus.len() as u32;
    write_boot_tables(mem)?;
    // The MP table has no way to say "plugged later": kernels without
    // ACPI see the boot vCPUs only.
    setup_mptable(mem, cfg.boot_vcpus)?;
    let rsdp = setup_acpi(mem, cfg.boot_vcpus, max_vcpus, cfg.virtio)?;
    let memory_map = memory_map(cfg.ram);
    let info = BootInfo {
        memory_map: &memory_map,
        cmdline_size: cfg.cmdline.len() + 1,
        initrd: cfg.initrd,
        setup_header: k.header,
        rsdp: Some(rsdp),
    };
    let boot_info = match k.mode {
        EntryMode::Pvh => {
            write_pvh_info(mem, &info)?;
            PVH_INFO_START
        }
        EntryMode::Linux64 => {
            write_zero_page(mem, &info)?;
            ZERO_PAGE_START
        }
    };
    Ok(KernelEntry {
        entry: k.entry,
        mode: k.mode,
        boot_info,
    })
}
