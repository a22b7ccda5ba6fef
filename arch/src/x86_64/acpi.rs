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
//! vCPUs can be plugged and unplugged while the guest runs: the MADT lists
//! every vCPU the VM can have (those absent at boot as "online capable"),
//! and the DSDT has a processor device for each, whose presence the guest
//! reads from the CPU hotplug controller at [`CPU_HOTPLUG_PORT`]. The GED
//! tells the guest when to rescan it; `_EJ0` hands a vCPU back.
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
    ACPI_PM_PORT, APIC_ADDR, CMOS_CENTURY, CMOS_LEN, CMOS_PORT, CPU_HOTPLUG_LEN, CPU_HOTPLUG_PORT,
    GED_IRQ, GED_PORT, HIMEM_START, IOAPIC_ADDR, MAX_VCPUS, RSDP_ADDR,
};

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More vCPUs than 8-bit xAPIC ids can name.
    #[error("{0} vCPUs do not fit in the ACPI MADT (at most {MAX_VCPUS}: xAPIC ids are 8-bit)")]
    TooManyCpus(u32),
    /// More vCPUs at boot than the VM can have.
    #[error("{0} vCPUs at boot but at most {1} in all")]
    BootCpus(u32, u32),
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

/// The IOAPIC's id: after the CPUs' APIC ids `0..vcpus`, as in the MP table.
pub fn ioapic_id(vcpus: u32) -> u8 {
    vcpus as u8
}

/// MADT revision 5 (ACPI 6.3): the revision from which the "online
/// capable" flag of a disabled local APIC means "can be plugged later".
const MADT_REVISION: u8 = 5;
/// Offsets of the revision and checksum bytes in every table header.
const HEADER_REVISION: usize = 8;
const HEADER_CHECKSUM: usize = 9;

/// The MADT local APIC entry of vCPU `id`, enabled: what the processor
/// device's `_MAT` returns once the vCPU is plugged.
fn lapic_entry(id: u8) -> [u8; 8] {
    // Type 0, length 8, ACPI processor UID, APIC id, flags (enabled).
    [0, 8, id, id, 1, 0, 0, 0]
}

/// AML serialized beforehand: lets a device list children built in a
/// loop without keeping each one's borrowed parts alive together.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// `\_SB_.CPUS`: the CPU hotplug controller's registers and methods, and
/// a processor device (`ACPI0007`) for each of the `max_vcpus` vCPUs the
/// VM can have. The GED's `_EVT` calls `CSCN`, which walks the vCPUs,
/// notifies the guest of each one plugged (1, device check) or asked back
/// (3, eject request) and acknowledges the event; Linux then brings the
/// vCPU up, or takes it offline and calls its `_EJ0`.
fn cpus_aml(max_vcpus: u32, bytes: &mut Vec<u8>) {
    let port = CPU_HOTPLUG_PORT as usize;
    let len = CPU_HOTPLUG_LEN as usize;
    let lock = || aml::Path::new("CPLK");
    let (csel, cpen, cins, crmv, cej0) = (
        aml::Path::new("CSEL"),
        aml::Path::new("CPEN"),
        aml::Path::new("CINS"),
        aml::Path::new("CRMV"),
        aml::Path::new("CEJ0"),
    );
    let (acquire, release) = (aml::Acquire::new(lock(), 0xffff), aml::Release::new(lock()));
    let select_arg = aml::Store::new(&csel, &aml::Arg(0));

    // CSTA(id): the device status, 0xF if present, else 0.
    let zero_status = aml::Store::new(&aml::Local(0), &aml::ZERO);
    let present = aml::Equal::new(&cpen, &aml::ONE);
    let full_status = aml::Store::new(&aml::Local(0), &0xfu8);
    let if_present = aml::If::new(&present, vec![&full_status]);
    let ret_status = aml::Return::new(&aml::Local(0));
    let csta = aml::Method::new(
        "CSTA".into(),
        1,
        true,
        vec![
            &acquire,
            &select_arg,
            &zero_status,
            &if_present,
            &release,
            &ret_status,
        ],
    );

    // CEJ0(id): the guest gives the vCPU back.
    let eject = aml::Store::new(&cej0, &aml::ONE);
    let cej = aml::Method::new(
        "CEJ_".into(),
        1,
        true,
        vec![&acquire, &select_arg, &eject, &release],
    );

    // CTFY(id, event): Notify the processor device `id`.
    let names: Vec<String> = (0..max_vcpus).map(|i| format!("C{i:03X}")).collect();
    let paths: Vec<aml::Path> = names.iter().map(|n| aml::Path::new(n)).collect();
    let ids: Vec<u64> = (0..u64::from(max_vcpus)).collect();
    let notifies: Vec<aml::Notify> = paths
        .iter()
        .map(|p| aml::Notify::new(p, &aml::Arg(1)))
        .collect();
    let matches: Vec<aml::Equal> = ids
        .iter()
        .map(|id| aml::Equal::new(&aml::Arg(0), id))
        .collect();
    let ifs: Vec<aml::If> = matches
        .iter()
        .zip(&notifies)
        .map(|(m, n)| aml::If::new(m, vec![n]))
        .collect();
    let ctfy = aml::Method::new(
        "CTFY".into(),
        2,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    );

    // CSCN: every vCPU in turn.
    let start = aml::Store::new(&aml::Local(0), &aml::ZERO);
    let more = aml::LessThan::new(&aml::Local(0), &max_vcpus);
    let select_local = aml::Store::new(&csel, &aml::Local(0));
    let inserting = aml::Equal::new(&cins, &aml::ONE);
    let device_check = aml::MethodCall::new("CTFY".into(), vec![&aml::Local(0), &aml::ONE]);
    let ack_insert = aml::Store::new(&cins, &aml::ONE);
    let on_insert = aml::If::new(&inserting, vec![&device_check, &ack_insert]);
    let removing = aml::Equal::new(&crmv, &aml::ONE);
    let eject_request = aml::MethodCall::new("CTFY".into(), vec![&aml::Local(0), &3u8]);
    let ack_remove = aml::Store::new(&crmv, &aml::ONE);
    let on_remove = aml::If::new(&removing, vec![&eject_request, &ack_remove]);
    let next = aml::Add::new(&aml::Local(0), &aml::Local(0), &aml::ONE);
    let walk = aml::While::new(&more, vec![&select_local, &on_insert, &on_remove, &next]);
    let cscn = aml::Method::new(
        "CSCN".into(),
        0,
        true,
        vec![&acquire, &start, &walk, &release],
    );

    let mut processors = Vec::with_capacity(max_vcpus as usize);
    for id in 0..max_vcpus {
        let uid = u64::from(id);
        let id_arg = uid;
        let sta_call = aml::MethodCall::new("CSTA".into(), vec![&id_arg]);
        let sta_ret = aml::Return::new(&sta_call);
        let sta = aml::Method::new("_STA".into(), 0, false, vec![&sta_ret]);
        let mat = aml::BufferData::new(lapic_entry(id as u8).to_vec());
        let ej_call = aml::MethodCall::new("CEJ_".into(), vec![&id_arg]);
        let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&ej_call]);
        let hid = aml::Name::new("_HID".into(), &"ACPI0007");
        let uid_name = aml::Name::new("_UID".into(), &uid);
        let mat_ret = aml::Return::new(&mat);
        let mat_method = aml::Method::new("_MAT".into(), 0, false, vec![&mat_ret]);
        // The boot vCPU stays: Linux cannot unplug it.
        let mut children: Vec<&dyn Aml> = vec![&hid, &uid_name, &sta, &mat_method];
        if id != 0 {
            children.push(&ej0);
        }
        let mut dev = Vec::new();
        aml::Device::new(names[id as usize].as_str().into(), children).to_aml_bytes(&mut dev);
        processors.push(dev);
    }
    let processors: Vec<RawAml> = processors.into_iter().map(RawAml).collect();

    let region = aml::OpRegion::new("PRST".into(), aml::OpRegionSpace::SystemIO, &port, &len);
    let select_field = aml::Field::new(
        "PRST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::Preserve,
        vec![aml::FieldEntry::Named(*b"CSEL", 32)],
    );
    // WriteAsZeros: acknowledging one bit writes 0 to the others, which
    // the controller ignores (an eject is only a written 1).
    let status_field = aml::Field::new(
        "PRST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Reserved(32),
            aml::FieldEntry::Named(*b"CPEN", 1),
            aml::FieldEntry::Named(*b"CINS", 1),
            aml::FieldEntry::Named(*b"CRMV", 1),
            aml::FieldEntry::Named(*b"CEJ0", 1),
            aml::FieldEntry::Reserved(4),
        ],
    );
    let hid = aml::Name::new("_HID".into(), &"ACPI0010");
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A05"));
    let mutex = aml::Mutex::new("CPLK".into(), 0);
    let mut children: Vec<&dyn Aml> = vec![
        &hid,
        &cid,
        &mutex,
        &region,
        &select_field,
        &status_field,
        &csta,
        &cej,
        &ctfy,
        &cscn,
    ];
    children.extend(processors.iter().map(|p| p as &dyn Aml));
    aml::Device::new("_SB_.CPUS".into(), children).to_aml_bytes(bytes);
}

/// A legacy device with an EISA id (`_HID`), unit 0, and `resources`.
fn pnp_device(path: &str, eisa_id: &str, resources: Vec<&dyn Aml>, bytes: &mut Vec<u8>) {
    let crs = aml::ResourceTemplate::new(resources);
    aml::Device::new(
        path.into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new(eisa_id)),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(bytes);
}

/// The DSDT's AML: COM1, the i8042, the CMOS clock, every virtio-mmio device, the
/// processors and the CPU hotplug controller, the power button, the
/// Generic Event Device and the `\_S5` sleep state.
pub fn dsdt_aml(max_vcpus: u32, virtio: &[VirtioMmio]) -> Vec<u8> {
    let mut bytes = Vec::new();
    cpus_aml(max_vcpus, &mut bytes);
    let (com1_io, com1_irq) = (
        aml::IO::new(0x3f8, 0x3f8, 1, 8),
        aml::Interrupt::new(true, true, false, false, 4),
    );
    pnp_device(
        "_SB_.COM1",
        "PNP0501",
        vec![&com1_io, &com1_irq],
        &mut bytes,
    );

    // The i8042: strato's keyboard controller carries Ctrl-Alt-Del and the
    // reset line; Linux's i8042 driver finds it through this node.
    let (data, command, kbd_irq) = (
        aml::IO::new(0x60, 0x60, 1, 1),
        aml::IO::new(0x64, 0x64, 1, 1),
        aml::Interrupt::new(true, true, false, false, 1),
    );
    pnp_device(
        "_SB_.PS2_",
        "PNP0303",
        vec![&data, &command, &kbd_irq],
        &mut bytes,
    );

    // The CMOS clock, without an interrupt: strato raises none, and Linux
    // takes a clock without one for a clock that has no alarms.
    let cmos_port = CMOS_PORT as u16;
    let cmos_io = aml::IO::new(cmos_port, cmos_port, 1, CMOS_LEN as u8);
    pnp_device("_SB_.RTC_", "PNP0B00", vec![&cmos_io], &mut bytes);

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
    let cpu_event = aml::And::new(&aml::ZERO, &aml::Local(0), &GED_EVENT_CPU_HOTPLUG);
    let scan = aml::MethodCall::new("\\_SB_.CPUS.CSCN".into(), vec![]);
    let on_cpu = aml::If::new(&cpu_event, vec![&scan]);
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
            &aml::Method::new(
                "_EVT".into(),
                1,
                true,
                vec![&read_events, &on_power, &on_cpu],
            ),
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

fn dsdt(max_vcpus: u32, virtio: &[VirtioMmio]) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"STRATODS", 1);
    sdt.append_slice(&dsdt_aml(max_vcpus, virtio));
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
    fadt.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    // The CMOS clock keeps the century where PCs do.
    fadt.century = CMOS_CENTURY;
    fadt.sleep_control_reg = io_register(ACPI_PM_PORT + SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io_register(ACPI_PM_PORT + SLEEP_STATUS_OFFSET);
    fadt.reset_reg = io_register(ACPI_PM_PORT + RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*HYPERVISOR_VENDOR).into();
    let mut bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// A local APIC per vCPU the VM can have: enabled for the `vcpus`
/// present at boot, "online capable" for the others (Linux counts them as
/// possible CPUs and brings them up when they are plugged).
fn madt(vcpus: u32, max_vcpus: u32) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"STRATOMA",
        1,
        LocalInterruptController::Address(APIC_ADDR as u32),
    );
    for id in 0..max_vcpus {
        let status = if id < vcpus {
            EnabledStatus::Enabled
        } else {
            EnabledStatus::DisabledOnlineCapable
        };
        madt.add_structure(ProcessorLocalApic::new(id as u8, id as u8, status));
    }
    // The MADT's flags stay 0 (no PCAT_COMPAT): KVM emulates the 8259s,
    // but nothing is routed through them once the IOAPIC is in use.
    // GSI n is IOAPIC pin n, and ISA IRQ n is GSI n, edge-triggered and
    // active high: KVM's default routing and ACPI's default for ISA
    // interrupts, so no interrupt source override is needed.
    madt.add_structure(IoApic::new(ioapic_id(max_vcpus), IOAPIC_ADDR as u32, 0));
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    set_revision(&mut bytes, MADT_REVISION);
    bytes
}

/// Sets a serialized table's header revision, keeping its checksum right.
fn set_revision(table: &mut [u8], revision: u8) {
    let old = table[HEADER_REVISION];
    table[HEADER_REVISION] = revision;
    table[HEADER_CHECKSUM] = table[HEADER_CHECKSUM]
        .wrapping_add(old)
        .wrapping_sub(revision);
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

/// Builds every table for `vcpus` CPUs at boot out of `max_vcpus`, and
/// the `virtio` devices, placed from [`RSDP_ADDR`] up: `(address, bytes)`
/// pairs, the RSDP first.
pub fn build(
    vcpus: u32,
    max_vcpus: u32,
    virtio: &[VirtioMmio],
) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    if max_vcpus == 0 || max_vcpus > MAX_VCPUS {
        return Err(Error::TooManyCpus(max_vcpus));
    }
    if vcpus == 0 || vcpus > max_vcpus {
        return Err(Error::BootCpus(vcpus, max_vcpus));
    }
    let mut next = align(RSDP_ADDR + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>, out: &mut Vec<(u64, Vec<u8>)>| {
        let at = next;
        next = align(at + bytes.len() as u64);
        out.push((at, bytes));
        at
    };
    let mut tables = Vec::new();
    let dsdt_addr = place(dsdt(max_vcpus, virtio), &mut tables);
    let fadt_addr = place(fadt(dsdt_addr), &mut tables);
    let madt_addr = place(madt(vcpus, max_vcpus), &mut tables);
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
pub fn setup_acpi(
    mem: &GuestMemoryMmap,
    vcpus: u32,
    max_vcpus: u32,
    virtio: &[VirtioMmio],
) -> Result<u64, Error> {
    for (addr, bytes) in build(vcpus, max_vcpus, virtio)? {
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
        let tables = build(4, 4, &devices(3)).unwrap();
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
        // A CMOS clock (its century at 0x32), no VGA, an 8042.
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]), 0b110);
        assert_eq!(fadt[108], CMOS_CENTURY);
        // Sleep control and reset registers are our I/O ports.
        assert_eq!((fadt[244], le64(fadt, 248)), (1, ACPI_PM_PORT));
        assert_eq!((fadt[116], le64(fadt, 120)), (1, ACPI_PM_PORT + 2));
        assert_eq!(fadt[128], RESET_VALUE);
    }

    #[test]
    fn madt_has_a_local_apic_per_vcpu_and_the_ioapic() {
        for (vcpus, max) in [
            (1, 1),
            (2, 2),
            (7, 7),
            (MAX_VCPUS, MAX_VCPUS),
            (1, 4),
            (3, 8),
        ] {
            let tables = build(vcpus, max, &[]).unwrap();
            let (_, madt) = table(&tables, b"APIC");
            assert_eq!(madt[8], MADT_REVISION);
            assert_eq!(sum(madt), 0);
            assert_eq!(le32(madt, 36), APIC_ADDR as u32);
            let mut at = 44;
            let (mut cpus, mut ioapics) = (Vec::new(), 0);
            while at < madt.len() {
                let (kind, len) = (madt[at], madt[at + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(len, 8);
                        let id = madt[at + 3];
                        // Enabled at boot, online capable after.
                        let flags = if u32::from(id) < vcpus { 1 } else { 2 };
                        assert_eq!(le32(madt, at + 4), flags, "vCPU {id}");
                        assert_eq!(madt[at + 2], id, "processor UID");
                        cpus.push(id);
                    }
                    1 => {
                        assert_eq!(le32(madt, at + 4), IOAPIC_ADDR as u32);
                        assert_eq!(madt[at + 2], ioapic_id(max));
                        ioapics += 1;
                    }
                    other => panic!("unexpected MADT entry {other}"),
                }
                at += len;
            }
            assert_eq!(at, madt.len());
            assert_eq!(cpus, (0..max).map(|i| i as u8).collect::<Vec<_>>());
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
        assert!(matches!(build(0, 0, &[]), Err(Error::TooManyCpus(0))));
        assert!(matches!(build(0, 2, &[]), Err(Error::BootCpus(0, 2))));
        assert!(matches!(build(3, 2, &[]), Err(Error::BootCpus(3, 2))));
        assert!(matches!(
            build(1, MAX_VCPUS + 1, &[]),
            Err(Error::TooManyCpus(255))
        ));
    }

    #[test]
    fn the_boot_vcpu_cannot_be_ejected() {
        let aml = dsdt_aml(3, &[]);
        // _EJ0 for C001 and C002 only.
        let count = aml.windows(4).filter(|w| w == b"_EJ0").count();
        assert_eq!(count, 2);
    }

    #[test]
    fn many_devices_fit_below_1_mib() {
        let tables = build(MAX_VCPUS, MAX_VCPUS, &devices(18)).unwrap();
        let (_, dsdt) = table(&tables, b"DSDT");
        for i in 0..18 {
            let name = format!("V{i:03X}");
            assert!(dsdt.windows(4).any(|w| w == name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn writes_into_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        assert_eq!(setup_acpi(&mem, 2, 2, &devices(1)).unwrap(), RSDP_ADDR);
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
        let tables = build(2, 3, &devices(3)).unwrap();
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
            "Device (_SB.RTC)",
            "EisaId (\"PNP0B00\")",
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
            // vCPUs: the controller, its methods, a processor each.
            "Device (_SB.CPUS)",
            "\"ACPI0010\"",
            "OperationRegion (PRST, SystemIO, 0x0608, 0x05)",
            "Method (CSCN, 0, Serialized)",
            "Method (CSTA, 1, Serialized)",
            "Method (CEJ, 1, Serialized)",
            "Method (CTFY, 2, NotSerialized)",
            "\\_SB.CPUS.CSCN ()",
            "Device (C000)",
            "Device (C001)",
            "Device (C002)",
            "\"ACPI0007\"",
            "Return (CSTA (0x02))",
            "CEJ (0x02)",
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
