//! x86_64 guest platform.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod lapic;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod mptable;
pub mod regs;
pub mod seccomp;
pub mod vcpu;
pub mod vm;

pub use cpuid::host_cpu_vendor;

use crate::{Placement, Platform, Window};

/// The ELF `e_machine` of kernels this platform boots (EM_X86_64).
pub const ELF_MACHINE: u16 = crate::kernel::EM_X86_64;
/// The platform's name in messages.
pub const ARCH_NAME: &str = "x86_64";
/// Command line used when the user gives none: the console on COM1, reboot
/// through the keyboard controller (the VM then ends), and an i8042 that
/// Linux does not probe for a mouse or a multiplexer it would wait on.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// virtio-mmio devices are also named on the kernel command line
/// (`virtio_mmio.device=`): kernels without ACPI, or booted with
/// `acpi=off`, find them nowhere else.
pub const VIRTIO_MMIO_ON_CMDLINE: bool = true;

/// Whether vCPUs can be two threads to a core (CPUID topology).
pub const SMT: bool = true;

/// COM1, the i8042, the CMOS clock and the ACPI registers, all on port
/// I/O.
pub const PLATFORM: Platform = Platform {
    serial: Placement {
        window: Window::Pio(0x3f8),
        len: 8,
        irq: Some(4),
    },
    i8042: Some(Placement {
        // The data port; the command/status port is 4 above it.
        window: Window::Pio(0x60),
        len: 5,
        irq: Some(1),
    }),
    acpi_pm: Some(Placement {
        window: Window::Pio(layout::ACPI_PM_PORT),
        len: layout::ACPI_PM_LEN,
        irq: None,
    }),
    ged: Some(Placement {
        window: Window::Pio(layout::GED_PORT),
        len: layout::GED_LEN,
        irq: Some(layout::GED_IRQ),
    }),
    cpu_hotplug: Some(Placement {
        window: Window::Pio(layout::CPU_HOTPLUG_PORT),
        len: layout::CPU_HOTPLUG_LEN,
        irq: None,
    }),
    rtc: None,
    cmos: Some(Placement {
        window: Window::Pio(layout::CMOS_PORT),
        len: layout::CMOS_LEN,
        // Never raised (see `layout::CMOS_IRQ`).
        irq: None,
    }),
    gpio: None,
    power_key_pin: 0,
};

pub use acpi::setup_acpi;
pub use boot::{write_pvh_info, write_zero_page, BootInfo};
pub use cpuid::setup_cpuid;
pub use lapic::setup_lint;
pub use loader::{
    configure_boot, initrd_range, load_kernel, BootError, KernelEntry, LoadedKernel, KERNEL_FORMATS,
};
pub use memory::{hotplug_window, low_ram_end, memory_map, ram_regions, MemoryMapEntry, E820_RAM};
pub use mptable::setup_mptable;
pub use regs::{boot_fpu, boot_msrs, boot_regs, setup_sregs, write_boot_tables, EntryMode};
pub use vcpu::{configure_vcpu, faulting_instruction, program_counter, VcpuSetup};
pub use vm::{
    check_kvm, create_chipset, create_vcpus, create_vm, guest_listens_to_power_button, max_vcpus,
    Chipset,
};
