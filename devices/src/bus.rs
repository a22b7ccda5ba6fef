//! Address-range bus for MMIO and port I/O.
//!
//! Devices are inserted before the vCPUs start; afterwards the bus is only
//! read, so lookups need no lock and each device carries its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that handles accesses to a range of addresses.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors when building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps around.
    #[error("bus range {base:#x}+{len:#x} is invalid")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

struct Range {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Maps address ranges to devices.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `base..base + len`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::InvalidRange { base, len })?;
        let overlaps_prev = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, r)| b + r.len > base);
        if overlaps_prev {
            return Err(Error::Overlap { base, len });
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Range)> {
        let (base, range) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= range.len).then_some((offset, range))
    }

    /// Dispatches a read; returns false (and leaves `data` alone) when no
    /// device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, range)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device claims the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, range)) => {
                lock(&range.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device that panicked
/// once must not take every later access down with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch([u8; 4]);
    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.0[o..o + data.len()]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.0[o..o + data.len()].copy_from_slice(data);
        }
    }

    fn dev() -> Arc<Mutex<dyn BusDevice>> {
        Arc::new(Mutex::new(Scratch([0; 4])))
    }

    #[test]
    fn dispatch_by_range() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x10, 4).unwrap();
        bus.insert(dev(), 0x14, 4).unwrap();
        assert!(bus.write(0x12, &[1, 2]));
        let mut b = [0u8; 2];
        assert!(bus.read(0x12, &mut b));
        assert_eq!(b, [1, 2]);
        // Crossing the end of a device's range is not dispatched.
        assert!(!bus.read(0x13, &mut [0u8; 2]));
        assert!(!bus.write(0x18, &[0]));
        assert!(!bus.read(0x0f, &mut [0u8; 1]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x10, 0x10).unwrap();
        assert!(bus.insert(dev(), 0x1f, 1).is_err());
        assert!(bus.insert(dev(), 0x8, 0x9).is_err());
        assert!(bus.insert(dev(), 0x8, 0x8).is_ok());
        assert!(bus.insert(dev(), 0x20, 0).is_err());
        assert!(bus.insert(dev(), u64::MAX, 2).is_err());
    }
}
