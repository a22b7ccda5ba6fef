//! virtio devices over the virtio-mmio transport (version 2, virtio 1.x).
//!
//! A device is an event-loop subscriber (its queue ioeventfds, its backend
//! fds) and a [`VirtioDevice`] that the [`mmio::MmioTransport`] drives from
//! the guest's register accesses. Queue processing runs on the event loop,
//! never on a vCPU thread.

pub mod block;
pub mod console;
pub mod mmio;
pub mod net;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use log::warn;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::MmioTransport;

/// Feature bit every modern device offers and every driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Used-buffer notification suppression via used_event / avail_event.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Interrupt status bit: a queue has used buffers.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = 2;

/// What a device and its transport share: the interrupt status register,
/// the irqfd that raises the device's interrupt line, and the device's
/// request for a reset after a guest error it cannot recover from.
pub struct DeviceSignals {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq: EventFd,
}

impl DeviceSignals {
    /// Signals raised through `irq` (an irqfd).
    pub fn new(irq: EventFd) -> Self {
        DeviceSignals {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            warn!("virtio: cannot raise the interrupt: {e}");
        }
    }

    /// Tells the driver that a queue has used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Puts the device in DEVICE_NEEDS_RESET and tells the driver.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.raise(INT_CONFIG);
    }

    /// True after [`Self::set_needs_reset`] until the driver resets the device.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn interrupt_status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// The device side of virtio: what the transport needs from a device.
pub trait VirtioDevice: Send {
    /// virtio device id (1 = net, 2 = block, 3 = console).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the number of queues is its length.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space. Out-of-range reads
    /// leave `data` zeroed.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; most devices ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Starts the device with the driver's features and queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<Queue>,
    ) -> Result<(), String>;
    /// Stops the device and drops its queues (driver wrote status 0).
    fn reset(&mut self);
}

/// The next chain the driver made available. A broken available ring (an
/// index more than a queue ahead) puts the device in NEEDS_RESET instead of
/// being retried, and is logged once.
pub fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    signals: &DeviceSignals,
    log: &LogOnce,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    if signals.needs_reset() {
        return None;
    }
    match queue.iter(mem) {
        Ok(mut chains) => chains.next(),
        Err(e) => {
            log.warn(format_args!("virtio: broken available ring: {e}"));
            signals.set_needs_reset();
            None
        }
    }
}

/// Whether the driver wants an interrupt for the buffers just used on
/// `queue`: with EVENT_IDX, per its used_event; otherwise unless it set
/// VRING_AVAIL_F_NO_INTERRUPT (which virtio-queue leaves to the device).
pub fn should_notify(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    // Always consulted: it also resets the queue's count of added buffers.
    let wanted = queue.needs_notification(mem).unwrap_or(true);
    if queue.event_idx_enabled() {
        return wanted;
    }
    let flags: u16 = mem.read_obj(GuestAddress(queue.avail_ring())).unwrap_or(0);
    flags & virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
}

/// Copies `value` (a config space) into `data` at `offset`, if in range.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) -> bool {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return false;
    };
    match start
        .checked_add(data.len())
        .and_then(|end| config.get(start..end))
    {
        Some(src) => {
            data.copy_from_slice(src);
            true
        }
        None => false,
    }
}

/// Logs a guest error once per device instance instead of once per event,
/// so a hostile guest cannot flood the host's log.
#[derive(Default)]
pub struct LogOnce(AtomicBool);

impl LogOnce {
    /// Logs `msg` at warn level the first time only.
    pub fn warn(&self, msg: std::fmt::Arguments) {
        if !self.0.swap(true, Ordering::Relaxed) {
            warn!("{msg} (further such messages suppressed)");
        }
    }
}

#[cfg(test)]
pub(crate) mod test_utils;
