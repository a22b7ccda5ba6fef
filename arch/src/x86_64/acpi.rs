//! ACPI tables: how kernels that only look at ACPI (Debian's cloud kernel
//! has no MP-table parser and no `virtio_mmio.device=` support) find their
//! CPUs, interrupt controllers and devices, and how they power off.
//!
//! The platform is hardware-reduced (ACPI 6.5, 4.1): no PM1 blocks, no
//! SCI, no GPEs. Power-off and reset go through the FADT's sleep control
//! and reset registers (I/O ports at [`ACPI_PM_PORT`]); the power button
//! is a `PNP0C0C` device notified by a Generic Event Device (`ACPI0013`)
//! whose interrupt is [`GED_IRQ`] and whose event register is at
//! [`GED_PORT`]. The MP table stays, for kernels without ACPI and for
//! `acpi=off`.
//!
//! ```text
//! RSDP (0xe0000) -> XSDT -> FADT -> DSDT
//!                        -> MADT
//! ```

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_PM_PORT, APIC_ADDR, GED_IRQ, GED_PORT, HIMEM_START, IOAPIC_ADDR, MAX_VCPUS, RSDP_ADDR,
};

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More vCPUs than 8-bit xAPIC ids can name.
    #[error("{0} vCPUs do not fit in the ACPI MADT (at most {MAX_VCPUS}: xAPIC ids are 8-bit)")]
    TooManyCpus(u32),
    /// The tables outgrew the space below 1 MiB.
    #[error("the ACPI tables need {0} bytes, more than the {1} bytes below 1 MiB")]
    TooLarge(u64, u64),
    /// The tables do not fit in guest memory.
    #[error("cannot write the ACPI tables into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

pub use crate::VirtioMmio;

/// OEM id in every table header.
const OEM_ID: [u8; 6] = *b"STRATO";
/// The FADT's hypervisor vendor identity.
const HYPERVISOR_VENDOR: &[u8; 8] = b"STRATOVM";

pub use crate::acpi_regs::*;

/// FADT IA-PC boot architecture flags (ACPI 6.5, 5.2.9.3).
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// The IOAPIC's id: after the CPUs' APIC ids `0..vcpus`, as in the MP table.
pub fn ioapic_id(vcpus: u32) -> u8 {
    vcpus as u8
}

/// The DSDT's AML: COM1, the i8042, every virtio-mmio device, the power
/// button, the Generic Event Device and the `\_S5` sleep state.
pub fn dsdt_aml(virtio: &[VirtioMmio]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let (com1_io, com1_irq) = (
        aml::IO::new(0x3f8, 0x3f8, 1, 8),
        aml::Interrupt::new(true, true, false, false, 4),
    );
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut bytes);

    // The i8042: strato's keyboard controller carries Ctrl-Alt-Del and the
    // reset line; Linux's i8042 driver finds it through this node.
    let (data, command, kbd_irq) = (
        aml::IO::new(0x60, 0x60, 1, 1),
        aml::IO::new(0x64, 0x64, 1, 1),
        aml::Interrupt::new(true, true, false, false, 1),
    );
    let ps2_crs = aml::ResourceTemplate::new(vec![&data, &command, &kbd_irq]);
    aml::Device::new(
        "_SB_.PS2_".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &ps2_crs),
        ],
    )
    .to_aml_bytes(&mut bytes);

    for (i, dev) in virtio.iter().enumerate() {
        let name = format!("_SB_.V{i:03X}");
        let window = aml::Memory32Fixed::new(true, dev.base as u32, dev.len as u32);
        let irq = aml::Interrupt::new(true, true, false, false, dev.irq);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        let uid = i as u64;
        aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                // DMA is cache-coherent.
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut bytes);
    }

    aml::Device::new(
        "_SB_.PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(&mut bytes);

    // The GED: on its interrupt Linux runs _EVT, which reads (and so
    // clears) the event register and notifies the devices it names.
    let ged_irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
    let ged_crs = aml::ResourceTemplate::new(vec![&ged_irq]);
    let ged_port = GED_PORT as usize;
    let one_byte = 1usize;
    let power_pressed = aml::And::new(&aml::ZERO, &aml::Local(0), &GED_EVENT_POWER_BUTTON);
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let notify_power = aml::Notify::new(&pwrb, &0x80u8);
    let gdat = aml::Path::new("GDAT");
    let read_events = aml::Store::new(&aml::Local(0), &gdat);
    let on_power = aml::If::new(&power_pressed, vec![&notify_power]);
    aml::Device::new(
        "_SB_.GED_".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &ged_crs),
            &aml::OpRegion::new(
                "GDST".into(),
                aml::OpRegionSpace::SystemIO,
                &ged_port,
                &one_byte,
            ),
            &aml::Field::new(
                "GDST".into(),
                aml::FieldAccessType::Byte,
                aml::FieldLockRule::NoLock,
                aml::FieldUpdateRule::WriteAsZeroes,
                vec![aml::FieldEntry::Named(*b"GDAT", 8)],
            ),
            &aml::Method::new("_EVT".into(), 1, true, vec![&read_events, &on_power]),
        ],
    )
    .to_aml_bytes(&mut bytes);

    // \_S5: the SLP_TYP values Linux writes to power off.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &aml::ZERO]),
    )
    .to_aml_bytes(&mut bytes);
    bytes
}

fn dsdt(virtio: &[VirtioMmio]) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"STRATODS", 1);
    sdt.append_slice(&dsdt_aml(virtio));
    sdt.as_slice().to_vec()
}

fn io_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"STRATOFA", 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        // Power and sleep buttons are control-method devices (or absent).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.sleep_control_reg = io_register(ACPI_PM_PORT + SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io_register(ACPI_PM_PORT + SLEEP_STATUS_OFFSET);
    fadt.reset_reg = io_register(ACPI_PM_PORT + RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*HYPERVISOR_VENDOR).into();
    let mut bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"STRATOMA",
        1,
        LocalInterruptController::Address(APIC_ADDR as u32),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(
            id as u8,
            id as u8,
            EnabledStatus::Enabled,
        ));
    }
    // The MADT's flags stay 0 (no PCAT_COMPAT): KVM emulates the 8259s,
    // but nothing is routed through them once the IOAPIC is in use.
    // GSI n is IOAPIC pin n, and ISA IRQ n is GSI n, edge-triggered and
    // active high: KVM's default routing and ACPI's default for ISA
    // interrupts, so no interrupt source override is needed.
    madt.add_structure(IoApic::new(ioapic_id(vcpus), IOAPIC_ADDR as u32, 0));
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    bytes
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, *b"STRATOXS", 1);
    for e in entries {
        xsdt.add_entry(*e);
    }
    let mut bytes = Vec::new();
    xsdt.to_aml_bytes(&mut bytes);
    bytes
}

/// Aligns table starts to 16 bytes.
fn align(addr: u64) -> u64 {
    (addr + 15) & !15
}

/// Builds every table for `vcpus` CPUs and the `virtio` devices, placed
/// from [`RSDP_ADDR`] up: `(address, bytes)` pairs, the RSDP first.
pub fn build(vcpus: u32, virtio: &[VirtioMmio]) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::TooManyCpus(vcpus));
    }
    let mut next = align(RSDP_ADDR + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>, out: &mut Vec<(u64, Vec<u8>)>| {
        let at = next;
        next = align(at + bytes.len() as u64);
        out.push((at, bytes));
        at
    };
    let mut tables = Vec::new();
    let dsdt_addr = place(dsdt(virtio), &mut tables);
    let fadt_addr = place(fadt(dsdt_addr), &mut tables);
    let madt_addr = place(madt(vcpus), &mut tables);
    let xsdt_addr = place(xsdt(&[fadt_addr, madt_addr]), &mut tables);
    let end = tables.last().map_or(next, |(a, b)| a + b.len() as u64);
    if end > HIMEM_START {
        return Err(Error::TooLarge(end - RSDP_ADDR, HIMEM_START - RSDP_ADDR));
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    tables.insert(0, (RSDP_ADDR, rsdp));
    Ok(tables)
}

/// Writes the tables into guest memory; returns the RSDP's address for
/// the boot information.
pub fn setup_acpi(mem: &GuestMemoryMmap, vcpus: u32, virtio: &[VirtioMmio]) -> Result<u64, Error> {
    for (addr, bytes) in build(vcpus, virtio)? {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(Error::Write)?;
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::vm::ged_listening;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn devices(n: usize) -> Vec<VirtioMmio> {
        (0..n)
            .map(|i| VirtioMmio {
                base: 0xd000_1000 + 0x1000 * i as u64,
                len: 0x1000,
                irq: 5 + i as u32,
            })
            .collect()
    }

    fn table<'a>(tables: &'a [(u64, Vec<u8>)], sig: &[u8; 4]) -> (u64, &'a [u8]) {
        tables
            .iter()
            .find(|(_, b)| &b[..4] == sig)
            .map(|(a, b)| (*a, b.as_slice()))
            .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(sig)))
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn checksums_lengths_and_links() {
        let tables = build(4, &devices(3)).unwrap();
        let (rsdp_addr, rsdp) = (tables[0].0, &tables[0].1);
        assert_eq!(rsdp_addr, RSDP_ADDR);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        for (addr, b) in &tables[1..] {
            assert_eq!(le32(b, 4) as usize, b.len(), "{:?}", &b[..4]);
            assert_eq!(
                sum(b),
                0,
                "checksum of {:?}",
                String::from_utf8_lossy(&b[..4])
            );
            assert_eq!(addr % 16, 0);
            assert!(addr + b.len() as u64 <= HIMEM_START);
        }
        let (xsdt_addr, xsdt) = table(&tables, b"XSDT");
        assert_eq!(le64(rsdp, 24), xsdt_addr);
        let (fadt_addr, fadt) = table(&tables, b"FACP");
        let (madt_addr, _) = table(&tables, b"APIC");
        assert_eq!((le64(xsdt, 36), le64(xsdt, 44)), (fadt_addr, madt_addr));
        let (dsdt_addr, _) = table(&tables, b"DSDT");
        assert_eq!(le64(fadt, 140), dsdt_addr, "X_DSDT");
        // Hardware-reduced, reset register supported.
        let flags = le32(fadt, 112);
        assert_ne!(flags & (1 << 20), 0);
        assert_ne!(flags & (1 << 10), 0);
        // No CMOS RTC, no VGA, an 8042.
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]), 0b10_0110);
        // Sleep control and reset registers are our I/O ports.
        assert_eq!((fadt[244], le64(fadt, 248)), (1, ACPI_PM_PORT));
        assert_eq!((fadt[116], le64(fadt, 120)), (1, ACPI_PM_PORT + 2));
        assert_eq!(fadt[128], RESET_VALUE);
    }

    #[test]
    fn madt_has_a_local_apic_per_vcpu_and_the_ioapic() {
        for vcpus in [1, 2, 7, MAX_VCPUS] {
            let tables = build(vcpus, &[]).unwrap();
            let (_, madt) = table(&tables, b"APIC");
            assert_eq!(le32(madt, 36), APIC_ADDR as u32);
            let mut at = 44;
            let (mut cpus, mut ioapics) = (Vec::new(), 0);
            while at < madt.len() {
                let (kind, len) = (madt[at], madt[at + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(le32(madt, at + 4), 1, "enabled");
                        cpus.push(madt[at + 3]);
                    }
                    1 => {
                        assert_eq!(le32(madt, at + 4), IOAPIC_ADDR as u32);
                        assert_eq!(madt[at + 2], ioapic_id(vcpus));
                        ioapics += 1;
                    }
                    other => panic!("unexpected MADT entry {other}"),
                }
                at += len;
            }
            assert_eq!(at, madt.len());
            assert_eq!(cpus, (0..vcpus).map(|i| i as u8).collect::<Vec<_>>());
            assert_eq!(ioapics, 1);
        }
    }

    #[test]
    fn ged_listening_reads_the_mask_bit_of_its_pin() {
        let mut ioapic = kvm_bindings::kvm_ioapic_state::default();
        for e in ioapic.redirtbl.iter_mut() {
            e.bits = 1 << 16;
        }
        assert!(!ged_listening(&ioapic));
        ioapic.redirtbl[GED_IRQ as usize].bits = 0x30;
        assert!(ged_listening(&ioapic));
    }

    #[test]
    fn refuses_cpu_counts_it_cannot_describe() {
        assert!(matches!(build(0, &[]), Err(Error::TooManyCpus(0))));
        assert!(matches!(
            build(MAX_VCPUS + 1, &[]),
            Err(Error::TooManyCpus(255))
        ));
    }

    #[test]
    fn many_devices_fit_below_1_mib() {
        let tables = build(MAX_VCPUS, &devices(18)).unwrap();
        let (_, dsdt) = table(&tables, b"DSDT");
        for i in 0..18 {
            let name = format!("V{i:03X}");
            assert!(dsdt.windows(4).any(|w| w == name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn writes_into_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        assert_eq!(setup_acpi(&mem, 2, &devices(1)).unwrap(), RSDP_ADDR);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(RSDP_ADDR)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }

    /// The DSDT as ACPICA's disassembler reads it: every device with its
    /// id and resources, the GED's event method and `\_S5`. Needs `iasl`
    /// (Debian: acpica-tools), which CI installs.
    #[test]
    fn iasl_disassembles_the_dsdt_naming_every_device() {
        let dir = std::env::temp_dir().join(format!("strato-dsdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tables = build(2, &devices(3)).unwrap();
        let (_, dsdt) = table(&tables, b"DSDT");
        std::fs::write(dir.join("dsdt.dat"), dsdt).unwrap();
        let out = std::process::Command::new("iasl")
            .args(["-d", "dsdt.dat"])
            .current_dir(&dir)
            .output()
            .expect("iasl (Debian package acpica-tools) must be installed for this test");
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
        if std::env::var_os("STRATO_KEEP_DSDT").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert!(
            out.status.success(),
            "iasl -d failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for needle in [
            "Device (_SB.COM1)",
            "EisaId (\"PNP0501\")",
            "IO (Decode16,\n                0x03F8,",
            "Device (_SB.PS2)",
            "EisaId (\"PNP0303\")",
            "Device (_SB.V000)",
            "Device (_SB.V001)",
            "Device (_SB.V002)",
            "\"LNRO0005\"",
            "0xD0003000,         // Address Base",
            "Device (_SB.PWRB)",
            "EisaId (\"PNP0C0C\")",
            "Device (_SB.GED)",
            "\"ACPI0013\"",
            "OperationRegion (GDST, SystemIO, 0x0604, One)",
            "Method (_EVT, 1, Serialized)",
            "Notify (\\_SB.PWRB, 0x80)",
            "Name (_S5, Package (0x02)",
        ] {
            assert!(
                dsl.contains(needle),
                "{needle:?} not in the disassembly:\n{dsl}"
            );
        }
        for irq in [4, 1, 5, 6, 7, GED_IRQ] {
            let line = format!("0x{irq:08X},");
            assert!(
                dsl.contains(&line),
                "interrupt {irq} not in the disassembly:\n{dsl}"
            );
        }
    }
}
