//! Boot information handed to the kernel: the Linux zero page or the PVH
//! start_info, each with the memory map, command line and initrd.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::*;
use super::memory::MemoryMapEntry;

/// Errors while writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The memory map has more entries than the zero page holds.
    #[error("the memory map has {0} entries, more than the zero page holds")]
    TooManyE820Entries(usize),
    /// linux-loader could not write the structures.
    #[error("cannot write the boot information: {0}")]
    Configure(#[from] linux_loader::configurator::Error),
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const CAN_USE_HEAP: u8 = 0x80;

/// What the boot information describes.
pub struct BootInfo<'a> {
    /// The guest memory map.
    pub memory_map: &'a [MemoryMapEntry],
    /// Length of the command line at [`CMDLINE_START`], including the NUL.
    pub cmdline_size: usize,
    /// Initrd address and length, if any.
    pub initrd: Option<(u64, u64)>,
    /// The bzImage setup header, when booting a bzImage.
    pub setup_header: Option<setup_header>,
    /// Address of the ACPI RSDP, if the guest has ACPI tables. Linux
    /// also finds it by scanning 0xe0000-0xfffff; saying it is cheaper.
    pub rsdp: Option<u64>,
}

/// Writes the Linux zero page at [`ZERO_PAGE_START`].
pub fn write_zero_page(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = hdr;
        params.hdr.loadflags |= CAN_USE_HEAP;
        // Heap end relative to the real-mode code, which we do not run;
        // the value only has to be sane.
        params.hdr.heap_end_ptr = 0xfe00;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.acpi_rsdp_addr = info.rsdp.unwrap_or(0);
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_size as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if info.memory_map.len() > params.e820_table.len() {
        return Err(Error::TooManyE820Entries(info.memory_map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(info.memory_map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = info.memory_map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )?;
    Ok(())
}

/// Writes the PVH `hvm_start_info`, module list and memory map.
pub fn write_pvh_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), Error> {
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: info.memory_map.len() as u32,
        rsdp_paddr: info.rsdp.unwrap_or(0),
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = info
        .memory_map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new(&start, GuestAddress(PVH_INFO_START));
    if let Some((paddr, size)) = info.initrd {
        start.nr_modules = 1;
        start.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&start, GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::memory::{memory_map, ram_regions};
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap()
    }

    #[test]
    fn zero_page_fields() {
        let m = mem();
        let map = memory_map(&ram_regions(0x200_0000));
        let info = BootInfo {
            memory_map: &map,
            cmdline_size: 12,
            initrd: Some((0x1f0_0000, 0x1000)),
            setup_header: None,
            rsdp: Some(0xe_0000),
        };
        write_zero_page(&m, &info).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1f0_0000);
        assert_eq!(p.e820_entries as usize, map.len());
        assert_eq!({ p.e820_table[2].addr }, HIMEM_START);
    }

    #[test]
    fn pvh_fields() {
        let m = mem();
        let map = memory_map(&ram_regions(0x200_0000));
        let info = BootInfo {
            memory_map: &map,
            cmdline_size: 1,
            initrd: Some((0x1f0_0000, 0x1000)),
            setup_header: None,
            rsdp: Some(0xe_0000),
        };
        write_pvh_info(&m, &info).unwrap();
        let s: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(s.rsdp_paddr, 0xe_0000);
        assert_eq!(s.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(s.memmap_entries as usize, map.len());
        assert_eq!(s.nr_modules, 1);
        let e: hvm_memmap_table_entry =
            m.read_obj(GuestAddress(PVH_MEMMAP_START + 2 * 24)).unwrap();
        assert_eq!((e.addr, e.type_), (HIMEM_START, 1));
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!(module.paddr, 0x1f0_0000);
    }
}
