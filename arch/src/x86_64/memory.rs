//! Guest RAM regions and the e820 map that describes them.

use vm_memory::GuestAddress;

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};
use crate::RamRegion;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the guest's physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type ([`E820_RAM`] or [`E820_RESERVED`]).
    pub kind: u32,
}

/// The RAM regions to map for a guest of `mem_bytes` bytes: RAM up to the
/// 32-bit MMIO gap, and the rest above 4 GiB.
pub fn ram_regions(mem_bytes: u64) -> Vec<RamRegion> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_bytes)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// The most guest-physical space x86_64 gives hotpluggable memory: up to
/// 512 GiB, what 39 address bits (the fewest of today's x86_64 CPUs)
/// reach, so a guest's memory fits any host's EPT or NPT.
pub const HOTPLUG_END: u64 = 1 << 39;

/// Where hotpluggable memory (virtio-mem) may go for a guest of
/// `mem_bytes` bytes of RAM: from the first 1 GiB boundary above RAM and
/// the MMIO gap (Linux adds memory in aligned 128 MiB sections), to
/// [`HOTPLUG_END`].
pub fn hotplug_window(mem_bytes: u64) -> (u64, u64) {
    let ram_end = ram_regions(mem_bytes)
        .iter()
        .map(|(start, len)| start.0 + len)
        .max()
        .unwrap_or(0);
    (
        ram_end.max(MMIO_GAP_END).next_multiple_of(1 << 30),
        HOTPLUG_END,
    )
}

/// End of RAM below the MMIO gap.
pub fn low_ram_end(regions: &[RamRegion]) -> u64 {
    regions
        .iter()
        .filter(|(start, _)| start.0 < MMIO_GAP_START)
        .map(|(start, len)| start.0 + len)
        .max()
        .unwrap_or(0)
}

/// The e820 map for `regions`: conventional memory below the EBDA, the
/// BIOS area (where the MP table lives) reserved, then RAM from 1 MiB.
pub fn memory_map(regions: &[RamRegion]) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for &(start, len) in regions {
        let end = start.0 + len;
        let start = start.0.max(HIMEM_START);
        if end > start {
            map.push(MemoryMapEntry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIB;

    #[test]
    fn small_guest_is_one_region() {
        let r = ram_regions(256 * MIB);
        assert_eq!(r, vec![(GuestAddress(0), 256 * MIB)]);
        assert_eq!(low_ram_end(&r), 256 * MIB);
        let map = memory_map(&r);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].size, 255 * MIB);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 256 * MIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_guest_skips_the_gap() {
        let r = ram_regions(5 * 1024 * MIB);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), 2 * 1024 * MIB));
        assert_eq!(low_ram_end(&r), MMIO_GAP_START);
        let map = memory_map(&r);
        assert_eq!(map.last().unwrap().addr, MMIO_GAP_END);
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
    }

    #[test]
    fn hotplug_memory_goes_above_ram_and_the_gap_on_a_1_gib_boundary() {
        assert_eq!(hotplug_window(256 * MIB), (4 << 30, HOTPLUG_END));
        // 5 GiB of RAM: 3 GiB below the gap, 2 GiB from 4 GiB.
        assert_eq!(hotplug_window(5 * 1024 * MIB).0, 6 << 30);
        assert_eq!(hotplug_window(5 * 1024 * MIB + MIB).0, 7 << 30);
    }
}
