//! Loading the kernel, initrd and command line into guest memory. What
//! the kernel reads at entry and how the boot vCPU starts are the
//! architecture's (`arch::configure_boot`); this part is the same on
//! every one: the file, its format, the RAM its segments need, where the
//! initrd fits.

use std::fs::File;
use std::path::Path;

use arch::{KernelFormat, LoadedKernel};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use crate::error::BootError;

const PAGE_SIZE: u64 = 4096;

/// ELF header fields read by [`check_elf`] (ELF64, little endian).
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const PT_LOAD: u32 = 1;

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
/// asking whether the segment fits in RAM: a segment past RAM (or in the
/// MMIO gap) would be cut short silently. So before it loads anything,
/// refuse that. (The machine was checked already, from the header.)
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

/// A kernel in guest memory, with its checked command line.
pub struct Loaded {
    /// The kernel.
    pub kernel: LoadedKernel,
    /// Initrd address and length, if any.
    pub initrd: Option<(u64, u64)>,
}

/// Loads the kernel and initrd, and checks that the command line fits the
/// kernel.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<Loaded, BootError> {
    let ram = mem_regions(mem);
    let mut file =
        devices::fd_path::open(kernel, false).map_err(|e| BootError::Read(kernel.into(), e))?;
    let format = KernelFormat::detect(&mut file).map_err(|e| BootError::Read(kernel.into(), e))?;
    if format
        == (KernelFormat::Elf {
            machine: arch::ELF_MACHINE,
        })
    {
        check_elf(&mut file, kernel, &ram)?;
    }
    let k = arch::load_kernel(mem, &mut file, format)
        .map_err(|e| BootError::Kernel(kernel.into(), e))?;

    let max_cmdline = k.cmdline_capacity();
    Cmdline::try_from(cmdline, max_cmdline)
        .map_err(|e| BootError::Cmdline(format!("{e} (at most {} bytes)", max_cmdline - 1)))?;

    let initrd = match initrd {
        Some(path) => {
            let (lo, hi) = arch::initrd_range(&k, &ram);
            Some(load_initrd(mem, path, lo, hi)?)
        }
        None => None,
    };
    Ok(Loaded { kernel: k, initrd })
}

/// Places the initrd page-aligned at the top of `[lo, hi)`; returns its
/// address and size.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    lo: u64,
    hi: u64,
) -> Result<(u64, u64), BootError> {
    let mut file =
        devices::fd_path::open(path, false).map_err(|e| BootError::Read(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::Read(path.into(), e))?
        .len();
    let too_large = || BootError::InitrdTooLarge(path.into(), size);
    let addr = hi.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < lo.next_multiple_of(PAGE_SIZE) {
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

/// The RAM regions of `mem`.
pub fn mem_regions(mem: &GuestMemoryMmap) -> Vec<arch::RamRegion> {
    use vm_memory::GuestMemoryRegion;
    mem.iter().map(|r| (r.start_addr(), r.len())).collect()
}
