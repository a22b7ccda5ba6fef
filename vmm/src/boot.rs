//! Loading the kernel, initrd and command line into guest memory, and
//! writing the boot information the entry protocol expects.

use std::fs::File;
use std::path::Path;

use arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START, ZERO_PAGE_START};
use arch::{BootInfo, EntryMode};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use crate::error::BootError;

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

struct LoadedKernel {
    entry: u64,
    mode: EntryMode,
    end: u64,
    header: Option<setup_header>,
}

/// bzImage's 64-bit entry is 0x200 past the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// setup_header.xloadflags: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1;
/// Highest initrd end for kernels that do not say (Linux's default for
/// 64-bit kernels: below 2 GiB).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE_SIZE: u64 = 4096;

/// ELF header fields read by [`check_elf`] (ELF64, little endian).
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const PT_LOAD: u32 = 1;

/// Name of an ELF `e_machine` value, for messages.
pub fn elf_machine_name(machine: u16) -> &'static str {
    match machine {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390",
        40 => "ARM",
        62 => "x86_64",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "an unknown machine",
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// linux-loader copies an ELF's segments to their `p_paddr` without
/// asking which machine the image is for or whether the segment fits in
/// RAM: a kernel for another machine would run as garbage, and a segment
/// past RAM (or in the MMIO gap) would be cut short silently. So before
/// it loads anything, refuse both. Files that are not ELF64 are left to
/// the loaders, which say what they are not.
fn check_elf(file: &mut File, path: &Path, ram: &[arch::RamRegion]) -> Result<(), BootError> {
    use std::io::{Read, Seek, SeekFrom};
    use vm_memory::Address;
    let read = |e| BootError::Read(path.into(), e);
    let mut ehdr = [0u8; EHDR_LEN];
    file.rewind().map_err(read)?;
    match file.read_exact(&mut ehdr) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
        Err(e) => return Err(read(e)),
    }
    // ELFCLASS64, ELFDATA2LSB: anything else is not a kernel of ours,
    // and linux-loader says so.
    if &ehdr[..4] != ELF_MAGIC || ehdr[4] != 2 || ehdr[5] != 1 {
        return Ok(());
    }
    let machine = le16(&ehdr, 18);
    if machine != arch::ELF_MACHINE {
        return Err(BootError::WrongMachine(path.into(), machine));
    }
    let phoff = le64(&ehdr, 32);
    let phentsize = usize::from(le16(&ehdr, 54));
    let phnum = usize::from(le16(&ehdr, 56));
    if phentsize < PHDR_LEN {
        // linux-loader reads PHDR_LEN bytes per entry regardless; a
        // smaller entry size is a malformed header it reports itself.
        return Ok(());
    }
    let describe = || {
        ram.iter()
            .map(|(start, len)| {
                format!("[{:#x}, {:#x})", start.raw_value(), start.raw_value() + len)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut phdr = [0u8; PHDR_LEN];
    for index in 0..phnum {
        let at = phoff.saturating_add((index * phentsize) as u64);
        file.seek(SeekFrom::Start(at)).map_err(read)?;
        if file.read_exact(&mut phdr).is_err() {
            // A truncated table: linux-loader reports it.
            return Ok(());
        }
        if le32(&phdr, 0) != PT_LOAD {
            continue;
        }
        let start = le64(&phdr, 24);
        // The loader copies p_filesz bytes and the kernel owns p_memsz.
        let size = le64(&phdr, 32).max(le64(&phdr, 40));
        if size == 0 {
            continue;
        }
        let end = start.checked_add(size);
        let inside = end.is_some_and(|end| {
            ram.iter().any(|(base, len)| {
                start >= base.raw_value() && end <= base.raw_value().saturating_add(*len)
            })
        });
        if !inside {
            return Err(BootError::SegmentOutsideRam {
                path: path.into(),
                index,
                start,
                end: end.unwrap_or(u64::MAX),
                ram: describe(),
            });
        }
    }
    Ok(())
}

fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    ram: &[arch::RamRegion],
) -> Result<LoadedKernel, BootError> {
    let mut file =
        devices::fd_path::open(path, false).map_err(|e| BootError::Read(path.into(), e))?;
    check_elf(&mut file, path, ram)?;
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut file, himem) {
        Ok(r) => {
            let (entry, mode) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (addr.0, EntryMode::Pvh),
                _ => (r.kernel_load.0, EntryMode::Linux64),
            };
            return Ok(LoadedKernel {
                entry,
                mode,
                end: r.kernel_end,
                header: None,
            });
        }
        // Not an ELF (or too short to be one): maybe a bzImage.
        Err(loader::Error::Elf(
            loader::elf::Error::InvalidElfMagicNumber | loader::elf::Error::ReadElfHeader,
        )) => {}
        Err(e) => return Err(BootError::Load(path.into(), e)),
    }
    match BzImage::load(mem, None, &mut file, himem) {
        Ok(r) => {
            let header = r
                .setup_header
                .ok_or_else(|| BootError::NotAKernel(path.into()))?;
            if header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry(path.into()));
            }
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                mode: EntryMode::Linux64,
                end: r.kernel_end,
                header: Some(header),
            })
        }
        Err(loader::Error::Bzimage(
            loader::bzimage::Error::InvalidBzImage
            | loader::bzimage::Error::ReadBzImageHeader
            | loader::bzimage::Error::SeekBzImageHeader
            | loader::bzimage::Error::Underflow,
        )) => Err(BootError::NotAKernel(path.into())),
        Err(e) => Err(BootError::Load(path.into(), e)),
    }
}

/// Places the initrd page-aligned at the top of the RAM the kernel can
/// reach, above the kernel; returns its address and size.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    low_ram_end: u64,
    addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let mut file =
        devices::fd_path::open(path, false).map_err(|e| BootError::Read(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::Read(path.into(), e))?
        .len();
    let too_large = || BootError::InitrdTooLarge(path.into(), size);
    let top = low_ram_end.min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end.next_multiple_of(PAGE_SIZE) {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.get_slice(GuestAddress(addr), len)
        .map_err(|_| too_large())
        .and_then(|slice| {
            file.read_exact_volatile(&mut slice.clone())
                .map_err(|e| BootError::Read(path.into(), std::io::Error::other(e.to_string())))
        })?;
    Ok((addr, size))
}

/// Loads everything and writes the boot information; returns where the
/// boot vCPU starts.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    vcpus: u32,
    virtio: &[arch::VirtioMmio],
) -> Result<KernelEntry, BootError> {
    let regions: Vec<_> = mem_regions(mem);
    let low_ram_end = arch::low_ram_end(&regions);
    let k = load_kernel(mem, kernel, &regions)?;

    let max_cmdline = match &k.header {
        Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE),
        _ => CMDLINE_MAX_SIZE,
    };
    let cl = Cmdline::try_from(cmdline, max_cmdline)
        .map_err(|e| BootError::Cmdline(format!("{e} (at most {} bytes)", max_cmdline - 1)))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    let initrd = match initrd {
        Some(path) => {
            let addr_max = match &k.header {
                Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
                _ => DEFAULT_INITRD_ADDR_MAX,
            };
            Some(load_initrd(mem, path, k.end, low_ram_end, addr_max)?)
        }
        None => None,
    };

    arch::write_boot_tables(mem)?;
    // Both: the MP table for kernels without ACPI (and `acpi=off`), ACPI
    // for kernels that read nothing else.
    arch::setup_mptable(mem, vcpus)?;
    let rsdp = arch::setup_acpi(mem, vcpus, virtio)?;
    let memory_map = arch::memory_map(&regions);
    let info = BootInfo {
        memory_map: &memory_map,
        cmdline_size: cl
            .as_cstring()
            .map(|c| c.as_bytes_with_nul().len())
            .unwrap_or(1),
        initrd,
        setup_header: k.header,
        rsdp: Some(rsdp),
    };
    let boot_info = match k.mode {
        EntryMode::Pvh => {
            arch::write_pvh_info(mem, &info)?;
            PVH_INFO_START
        }
        EntryMode::Linux64 => {
            arch::write_zero_page(mem, &info)?;
            ZERO_PAGE_START
        }
    };
    Ok(KernelEntry {
        entry: k.entry,
        mode: k.mode,
        boot_info,
    })
}

fn mem_regions(mem: &GuestMemoryMmap) -> Vec<arch::RamRegion> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter().map(|r| (r.start_addr(), r.len())).collect()
}
