//! The flattened device tree an arm64 kernel reads at entry: memory,
//! CPUs (PSCI), the GIC, the architected timer, the UART, the RTC, the
//! GPIO controller with its power key, every virtio-mmio device, and
//! `/chosen` with the command line and initrd.
//! Plain data in, bytes out: unit-tested on any host.

use vm_fdt::{Error, FdtWriter};

use super::layout::*;
use crate::{RamRegion, VirtioMmio};

/// Which GIC the VM got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2: distributor and CPU interface, at most 8 vCPUs.
    V2,
    /// GICv3: distributor and one redistributor per vCPU.
    V3,
}

/// What the device tree describes.
pub struct FdtConfig<'a> {
    /// Each vCPU's MPIDR_EL1, in vCPU order.
    pub mpidrs: &'a [u64],
    /// The guest's RAM.
    pub ram: &'a [RamRegion],
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Initrd address and length, if any.
    pub initrd: Option<(u64, u64)>,
    /// The interrupt controller.
    pub gic: GicVersion,
    /// The virtio devices.
    pub virtio: &'a [VirtioMmio],
}

const PHANDLE_GIC: u32 = 1;
const PHANDLE_CLOCK: u32 = 2;
const PHANDLE_GPIO: u32 = 3;
/// Linux's input event code of the power key (KEY_POWER).
const KEY_POWER: u32 = 116;

/// Interrupt specifier cells (Linux's arm,gic binding).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// MPIDR_EL1 affinity fields; `cpus` `reg` holds them.
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// Builds the device tree.
pub fn build_fdt(cfg: &FdtConfig) -> Result<Vec<u8>, Error> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for mpidr in cfg.mpidrs {
        let affinity = mpidr & MPIDR_AFFINITY;
        let cpu = fdt.begin_node(&format!("cpu@{affinity:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u64("reg", affinity)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    for (start, len) in cfg.ram {
        let memory = fdt.begin_node(&format!("memory@{:x}", start.0))?;
        fdt.property_string("device_type", "memory")?;
        fdt.property_array_u64("reg", &[start.0, *len])?;
        fdt.end_node(memory)?;
    }

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", cfg.cmdline)?;
    fdt.property_string("stdout-path", &format!("/uart@{SERIAL_ADDR:x}"))?;
    if let Some((addr, len)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", addr)?;
        fdt.property_u64("linux,initrd-end", addr + len)?;
    }
    fdt.end_node(chosen)?;

    let gic = fdt.begin_node(&format!("intc@{GIC_DIST_ADDR:x}"))?;
    match cfg.gic {
        GicVersion::V3 => {
            fdt.property_string("compatible", "arm,gic-v3")?;
            let vcpus = cfg.mpidrs.len() as u32;
            fdt.property_array_u64(
                "reg",
                &[
                    GIC_DIST_ADDR,
                    GIC_DIST_SIZE,
                    gic_redist_addr(vcpus),
                    GIC_REDIST_SIZE * u64::from(vcpus),
                ],
            )?;
        }
        GicVersion::V2 => {
            fdt.property_string("compatible", "arm,gic-400")?;
            fdt.property_array_u64(
                "reg",
                &[GIC_DIST_ADDR, 0x1000, GICV2_CPU_ADDR, GICV2_CPU_SIZE],
            )?;
        }
    }
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH],
    )?;
    fdt.property_u32("phandle", PHANDLE_GIC)?;
    fdt.end_node(gic)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let cells: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|ppi| [GIC_PPI, *ppi, IRQ_TYPE_LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.end_node(timer)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list("compatible", vec!["arm,psci-0.2".into(), "arm,psci".into()])?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", APB_CLOCK_HZ)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_u32("phandle", PHANDLE_CLOCK)?;
    fdt.end_node(clock)?;

    let uart = fdt.begin_node(&format!("uart@{SERIAL_ADDR:x}"))?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[SERIAL_ADDR, DEVICE_WINDOW])?;
    fdt.property_u32("clock-frequency", SERIAL_CLOCK_HZ)?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, SERIAL_IRQ, IRQ_TYPE_EDGE_RISING])?;
    fdt.end_node(uart)?;

    let rtc = fdt.begin_node(&format!("rtc@{RTC_ADDR:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl031".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u64("reg", &[RTC_ADDR, DEVICE_WINDOW])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, RTC_IRQ, IRQ_TYPE_LEVEL_HIGH])?;
    fdt.property_u32("clocks", PHANDLE_CLOCK)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    fdt.end_node(rtc)?;

    let gpio = fdt.begin_node(&format!("pl061@{GPIO_ADDR:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl061".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u64("reg", &[GPIO_ADDR, DEVICE_WINDOW])?;
    // Edge: the interrupt is injected as a pulse (an irqfd), once per
    // event that becomes pending.
    fdt.property_array_u32("interrupts", &[GIC_SPI, GPIO_IRQ, IRQ_TYPE_EDGE_RISING])?;
    fdt.property_u32("#gpio-cells", 2)?;
    fdt.property_null("gpio-controller")?;
    fdt.property_u32("clocks", PHANDLE_CLOCK)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    fdt.property_u32("phandle", PHANDLE_GPIO)?;
    fdt.end_node(gpio)?;

    let keys = fdt.begin_node("gpio-keys")?;
    fdt.property_string("compatible", "gpio-keys")?;
    let key = fdt.begin_node("poweroff")?;
    fdt.property_string("label", "power key")?;
    fdt.property_u32("linux,code", KEY_POWER)?;
    // <phandle pin flags>: active high.
    fdt.property_array_u32("gpios", &[PHANDLE_GPIO, POWER_KEY_PIN, 0])?;
    fdt.end_node(key)?;
    fdt.end_node(keys)?;

    for dev in cfg.virtio {
        let node = fdt.begin_node(&format!("virtio_mmio@{:x}", dev.base))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &[dev.base, dev.len])?;
        fdt.property_array_u32("interrupts", &[GIC_SPI, dev.irq, IRQ_TYPE_EDGE_RISING])?;
        fdt.property_null("dma-coherent")?;
        fdt.end_node(node)?;
    }

    fdt.end_node(root)?;
    fdt.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn config<'a>(
        mpidrs: &'a [u64],
        ram: &'a [RamRegion],
        virtio: &'a [VirtioMmio],
        gic: GicVersion,
    ) -> FdtConfig<'a> {
        FdtConfig {
            mpidrs,
            ram,
            cmdline: "console=ttyS0 panic=1",
            initrd: Some((0x8800_0000, 0x1000)),
            gic,
            virtio,
        }
    }

    /// Node names and strings as they appear in the blob's structure and
    /// strings blocks.
    fn contains(blob: &[u8], needle: &[u8]) -> bool {
        blob.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn describes_every_cpu_device_and_the_command_line() {
        let mpidrs = [0x8000_0000, 0x8000_0001, 0x8000_0002];
        let ram = [(GuestAddress(DRAM_START), 256 << 20)];
        let virtio = [
            VirtioMmio {
                base: MMIO_DEVICES_START,
                len: 0x1000,
                irq: VIRTIO_IRQ_BASE,
            },
            VirtioMmio {
                base: MMIO_DEVICES_START + 0x1000,
                len: 0x1000,
                irq: VIRTIO_IRQ_BASE + 1,
            },
        ];
        let blob = build_fdt(&config(&mpidrs, &ram, &virtio, GicVersion::V3)).unwrap();
        // The header: magic, and the total size is the blob's.
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        assert_eq!(
            u32::from_be_bytes(blob[4..8].try_into().unwrap()) as usize,
            blob.len()
        );
        for name in [
            "cpu@0",
            "cpu@1",
            "cpu@2",
            "memory@80000000",
            "intc@3fff0000",
            "uart@40002000",
            "rtc@40001000",
            "pl061@6ffff000",
            "gpio-keys",
            "linux,code",
            "virtio_mmio@40003000",
            "virtio_mmio@40004000",
            "arm,gic-v3",
            "arm,psci-0.2",
            "ns16550a",
            "arm,pl031",
            "console=ttyS0 panic=1",
            "/uart@40002000",
            "linux,initrd-start",
        ] {
            assert!(contains(&blob, name.as_bytes()), "{name} missing");
        }
        assert!(!contains(&blob, b"cpu@3"));
        assert!(blob.len() as u64 <= FDT_MAX_SIZE);
    }

    #[test]
    fn gicv2_has_its_cpu_interface() {
        let blob = build_fdt(&config(
            &[0x8000_0000],
            &[(GuestAddress(DRAM_START), 64 << 20)],
            &[],
            GicVersion::V2,
        ))
        .unwrap();
        assert!(contains(&blob, b"arm,gic-400"));
        assert!(!contains(&blob, b"arm,gic-v3"));
    }
}
