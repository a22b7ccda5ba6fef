//! Guest RAM, mapped at 2 MiB-aligned host addresses.
//!
//! KVM maps guest memory into the guest with 2 MiB pages (x86 EPT/NPT,
//! arm64 stage 2) only where the host address and the guest-physical
//! address agree modulo 2 MiB and the host backs the range with a
//! transparent huge page. A plain anonymous `mmap` lands wherever the
//! kernel finds room (Linux before 6.7 does not align large anonymous
//! mappings), and guest RAM starts at 2 MiB-aligned guest addresses, so the
//! guest would run on 4 KiB mappings throughout: more TLB misses, longer
//! page walks. Measured in the aarch64 lane (Debian's arm64 kernel, 2
//! vCPUs): its crypto self-tests ran 6.7 times slower, and boot to init
//! took 8.6 s against 6.3 s, before RAM was aligned. Firecracker aligns for
//! the same reason.
//!
//! vm-memory cannot choose where it maps, so this module maps each region
//! itself and hands vm-memory the address ([`GuestRam::map`]). vm-memory
//! does not unmap such a region; [`GuestRam`] does, when it drops, which
//! must be after every user of the `GuestMemoryMmap` is gone (the `Vm`
//! keeps it as its last field).

use std::io;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestRegionMmap};

/// The alignment of every region's host address: a huge page.
const ALIGN: usize = 2 << 20;

/// One anonymous mapping, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory; the pointer is only used to unmap
// it, once, on drop.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` has no methods that use the pointer.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is a mapping this struct made and no
        // one else unmaps.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The host mappings behind a guest's RAM.
pub(crate) struct GuestRam {
    _maps: Vec<Mapping>,
}

impl GuestRam {
    /// Maps `ranges` (guest address, length in bytes; page multiples) of
    /// private anonymous memory, each at a 2 MiB-aligned host address,
    /// and returns a region for each, in order.
    pub(crate) fn map(
        ranges: &[(GuestAddress, usize)],
    ) -> io::Result<(GuestRam, Vec<Arc<GuestRegionMmap>>)> {
        let mut maps = Vec::with_capacity(ranges.len());
        let mut regions = Vec::with_capacity(ranges.len());
        for &(start, len) in ranges {
            let map = map_aligned(len)?;
            // SAFETY: `map` is a live read-write mapping of exactly `len`
            // bytes, kept until `GuestRam` drops.
            let mmap = unsafe {
                MmapRegionBuilder::new(len)
                    .with_raw_mmap_pointer(map.addr.cast())
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            }
            .build()
            .map_err(|e| io::Error::other(e.to_string()))?;
            maps.push(map);
            let region = GuestRegionMmap::new(mmap, start)
                .ok_or_else(|| io::Error::other(format!("region at {:#x} overflows", start.0)))?;
            regions.push(Arc::new(region));
        }
        Ok((GuestRam { _maps: maps }, regions))
    }
}

/// Maps `len` bytes of private anonymous memory at a 2 MiB-aligned
/// address: reserves `len` + 2 MiB of address space, maps the memory over
/// its aligned part and gives back the rest.
fn map_aligned(len: usize) -> io::Result<Mapping> {
    let total = len
        .checked_add(ALIGN)
        .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a new inaccessible anonymous mapping; it aliases nothing.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), total, libc::PROT_NONE, flags, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let reservation = Mapping {
        addr: base,
        len: total,
    };
    let head = (base as usize).next_multiple_of(ALIGN) - base as usize;
    // SAFETY: `base + head` is inside the reservation (head < ALIGN).
    let start = unsafe { base.cast::<u8>().add(head) }.cast::<libc::c_void>();
    // SAFETY: MAP_FIXED over `start..start + len`, which lies inside our own
    // reservation (head + len <= total), so it replaces nothing of anyone
    // else's.
    let addr = unsafe {
        libc::mmap(
            start,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // From here the reservation's head and tail are unmapped by hand and
    // the middle belongs to the returned mapping.
    std::mem::forget(reservation);
    let tail = total - head - len;
    // SAFETY: the head and the tail are the parts of our reservation around
    // the memory just mapped; unmapping them touches nothing else. A
    // failure would only leave inaccessible address space behind.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap(start.cast::<u8>().add(len).cast(), tail);
        }
    }
    Ok(Mapping { addr, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn every_region_is_2_mib_aligned_and_usable() {
        let ranges = [
            (GuestAddress(0), 3 << 20),
            (GuestAddress(1 << 32), 64 << 20),
        ];
        let (_ram, regions) = GuestRam::map(&ranges).unwrap();
        let mem = vm_memory::GuestMemoryMmap::from_arc_regions(regions).unwrap();
        for (start, len) in ranges {
            let host = mem.get_host_address(start).unwrap() as usize;
            assert_eq!(host % ALIGN, 0, "region at {:#x}", start.0);
            let last = GuestAddress(start.0 + len as u64 - 8);
            mem.write_obj(0x5eed_u64, last).unwrap();
            assert_eq!(mem.read_obj::<u64>(last).unwrap(), 0x5eed);
        }
        assert!(mem.write_obj(1u8, GuestAddress(3 << 20)).is_err());
    }
}
