//! Mock guest memory and a trivial device for transport and device tests.

use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

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
