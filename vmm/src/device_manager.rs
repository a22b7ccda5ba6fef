//! Puts virtio devices on the MMIO bus: a 4 KiB window and an IRQ each,
//! ioeventfds for queue notifications, irqfds for interrupts, an entry on
//! the kernel command line and in the ACPI DSDT, and a place on the event
//! loop.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arch::layout::{
    MMIO_DEVICES_END, MMIO_DEVICES_START, VIRTIO_IRQ_BASE, VIRTIO_IRQ_MAX, VIRTIO_IRQ_SKIP,
};
use devices::virtio::mmio::{MMIO_WINDOW, NOTIFY_OFFSET};
use devices::virtio::{DeviceSignals, MmioTransport, VirtioDevice};
use devices::Bus;
use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};

/// An event-loop subscriber, shared with its transport.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// What a new device needs before it exists: its queue ioeventfds and the
/// interrupt it shares with its transport.
pub struct Slot {
    /// One ioeventfd per queue.
    pub queue_evts: Vec<EventFd>,
    /// Interrupt status and irqfd.
    pub signals: Arc<DeviceSignals>,
    base: u64,
    irq: u32,
}

/// Allocates MMIO windows and IRQs and wires devices to KVM.
pub struct DeviceManager<'a> {
    vm_fd: &'a VmFd,
    mem: GuestMemoryMmap,
    next_base: u64,
    next_irq: u32,
    /// `virtio_mmio.device=` entries for the kernel command line (on
    /// architectures that announce devices there).
    pub cmdline: String,
    /// The devices for the firmware tables (ACPI DSDT, FDT).
    pub virtio: Vec<arch::VirtioMmio>,
    /// Subscribers for the event loop.
    pub subscribers: Vec<Subscriber>,
}

/// `irq`, or the first interrupt above it that virtio devices may use.
fn next_free_irq(mut irq: u32) -> u32 {
    while VIRTIO_IRQ_SKIP.contains(&irq) {
        irq += 1;
    }
    irq
}

impl<'a> DeviceManager<'a> {
    /// A manager for the VM behind `vm_fd`.
    pub fn new(vm_fd: &'a VmFd, mem: GuestMemoryMmap) -> Self {
        DeviceManager {
            vm_fd,
            mem,
            next_base: MMIO_DEVICES_START,
            next_irq: next_free_irq(VIRTIO_IRQ_BASE),
            cmdline: String::new(),
            virtio: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    /// Reserves a window and an IRQ for a device with `queues` queues and
    /// registers its ioeventfds and irqfd.
    pub fn slot(&mut self, queues: usize) -> Result<Slot> {
        if self.next_irq > VIRTIO_IRQ_MAX || self.next_base + MMIO_WINDOW > MMIO_DEVICES_END {
            return Err(Error::Device(
                "out of IRQs or MMIO space for virtio devices".into(),
            ));
        }
        let (base, irq) = (self.next_base, self.next_irq);
        let irq_evt = new_eventfd()?;
        self.vm_fd
            .register_irqfd(&irq_evt, irq)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        let mut queue_evts = Vec::with_capacity(queues);
        for q in 0..queues {
            let evt = new_eventfd()?;
            self.vm_fd
                .register_ioevent(&evt, &IoEventAddress::Mmio(base + NOTIFY_OFFSET), q as u32)
                .map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
            queue_evts.push(evt);
        }
        self.next_base += MMIO_WINDOW;
        self.next_irq = next_free_irq(self.next_irq + 1);
        Ok(Slot {
            queue_evts,
            signals: Arc::new(DeviceSignals::new(irq_evt)),
            base,
            irq,
        })
    }

    /// Puts `device`, built for `slot`, on `bus` and the event loop.
    pub fn add<D>(&mut self, bus: &mut Bus, slot: Slot, device: D) -> Result<Arc<Mutex<D>>>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let device = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(device.clone(), slot.signals, self.mem.clone())
            .map_err(Error::Device)?;
        bus.insert(Arc::new(Mutex::new(transport)), slot.base, MMIO_WINDOW)
            .map_err(|e| Error::Device(e.to_string()))?;
        self.subscribers.push(device.clone());
        // The firmware tables (the DSDT, or the FDT) name every device;
        // where the architecture says so (x86: kernels without ACPI, or
        // booted with `acpi=off`), the command line does too. A kernel that
        // reads both registers the device once: the second registration's
        // resource claim fails.
        self.virtio.push(arch::VirtioMmio {
            base: slot.base,
            len: MMIO_WINDOW,
            irq: slot.irq,
        });
        if arch::VIRTIO_MMIO_ON_CMDLINE {
            self.cmdline.push_str(&format!(
                " virtio_mmio.device={}K@{:#x}:{}",
                MMIO_WINDOW / 1024,
                slot.base,
                slot.irq
            ));
        }
        Ok(device)
    }
}

/// A writer shared by two devices (the UART and virtio-console both write
/// the console output).
#[derive(Clone)]
pub struct SharedWriter(pub Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        devices::bus::lock(&self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        devices::bus::lock(&self.0).flush()
    }
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Io("cannot create an eventfd", e))
}
