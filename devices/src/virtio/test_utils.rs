//! Mock guest memory and a trivial device for transport and device tests.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::VirtioDevice;

/// 16 MiB of guest memory at 0.
pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// A device with one queue that records activation.
#[derive(Default)]
pub struct TestDevice {
    pub activated: bool,
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&[1, 2, 3, 4], offset, data);
    }
    fn activate(&mut self, _: GuestMemoryMmap, _: u64, _: Vec<Queue>) -> Result<(), String> {
        self.activated = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = false;
    }
}

/// Where [`ring_queue`] puts each queue's rings: queue `q` uses
/// `RINGS + q * 0x4000` for its descriptor table, +0x1000 for the
/// available ring and +0x2000 for the used ring.
pub const RINGS: u64 = 0x10_0000;

/// Descriptor table address of queue `q`.
pub fn desc_addr(q: u64) -> u64 {
    RINGS + q * 0x4000
}

/// Available ring address of queue `q`.
pub fn avail_addr(q: u64) -> u64 {
    desc_addr(q) + 0x1000
}

/// Used ring address of queue `q`.
pub fn used_addr(q: u64) -> u64 {
    desc_addr(q) + 0x2000
}

/// A ready queue `q` of `size` entries (max 256) over the fixed rings.
pub fn ring_queue(q: u64, size: u16) -> Queue {
    let mut queue = Queue::new(256).unwrap();
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc_addr(q) as u32), Some(0));
    queue.set_avail_ring_address(Some(avail_addr(q) as u32), Some(0));
    queue.set_used_ring_address(Some(used_addr(q) as u32), Some(0));
    queue.set_ready(true);
    queue
}

/// Writes descriptor `i` of queue `q`: (addr, len, flags, next).
pub fn write_desc(
    mem: &GuestMemoryMmap,
    q: u64,
    i: u16,
    (addr, len, flags, next): (u64, u32, u16, u16),
) {
    let at = desc_addr(q) + 16 * u64::from(i);
    mem.write_obj(addr, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at + 14)).unwrap();
}

/// Makes the chains starting at `heads` available on queue `q` (after
/// any already there).
pub fn make_available(mem: &GuestMemoryMmap, q: u64, heads: &[u16]) {
    let idx: u16 = mem.read_obj(GuestAddress(avail_addr(q) + 2)).unwrap();
    for (i, h) in heads.iter().enumerate() {
        let slot = (idx as usize + i) % 256;
        mem.write_obj(*h, GuestAddress(avail_addr(q) + 4 + 2 * slot as u64))
            .unwrap();
    }
    mem.write_obj(
        idx.wrapping_add(heads.len() as u16),
        GuestAddress(avail_addr(q) + 2),
    )
    .unwrap();
}

/// Used ring entry `i` of queue `q`: (id, len).
pub fn used_entry(mem: &GuestMemoryMmap, q: u64, i: u16) -> (u32, u32) {
    let at = used_addr(q) + 4 + 8 * u64::from(i);
    (
        mem.read_obj(GuestAddress(at)).unwrap(),
        mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}

/// The used index of queue `q`.
pub fn used_idx(mem: &GuestMemoryMmap, q: u64) -> u16 {
    mem.read_obj(GuestAddress(used_addr(q) + 2)).unwrap()
}
