//! aarch64 guest platform: RAM from 2 GiB, devices on MMIO below it, a
//! GICv3 (GICv2 where the host has no GICv3), PSCI for CPU bring-up and
//! power, and a flattened device tree for the kernel.
//!
//! `layout`, `fdt` and `ram_regions` are plain data and compile on every
//! host, so their tests run on x86 too; the rest calls KVM and compiles
//! on aarch64 only.

pub mod fdt;
pub mod layout;

use crate::RamRegion;
use vm_memory::GuestAddress;

/// The RAM region to map for a guest of `mem_bytes` bytes: one, from
/// [`layout::DRAM_START`].
pub fn ram_regions(mem_bytes: u64) -> Vec<RamRegion> {
    vec![(GuestAddress(layout::DRAM_START), mem_bytes)]
}

/// Where hotpluggable memory (virtio-mem) may go for a guest of
/// `mem_bytes` bytes of RAM: from the first 1 GiB boundary above RAM
/// (Linux adds memory in aligned 128 MiB sections) to the end of the RAM
/// range of the layout, 1 TiB (KVM's default 40-bit IPA space).
pub fn hotplug_window(mem_bytes: u64) -> (u64, u64) {
    let ram_end = layout::DRAM_START + mem_bytes;
    (
        ram_end.next_multiple_of(1 << 30),
        layout::DRAM_START + layout::DRAM_MAX_SIZE,
    )
}

/// Where the FDT goes: the top [`layout::FDT_MAX_SIZE`] of RAM, 2 MiB
/// aligned so that it never straddles the blocks Linux maps it with.
pub fn fdt_addr(ram: &[RamRegion]) -> u64 {
    let end = ram
        .iter()
        .map(|(start, len)| start.0 + len)
        .max()
        .unwrap_or(layout::DRAM_START);
    end.saturating_sub(layout::FDT_MAX_SIZE) & !(layout::FDT_MAX_SIZE - 1)
}

#[cfg(target_arch = "aarch64")]
mod kvm;
#[cfg(target_arch = "aarch64")]
pub mod seccomp;

#[cfg(target_arch = "aarch64")]
pub use kvm::*;

#[cfg(target_arch = "aarch64")]
use crate::{Placement, Platform, Window};

/// The ELF `e_machine` of arm64 (kernels boot here as an Image, not as
/// an ELF; the value names the machine in messages).
#[cfg(target_arch = "aarch64")]
pub const ELF_MACHINE: u16 = crate::kernel::EM_AARCH64;
/// The platform's name in messages.
#[cfg(target_arch = "aarch64")]
pub const ARCH_NAME: &str = "aarch64";

/// The host CPU's vendor, for the static CPU templates: None, as the one
/// for aarch64 (V1N1) is checked against no vendor.
#[cfg(target_arch = "aarch64")]
pub fn host_cpu_vendor() -> Option<String> {
    None
}

/// Whether vCPUs can be two threads to a core: not here (the FDT's cpu
/// map would have to say it; Firecracker has no SMT on arm64 either).
pub const SMT: bool = false;
/// What this platform boots, for messages.
#[cfg(target_arch = "aarch64")]
pub const KERNEL_FORMATS: &str = "an arm64 Image";
/// Command line used when the user gives none: the same `ttyS0` console
/// as on x86 (the UART is 8250-compatible), and the kernel's early
/// console on it before the driver binds.
#[cfg(target_arch = "aarch64")]
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlycon=uart,mmio,0x40002000 reboot=k panic=1";

/// The FDT names every virtio-mmio device, and an arm64 kernel always
/// reads it: nothing on the command line.
#[cfg(target_arch = "aarch64")]
pub const VIRTIO_MMIO_ON_CMDLINE: bool = false;

/// The UART, the RTC and a GPIO controller with the power key on MMIO; no
/// keyboard controller or ACPI registers (PSCI powers off and resets).
#[cfg(target_arch = "aarch64")]
pub const PLATFORM: Platform = Platform {
    serial: Placement {
        window: Window::Mmio(layout::SERIAL_ADDR),
        len: layout::DEVICE_WINDOW,
        irq: Some(layout::SERIAL_IRQ),
    },
    i8042: None,
    acpi_pm: None,
    ged: None,
    // Linux 6.1 cannot add vCPUs to a device-tree guest on arm64 (ACPI
    // vCPU hotplug arrived in Linux 6.11).
    cpu_hotplug: None,
    rtc: Some(Placement {
        window: Window::Mmio(layout::RTC_ADDR),
        len: layout::DEVICE_WINDOW,
        irq: Some(layout::RTC_IRQ),
    }),
    cmos: None,
    gpio: Some(Placement {
        window: Window::Mmio(layout::GPIO_ADDR),
        len: layout::DEVICE_WINDOW,
        irq: Some(layout::GPIO_IRQ),
    }),
    power_key_pin: layout::POWER_KEY_PIN,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdt_sits_at_the_top_of_ram_aligned() {
        let ram = ram_regions(128 << 20);
        assert_eq!(fdt_addr(&ram), layout::DRAM_START + (126 << 20));
        let odd = ram_regions(129 << 20);
        assert_eq!(fdt_addr(&odd), layout::DRAM_START + (126 << 20));
    }

    #[test]
    fn hotplug_memory_goes_above_ram_on_a_1_gib_boundary() {
        assert_eq!(hotplug_window(128 << 20).0, 3 << 30);
        assert_eq!(hotplug_window(1 << 30).0, 3 << 30);
        assert_eq!(
            hotplug_window(1 << 40).1,
            layout::DRAM_START + layout::DRAM_MAX_SIZE
        );
    }
}
