//! Guest physical memory layout on x86_64.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (RAM)
//! 0x0000_0500  GDT, IDT
//! 0x0000_6000  PVH start_info, module list, memory map
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  boot stack (grows down)
//! 0x0000_9000  identity page tables (PML4, PDPT, PD)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (reserved in the e820 map up to 1 MiB)
//! 0x000e_0000  ACPI: RSDP, then DSDT, FADT, MADT, XSDT (up to 1 MiB)
//! 0x0010_0000  kernel, then initrd at the top of low RAM
//! 0xc000_0000  32-bit MMIO gap (devices, IOAPIC, LAPIC) up to 4 GiB
//! 0x1_0000_0000 RAM above the gap for guests larger than 3 GiB
//! ```

/// GDT location.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT location (an empty table: the guest installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux zero page.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the identity page tables used by the 64-bit entry.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the identity page tables.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the identity page tables (2 MiB pages, first 1 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we pass, including the NUL (Linux's
/// COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of conventional RAM below 1 MiB; the MP table starts here, where Linux
/// looks for it ("last KiB of base memory").
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI RSDP, where Linux's scan of 0xe0000-0xfffff finds it; the other
/// tables follow it, below [`HIMEM_START`].
pub const RSDP_ADDR: u64 = 0xe_0000;
/// Kernel load address / start of high memory.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Boot-timer device: the guest writes [`BOOT_TIMER_MAGIC`] here.
pub const BOOT_TIMER_ADDR: u64 = 0xd000_0000;
/// Start of the range handed to the device manager for MMIO devices.
pub const MMIO_DEVICES_START: u64 = 0xd000_1000;
/// End (exclusive) of the device MMIO range, below the IOAPIC.
pub const MMIO_DEVICES_END: u64 = 0xfec0_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// Identity map used by KVM for real-mode on Intel (one page).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfeffc000;
/// TSS used by KVM on Intel (three pages).
pub const KVM_TSS_ADDR: u64 = 0xfeffd000;
/// Number of IOAPIC pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;
/// First of the ACPI power-management ports: sleep control (+0), sleep
/// status (+1) and reset (+2) registers of the hardware-reduced FADT.
pub const ACPI_PM_PORT: u64 = 0x600;
/// Number of ACPI power-management ports.
pub const ACPI_PM_LEN: u64 = 3;
/// The Generic Event Device's event register (one byte, read to clear).
pub const GED_PORT: u64 = 0x604;
/// Length of the GED register window.
pub const GED_LEN: u64 = 1;
/// The CPU hotplug controller's selector and status registers (see
/// [`crate::acpi_regs`]), on port I/O after the GED.
pub const CPU_HOTPLUG_PORT: u64 = 0x608;
/// Length of the CPU hotplug controller's window.
pub const CPU_HOTPLUG_LEN: u64 = 5;
/// The GED's interrupt: the last IOAPIC pin, kept out of the virtio range.
pub const GED_IRQ: u32 = 23;
/// First IOAPIC pin for virtio devices (0-4 are the timer, keyboard,
/// cascade and COM ports).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IOAPIC pin for virtio devices.
pub const VIRTIO_IRQ_MAX: u32 = GED_IRQ - 1;
/// The CMOS clock's ports (index, data).
pub const CMOS_PORT: u64 = 0x70;
/// Length of the CMOS clock's window.
pub const CMOS_LEN: u64 = 2;
/// The CMOS register with the century (the FADT names it).
pub const CMOS_CENTURY: u8 = 0x32;
/// The CMOS clock's ISA interrupt. strato never raises it, but a guest
/// without ACPI (or booted with `acpi=off`) assumes the clock has it, and
/// Linux's driver then takes it for itself: no virtio device may share it.
pub const CMOS_IRQ: u32 = 8;
/// Pins in the virtio range that virtio devices skip.
pub const VIRTIO_IRQ_SKIP: &[u32] = &[CMOS_IRQ];
/// Highest vCPU count the MP table (8-bit xAPIC ids, 0xff broadcast) describes.
pub const MAX_VCPUS: u32 = 254;
