//! Guest platform setup, one module per architecture.
//!
//! The VMM only calls the items re-exported at the crate root, so each
//! architecture provides the same names under `arch/<arch>` and nothing in
//! `vmm` needs `cfg(target_arch)`. Every architecture module has:
//!
//! - constants: [`ARCH_NAME`], `ELF_MACHINE`, `KERNEL_FORMATS` (what it
//!   boots, for messages), `DEFAULT_CMDLINE`, `VIRTIO_MMIO_ON_CMDLINE`,
//!   `PLATFORM` (where the UART and the other platform devices sit), and
//!   in `layout` `MAX_VCPUS`,
//!   `CMDLINE_MAX_SIZE`, `BOOT_TIMER_ADDR`, `MMIO_DEVICES_START`/`END` and
//!   `VIRTIO_IRQ_BASE`/`MAX`/`SKIP`;
//! - the VM: `ram_regions`, `check_kvm`, `max_vcpus`, `create_vm`,
//!   `create_chipset` (the in-kernel interrupt controller, before any
//!   device's irqfd; on aarch64 with the vCPUs it is sized for) and
//!   `create_vcpus` (called last, right before the vCPUs are configured);
//! - the vCPUs: `VcpuSetup` (per-VM data), `configure_vcpu`,
//!   `host_cpu_vendor` (for the static CPU templates),
//!   `program_counter` and `faulting_instruction` for exit reports;
//! - the kernel: `load_kernel` into a `LoadedKernel`, `initrd_range`, and
//!   `configure_boot`, which writes what the kernel reads at entry (zero
//!   page and ACPI tables, or the FDT) and returns a `KernelEntry`;
//! - `seccomp`: the system calls and vCPU ioctls that differ.
//!
//! Everything here is code over guest memory and KVM file descriptors;
//! the parts that need no `/dev/kvm` are unit-tested on any host.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use crate::x86_64::*;

// The aarch64 layout and device tree are plain data, compiled (and
// unit-tested) on every host; the parts that call KVM are compiled on
// aarch64 only, inside the module.
pub mod aarch64;

#[cfg(target_arch = "aarch64")]
pub use crate::aarch64::*;

pub mod acpi_regs;
pub mod cpu_template;
pub mod kernel;
pub mod static_templates;

pub use cpu_template::{CpuTemplate, TemplateError};
pub use kernel::{KernelFormat, LoadError};

/// A guest memory region that holds RAM: start address and length in bytes.
pub type RamRegion = (vm_memory::GuestAddress, u64);

/// Size of one MiB.
pub const MIB: u64 = 1 << 20;

/// Errors of the KVM calls made while setting a VM up.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// KVM lacks a capability the platform needs.
    #[error("KVM lacks a required capability: {0}")]
    Cap(&'static str),
    /// A KVM call failed.
    #[error("KVM {0} failed: {1}")]
    Call(&'static str, #[source] kvm_ioctls::Error),
    /// A configuration the platform cannot describe.
    #[error("{0}")]
    Unsupported(String),
    /// A CPU template that cannot be applied.
    #[error("CPU template: {0}")]
    Template(#[from] TemplateError),
}

/// Fails with the first of `caps` (a capability and its name for the
/// message) that KVM lacks.
pub fn require_caps(
    kvm: &kvm_ioctls::Kvm,
    caps: &[(kvm_ioctls::Cap, &'static str)],
) -> Result<(), KvmError> {
    match caps.iter().find(|(cap, _)| !kvm.check_extension(*cap)) {
        Some((_, name)) => Err(KvmError::Cap(name)),
        None => Ok(()),
    }
}

/// A virtio-mmio device as the guest is told about it (ACPI DSDT, FDT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmio {
    /// Start of its register window.
    pub base: u64,
    /// Length of the window.
    pub len: u64,
    /// Its interrupt: the KVM GSI the device's irqfd raises (an IOAPIC
    /// pin on x86, an SPI number counted from 0 on arm64).
    pub irq: u32,
}

/// Where a platform device's registers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// On the port-I/O bus (x86).
    Pio(u64),
    /// On the MMIO bus.
    Mmio(u64),
}

/// A platform device's registers and interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Where its registers start.
    pub window: Window,
    /// How many bytes (ports) they span.
    pub len: u64,
    /// The KVM GSI it raises, if it interrupts.
    pub irq: Option<u32>,
}

/// The platform devices an architecture has, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// The 8250-compatible UART (`ttyS0`).
    pub serial: Placement,
    /// The i8042 controller: the x86 reset line and Ctrl-Alt-Del.
    pub i8042: Option<Placement>,
    /// The ACPI sleep and reset registers (see [`acpi_regs`]).
    pub acpi_pm: Option<Placement>,
    /// The ACPI Generic Event Device's register and interrupt (the power
    /// button).
    pub ged: Option<Placement>,
    /// The CPU hotplug controller the ACPI tables describe: where there is
    /// one, vCPUs can be plugged and unplugged while the guest runs.
    pub cpu_hotplug: Option<Placement>,
    /// A PL031 real-time clock.
    pub rtc: Option<Placement>,
    /// The PC's CMOS real-time clock (MC146818), on port I/O.
    pub cmos: Option<Placement>,
    /// A PL061 GPIO controller whose pin [`Platform::power_key_pin`] is a
    /// power key (`gpio-keys`): the power button where there is no ACPI.
    pub gpio: Option<Placement>,
    /// The GPIO pin of the power key.
    pub power_key_pin: u32,
}

/// What [`configure_boot`] writes for the kernel.
pub struct BootConfig<'a> {
    /// The loaded kernel.
    pub kernel: &'a LoadedKernel,
    /// The kernel command line (without its NUL).
    pub cmdline: &'a str,
    /// Initrd address and length, if any.
    pub initrd: Option<(u64, u64)>,
    /// The guest's RAM.
    pub ram: &'a [RamRegion],
    /// The vCPUs, created and initialised: all the VM can have, the
    /// first `boot_vcpus` of them present at boot, the others plugged
    /// later (where `PLATFORM.cpu_hotplug` exists).
    pub vcpus: &'a [kvm_ioctls::VcpuFd],
    /// How many vCPUs the guest has at boot.
    pub boot_vcpus: u32,
    /// The virtio devices.
    pub virtio: &'a [VirtioMmio],
    /// The in-kernel interrupt controller (the FDT names its version).
    pub chipset: &'a Chipset,
}
