//! Boot timer: the guest writes a magic byte once it reaches its milestone
//! (for Linux, init), and the VMM records how long that took since start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::BusDevice;

/// The value the guest writes to record the time.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// Records the first milestone write, in microseconds since `start`.
pub struct BootTimer {
    start: Instant,
    /// 0 until the guest writes; the first write wins.
    micros: Arc<AtomicU64>,
}

impl BootTimer {
    /// A timer counting from `start`, publishing into `micros`.
    pub fn new(start: Instant, micros: Arc<AtomicU64>) -> Self {
        BootTimer { start, micros }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        let us = (self.start.elapsed().as_micros() as u64).max(1);
        if self
            .micros
            .compare_exchange(0, us, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            log::info!("guest boot time: {} us ({} ms)", us, us / 1000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_magic_write_is_recorded() {
        let m = Arc::new(AtomicU64::new(0));
        let mut t = BootTimer::new(Instant::now(), m.clone());
        t.write(0, &[1]);
        assert_eq!(m.load(Ordering::SeqCst), 0);
        t.write(0, &[BOOT_TIMER_MAGIC]);
        let first = m.load(Ordering::SeqCst);
        assert!(first > 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        t.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(m.load(Ordering::SeqCst), first);
    }
}
