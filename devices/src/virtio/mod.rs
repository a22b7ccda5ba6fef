//! virtio devices over the virtio-mmio transport (version 2, virtio 1.x).
//!
//! A device is an event-loop subscriber (its queue ioeventfds, its backend
//! fds) and a [`VirtioDevice`] that the [`mmio::MmioTransport`] drives from
//! the guest's register accesses. Queue processing runs on the event loop,
//! never on a vCPU thread (activation kicks the queues instead), and one
//! pass over a queue takes at most a queue's worth of chains of at most a
//! queue's worth of descriptors ([`Budget`]), whatever the rings say.

pub mod balloon;
pub mod block;
pub mod console;
pub mod mem;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use event_manager::{EventOps, EventSet, Events};
use log::{error, warn};
use virtio_queue::{desc::split::Descriptor, DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::metrics::Counter;
use crate::rate_limiter::RateLimiter;

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
    /// Bumped on each change the device makes to its configuration space,
    /// for the transport's ConfigGeneration.
    config_changes: AtomicU32,
    irq: EventFd,
}

impl DeviceSignals {
    /// Signals raised through `irq` (an irqfd).
    pub fn new(irq: EventFd) -> Self {
        DeviceSignals {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            config_changes: AtomicU32::new(0),
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

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.config_changes.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG);
    }

    /// How many times the device changed its configuration space.
    fn config_changes(&self) -> u32 {
        self.config_changes.load(Ordering::SeqCst)
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
    /// How many queues the driver must make ready with `features`: all of
    /// them unless some exist only with a feature (balloon statistics).
    /// The driver numbers the queues it uses from 0 without gaps, so these
    /// are the first ones.
    fn queues_needed(&self, features: u64) -> usize {
        let _ = features;
        self.queue_max_sizes().len()
    }
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

/// The chains one pass over a queue may take: a queue's worth.
///
/// A driver can keep a pass going for ever: by posting as fast as the
/// device takes, or, with rings that overlap, by making each used entry the
/// device writes look like a new request. A pass runs on the event loop,
/// which serves every device and the API, so it must end. A pass that used
/// up its budget says so ([`Budget::spent`]); the device then kicks its own
/// queue ([`Budget::resume`]) and the loop comes back to it after serving
/// the rest.
pub struct Budget {
    size: u16,
    left: u16,
    spent: bool,
    /// Chains taken when the current round over the ring began.
    round_start: u16,
    /// Rounds in a row that found nothing although the driver said more
    /// had come.
    empty_rounds: u8,
}

impl Budget {
    /// A queue's worth of chains for one pass over `queue`.
    pub fn for_queue(queue: &Queue) -> Budget {
        let size = queue.size().max(1);
        Budget {
            size,
            left: size,
            spent: false,
            round_start: 0,
            empty_rounds: 0,
        }
    }

    /// A round over the ring begins (kicks suppressed, then drained).
    pub fn start_round(&mut self) {
        self.round_start = self.taken();
    }

    /// The driver says more came after kicks were re-armed: whether the
    /// pass should take another round. Two rounds in a row that found
    /// none end it: rings that overlap, where the device's own flag writes
    /// move the index. One such round is a guest that published as kicks
    /// were re-armed; the next round finds its requests.
    pub fn more_came(&mut self) -> bool {
        self.empty_rounds = if self.taken() == self.round_start {
            self.empty_rounds + 1
        } else {
            0
        };
        self.empty_rounds < 2
    }

    /// How many chains the pass has taken so far.
    pub fn taken(&self) -> u16 {
        self.size - self.left
    }

    /// The next chain the driver made available, if the budget allows. A
    /// broken available ring (an index more than a queue ahead) puts the
    /// device in NEEDS_RESET instead of being retried, and is logged once.
    pub fn next<'m>(
        &mut self,
        queue: &mut Queue,
        mem: &'m GuestMemoryMmap,
        signals: &DeviceSignals,
        log: &LogOnce,
    ) -> Option<Chain<'m>> {
        if signals.needs_reset() {
            return None;
        }
        if self.left == 0 {
            self.spent = true;
            return None;
        }
        let broken = |why: &dyn std::fmt::Display| {
            log.warn(format_args!("virtio: broken available ring: {why}"));
            signals.set_needs_reset();
            None
        };
        match queue.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) if idx.0 == queue.next_avail() => return None,
            Ok(_) => {}
            Err(e) => return broken(&e),
        }
        let inner = match queue.iter(mem) {
            Ok(mut chains) => chains.next(),
            Err(e) => return broken(&e),
        };
        // Entries are available, so none here means the ring could not be
        // read; retrying would spin.
        let Some(inner) = inner else {
            return broken(&"entry unreadable");
        };
        self.left -= 1;
        Some(Chain {
            inner,
            left: queue.size().max(1),
        })
    }

    /// True if the pass stopped for the budget, not for an empty ring.
    pub fn spent(&self) -> bool {
        self.spent
    }

    /// Has the event loop come back to the queue whose ioeventfd is
    /// `kick`, if this pass stopped for its budget.
    pub fn resume(&self, kick: &EventFd) {
        if self.spent {
            if let Err(e) = kick.write(1) {
                warn!("virtio: cannot requeue a queue: {e}");
            }
        }
    }
}

/// Has the event loop watch a queue's ioeventfd `kick` and, if there is
/// one, the timer of the rate limiter on what the queue carries.
pub fn watch_queue(
    ops: &mut EventOps,
    device: &str,
    kick: &EventFd,
    limiter: Option<&RateLimiter>,
) {
    if let Err(e) = ops.add(Events::new(kick, EventSet::IN)) {
        error!("{device}: cannot watch a queue: {e:?}");
    }
    if let Some(l) = limiter {
        if let Err(e) = ops.add(Events::new(l, EventSet::IN)) {
            error!("{device}: cannot watch a rate limiter: {e:?}");
        }
    }
}

/// What an event on one of a queue's descriptors asks of its device.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueWake {
    /// Serve the queue: the limiter's timer fired, or the driver kicked
    /// and no request waits for the timer.
    Serve,
    /// The driver kicked while a request waits for the limiter's timer,
    /// which will serve the queue when it fires.
    Wait,
    /// Not one of this queue's.
    Other,
}

/// Takes the event on `fd` if it is the queue's (`kick`, counted in
/// `kicks`) or its limiter's timer, and says what it asks for.
pub fn queue_wake(
    fd: RawFd,
    kick: &EventFd,
    limiter: Option<&mut RateLimiter>,
    kicks: &Counter,
) -> QueueWake {
    if let Some(l) = limiter {
        if l.as_raw_fd() == fd {
            l.timer_fired();
            return QueueWake::Serve;
        }
        if fd == kick.as_raw_fd() && l.waiting() {
            let _ = kick.read();
            kicks.inc();
            return QueueWake::Wait;
        }
    }
    if fd != kick.as_raw_fd() {
        return QueueWake::Other;
    }
    let _ = kick.read();
    kicks.inc();
    QueueWake::Serve
}

/// A descriptor chain of at most a queue's size of descriptors.
///
/// A direct chain cannot be longer, as descriptors cannot repeat. One
/// through an indirect table could be up to 65535 long; strato offers no
/// indirect descriptors, so such a chain comes only from a driver breaking
/// the rules, and it ends here at the queue's size rather than costing the
/// event loop 256 times that per pass.
#[derive(Clone)]
pub struct Chain<'m> {
    inner: DescriptorChain<&'m GuestMemoryMmap>,
    left: u16,
}

impl<'m> Chain<'m> {
    /// The chain's first descriptor: what goes into the used ring.
    pub fn head_index(&self) -> u16 {
        self.inner.head_index()
    }

    /// The descriptor chain itself, for parsers that take one (vsock
    /// packets read at most two descriptors of it).
    pub fn inner_mut(&mut self) -> &mut DescriptorChain<&'m GuestMemoryMmap> {
        &mut self.inner
    }
}

impl Iterator for Chain<'_> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        self.left = self.left.checked_sub(1)?;
        self.inner.next()
    }
}

/// Whether the driver wants an interrupt for the buffers just used on
/// `queue`: with EVENT_IDX, per its used_event; otherwise unless it set
/// VRING_AVAIL_F_NO_INTERRUPT (which virtio-queue leaves to the device).
pub fn should_notify(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
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

#[cfg(test)]
mod tests {
    use super::test_utils::{make_available, mem, ring_queue, write_desc};
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn signals() -> DeviceSignals {
        DeviceSignals::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn one_empty_round_goes_on_and_two_in_a_row_end_the_pass() {
        let m = mem();
        let q = ring_queue(0, 8);
        let mut budget = Budget::for_queue(&q);
        budget.start_round();
        assert!(
            budget.more_came(),
            "a guest that published as kicks were re-armed"
        );
        budget.start_round();
        assert!(!budget.more_came(), "two empty rounds: rings that overlap");
        // A round that takes a chain starts the count again.
        let mut q = ring_queue(0, 8);
        let mut budget = Budget::for_queue(&q);
        write_desc(&m, 0, 0, (0x8000, 16, 0, 0));
        make_available(&m, 0, &[0]);
        budget.start_round();
        assert!(budget.more_came());
        budget.start_round();
        let (signals, log) = (signals(), LogOnce::default());
        assert!(budget.next(&mut q, &m, &signals, &log).is_some());
        assert!(budget.more_came());
        budget.start_round();
        assert!(budget.more_came());
    }

    #[test]
    fn a_wake_is_a_kick_a_kick_that_waits_or_the_limiter_s_timer() {
        use crate::rate_limiter::{BucketConfig, RateLimiterConfig};
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let other = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kicks = Counter::default();
        let one_per_50_ms = RateLimiterConfig {
            bandwidth: None,
            ops: Some(BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: 50,
            }),
        };
        let mut limiter = RateLimiter::new(&one_per_50_ms).unwrap();
        let fd = kick.as_raw_fd();
        kick.write(1).unwrap();
        assert_eq!(
            queue_wake(fd, &kick, Some(&mut limiter), &kicks),
            QueueWake::Serve
        );
        assert!(kick.read().is_err(), "the kick was taken");
        assert_eq!(
            queue_wake(other.as_raw_fd(), &kick, Some(&mut limiter), &kicks),
            QueueWake::Other
        );
        // The bucket's one op goes; the next request waits for the timer.
        assert!(limiter.consume(0));
        assert!(!limiter.consume(0));
        kick.write(1).unwrap();
        assert_eq!(
            queue_wake(fd, &kick, Some(&mut limiter), &kicks),
            QueueWake::Wait
        );
        assert_eq!(kicks.get(), 2);
        // Once the timer has fired (the event loop would say it is
        // readable; reading it before would block).
        std::thread::sleep(std::time::Duration::from_millis(120));
        let timer = limiter.as_raw_fd();
        assert_eq!(
            queue_wake(timer, &kick, Some(&mut limiter), &kicks),
            QueueWake::Serve
        );
        assert!(!limiter.waiting());
    }

    #[test]
    fn a_chain_ends_at_the_queue_size_even_through_an_indirect_table() {
        let m = mem();
        // Head 0 points to an indirect table of 4095 descriptors whose
        // first one chains to itself: 4095 descriptors without the cap.
        const TABLE: u64 = 0x8000;
        write_desc(&m, 0, 0, (TABLE, 4095 * 16, 4, 0));
        m.write_obj(0x1000u64, GuestAddress(TABLE)).unwrap();
        m.write_obj(1u32, GuestAddress(TABLE + 8)).unwrap();
        m.write_obj(1u16, GuestAddress(TABLE + 12)).unwrap();
        m.write_obj(0u16, GuestAddress(TABLE + 14)).unwrap();
        make_available(&m, 0, &[0]);
        let mut queue = ring_queue(0, 16);
        let mut budget = Budget::for_queue(&queue);
        let chain = budget
            .next(&mut queue, &m, &signals(), &LogOnce::default())
            .unwrap();
        assert_eq!(chain.count(), 16);
    }

    #[test]
    fn an_unreadable_entry_is_a_broken_ring_not_an_empty_one() {
        let m = mem();
        let mut queue = ring_queue(0, 16);
        // The ring says one entry is there, but the queue is moved past
        // the end of memory, where the entry cannot be read.
        make_available(&m, 0, &[0]);
        let end = 16u64 << 20;
        queue.set_avail_ring_address(Some((end - 4) as u32), Some(0));
        m.write_obj(1u16, GuestAddress(end - 2)).unwrap();
        let sig = signals();
        let mut budget = Budget::for_queue(&queue);
        assert!(budget
            .next(&mut queue, &m, &sig, &LogOnce::default())
            .is_none());
        assert!(sig.needs_reset());
        assert!(!budget.spent());
    }
}
