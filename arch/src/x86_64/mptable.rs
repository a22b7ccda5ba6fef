//! Intel MultiProcessor Specification 1.4 tables: how the guest finds its
//! CPUs, its IOAPIC and the routing of ISA interrupts without ACPI.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IOAPIC_PINS, MAX_VCPUS};

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More vCPUs than xAPIC ids.
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_VCPUS})")]
    TooManyCpus(u32),
    /// The table does not fit in guest memory.
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature and the FPU + APIC feature flags, as reported for a
/// generic processor.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer structure and the configuration table for
/// `vcpus` CPUs, to be placed at `base`.
pub fn build(base: u64, vcpus: u32) -> Result<Vec<u8>, Error> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::TooManyCpus(vcpus));
    }
    let ioapic_id = super::acpi::ioapic_id(vcpus);
    let table_addr = base + FLOATING_POINTER_LEN as u64;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus as u8 {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION]);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    // ISA IRQ n is IOAPIC pin n: KVM's default GSI routing.
    entries.extend_from_slice(&[
        ENTRY_IO_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        0,
        0,
        ioapic_id,
        0,
    ]);
    count += 1;
    for irq in 1..IOAPIC_PINS {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"STRATO  ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP table for `vcpus` CPUs at the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, vcpus: u32) -> Result<(), Error> {
    let bytes = build(EBDA_START, vcpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let b = build(EBDA_START, 4).unwrap();
        assert_eq!(&b[0..4], b"_MP_");
        assert_eq!(checksum(&b[..16]), 0);
        let table = &b[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(checksum(table), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count as usize, 4 + 1 + 1 + IOAPIC_PINS as usize + 2);
        // First processor entry is the enabled BSP.
        assert_eq!(&table[44..48], &[0, 0, APIC_VERSION, 3]);
        assert_eq!(&table[64..68], &[0, 1, APIC_VERSION, 1]);
        let ptr = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(u64::from(ptr), EBDA_START + 16);
    }

    #[test]
    fn rejects_bad_counts() {
        assert!(build(EBDA_START, 0).is_err());
        assert!(build(EBDA_START, MAX_VCPUS + 1).is_err());
        assert!(build(EBDA_START, MAX_VCPUS).is_ok());
    }
}
