//! Everything the guest sees on its buses: the address-range bus that MMIO
//! and port I/O exits are dispatched on, and the devices behind it.

pub mod bus;
pub mod fd_path;
pub mod legacy;
pub mod metrics;
pub mod mmds;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice};

/// A way for a device to raise an interrupt or signal the VMM, backed by an
/// eventfd (an irqfd for interrupts).
#[derive(Debug)]
pub struct EventFdTrigger(pub vmm_sys_util::eventfd::EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: vmm_sys_util::eventfd::EventFd) -> Self {
        EventFdTrigger(evt)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
