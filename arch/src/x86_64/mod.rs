//! x86_64 guest platform.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod lapic;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod regs;
pub mod seccomp;

/// The ELF `e_machine` of kernels this platform boots (EM_X86_64).
pub const ELF_MACHINE: u16 = 62;
/// The platform's name in messages.
pub const ARCH_NAME: &str = "x86_64";

pub use acpi::{setup_acpi, VirtioMmio};
pub use boot::{write_pvh_info, write_zero_page, BootInfo};
pub use cpuid::setup_cpuid;
pub use lapic::setup_lint;
pub use memory::{low_ram_end, memory_map, ram_regions, MemoryMapEntry, E820_RAM};
pub use mptable::setup_mptable;
pub use regs::{boot_fpu, boot_msrs, boot_regs, setup_sregs, write_boot_tables, EntryMode};
