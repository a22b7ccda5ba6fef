//! Guest physical memory layout on aarch64, the same as Firecracker's so
//! that guests and tools written for one find the same addresses:
//!
//! ```text
//! 0x3fff_0000 - n * 128 KiB  GICv3 redistributors, one per vCPU
//! 0x3fff_0000                GIC distributor (GICv2: CPU interface below)
//! 0x4000_0000                boot timer
//! 0x4000_1000                PL031 RTC
//! 0x4000_2000                8250 UART (ns16550a)
//! 0x4000_3000                virtio-mmio devices, 4 KiB each
//! 0x6fff_f000                PL061 GPIO: the power key
//! 0x7000_0000                end of the device range
//! 0x8000_0000                RAM: the kernel at its text offset, the
//!                            initrd below the FDT, the FDT at the top
//! ```

/// Start of guest RAM.
pub const DRAM_START: u64 = 0x8000_0000;
/// Most RAM a guest can have (up to 1 TiB of guest-physical space).
pub const DRAM_MAX_SIZE: u64 = 0xff_8000_0000;
/// Space reserved for the FDT at the top of RAM; also the most Linux
/// maps of it.
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
/// Longest command line we pass, including the NUL (Linux's
/// COMMAND_LINE_SIZE on arm64).
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Start of the 32-bit device range.
pub const MMIO_START: u64 = 0x4000_0000;
/// Each platform device's window.
pub const DEVICE_WINDOW: u64 = 0x1000;
/// Boot-timer device: the guest writes the boot-timer magic here.
pub const BOOT_TIMER_ADDR: u64 = MMIO_START;
/// The PL031 real-time clock.
pub const RTC_ADDR: u64 = MMIO_START + DEVICE_WINDOW;
/// The 8250-compatible UART.
pub const SERIAL_ADDR: u64 = RTC_ADDR + DEVICE_WINDOW;
/// Start of the range handed to the device manager for MMIO devices.
pub const MMIO_DEVICES_START: u64 = SERIAL_ADDR + DEVICE_WINDOW;
/// The PL061 GPIO controller, at the top of the device range so that the
/// devices below keep Firecracker's addresses.
pub const GPIO_ADDR: u64 = 0x7000_0000 - DEVICE_WINDOW;
/// End (exclusive) of the range handed to the device manager.
pub const MMIO_DEVICES_END: u64 = GPIO_ADDR;
/// The GPIO pin wired to the power key (QEMU's virt board uses pin 3 too).
pub const POWER_KEY_PIN: u32 = 3;

/// GIC distributor (64 KiB on GICv3, 4 KiB used on GICv2).
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// GIC distributor base, right below the device range.
pub const GIC_DIST_ADDR: u64 = MMIO_START - GIC_DIST_SIZE;
/// One GICv3 redistributor (its RD and SGI frames).
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// Space below the distributor for the redistributors.
pub const GIC_REDIST_AREA: u64 = 0x200_0000;
/// GICv2 CPU interface, below the distributor.
pub const GICV2_CPU_SIZE: u64 = 0x2000;
/// GICv2 CPU interface base.
pub const GICV2_CPU_ADDR: u64 = GIC_DIST_ADDR - GICV2_CPU_SIZE;
/// Most vCPUs GICv2 can address.
pub const GICV2_MAX_VCPUS: u32 = 8;

/// Base of the GICv3 redistributor region for `vcpus` vCPUs.
pub const fn gic_redist_addr(vcpus: u32) -> u64 {
    GIC_DIST_ADDR - GIC_REDIST_SIZE * vcpus as u64
}

/// Most vCPUs a VM can have: as many redistributors as fit below the
/// distributor.
pub const MAX_VCPUS: u32 = (GIC_REDIST_AREA / GIC_REDIST_SIZE) as u32;

/// Interrupts the GIC implements: 32 private ones (SGIs, PPIs) and 96
/// SPIs, the KVM GSIs 0-95 here.
pub const GIC_NR_IRQS: u32 = 128;
/// The UART's SPI.
pub const SERIAL_IRQ: u32 = 0;
/// The RTC's SPI.
pub const RTC_IRQ: u32 = 1;
/// The GPIO controller's SPI.
pub const GPIO_IRQ: u32 = 2;
/// First SPI for virtio devices.
pub const VIRTIO_IRQ_BASE: u32 = 3;
/// Last SPI for virtio devices.
pub const VIRTIO_IRQ_MAX: u32 = GIC_NR_IRQS - 32 - 1;
/// Interrupts in the virtio range that virtio devices skip: none.
pub const VIRTIO_IRQ_SKIP: &[u32] = &[];

/// The architected timer's PPIs (Linux's arch_timer binding: secure and
/// non-secure physical, virtual, hypervisor), counted from PPI 0.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The GIC maintenance interrupt's PPI.
pub const GIC_MAINTENANCE_PPI: u32 = 9;

/// Frequency of the fixed clock the PL031 is wired to (its `apb_pclk`).
pub const APB_CLOCK_HZ: u32 = 24_000_000;
/// The 8250's input clock: 1.8432 MHz gives the standard baud rates.
pub const SERIAL_CLOCK_HZ: u32 = 1_843_200;

// The regions above must not overlap; checked when this compiles.
const _: () = assert!(gic_redist_addr(MAX_VCPUS) >= GIC_DIST_ADDR - GIC_REDIST_AREA);
const _: () = assert!(GIC_DIST_ADDR + GIC_DIST_SIZE <= MMIO_START);
const _: () = assert!(GICV2_CPU_ADDR >= GIC_DIST_ADDR - GIC_REDIST_AREA);
const _: () = assert!(MMIO_DEVICES_END <= DRAM_START);
const _: () = assert!(
    VIRTIO_IRQ_BASE > RTC_IRQ && VIRTIO_IRQ_BASE > SERIAL_IRQ && VIRTIO_IRQ_BASE > GPIO_IRQ
);
