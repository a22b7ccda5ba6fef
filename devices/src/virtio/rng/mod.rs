//! virtio-rng (entropy): every device-writable buffer the guest posts is
//! filled from the host kernel's random generator (`getrandom`), as
//! Firecracker's entropy device does.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{
    queue_wake, should_notify, watch_queue, Budget, DeviceSignals, LogOnce, QueueWake, VirtioDevice,
};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};

/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// The most one request gets: the driver asks again for more. Bounds the
/// time a pass spends in `getrandom`.
pub const MAX_REQUEST: usize = 64 * 1024;

crate::counters!(
    /// What the entropy device did, under Firecracker's metric names.
    EntropyMetrics {
        /// Notifications of the queue.
        entropy_event_count,
        /// Bytes given to the guest.
        entropy_bytes,
        /// Requests the host's generator failed.
        host_rng_fails,
    }
);

/// A virtio-rng device.
pub struct Rng {
    queue_evt: EventFd,
    signals: Arc<DeviceSignals>,
    active: Option<(GuestMemoryMmap, Queue)>,
    early_notify: LogOnce,
    bad_request: LogOnce,
    host_error: LogOnce,
    stats: Arc<EntropyMetrics>,
    limiter: Option<RateLimiter>,
}

impl Rng {
    /// A device whose queue's ioeventfd is `queue_evt`, serving requests
    /// (bytes asked, requests) within `limits`.
    pub fn new(
        queue_evt: EventFd,
        signals: Arc<DeviceSignals>,
        limits: &RateLimiterConfig,
    ) -> std::io::Result<Rng> {
        Ok(Rng {
            queue_evt,
            signals,
            active: None,
            early_notify: LogOnce::default(),
            bad_request: LogOnce::default(),
            host_error: LogOnce::default(),
            stats: Arc::default(),
            limiter: match limits.limits() {
                true => Some(RateLimiter::new(limits)?),
                false => None,
            },
        })
    }

    /// The device's counters, for the VMM's metrics.
    pub fn metrics(&self) -> Arc<EntropyMetrics> {
        self.stats.clone()
    }

    fn process_queue(&mut self) {
        let Some((mem, queue)) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let mut budget = Budget::for_queue(queue);
        let mut buf = [0u8; 4096];
        while let Some(chain) = budget.next(queue, mem, &self.signals, &self.bad_request) {
            let head = chain.head_index();
            if let Some(limiter) = self.limiter.as_mut() {
                let asked: u64 = chain
                    .clone()
                    .filter(|d| d.is_write_only())
                    .map(|d| u64::from(d.len()))
                    .sum();
                if !limiter.consume(asked.min(MAX_REQUEST as u64)) {
                    // Back in the ring until the limiter's timer.
                    queue.go_to_previous_position();
                    break;
                }
            }
            let mut written = 0usize;
            'chain: for d in chain.filter(|d| d.is_write_only()) {
                let mut at = 0usize;
                while at < d.len() as usize && written < MAX_REQUEST {
                    let n = (d.len() as usize - at)
                        .min(buf.len())
                        .min(MAX_REQUEST - written);
                    if fill(&mut buf[..n]).is_err() {
                        self.stats.host_rng_fails.inc();
                        self.host_error
                            .warn(format_args!("virtio-rng: the host's generator failed"));
                        break 'chain;
                    }
                    let ok = d
                        .addr()
                        .checked_add(at as u64)
                        .is_some_and(|a| mem.write_slice(&buf[..n], a).is_ok());
                    if !ok {
                        self.bad_request
                            .warn(format_args!("virtio-rng: buffer outside guest memory"));
                        break 'chain;
                    }
                    at += n;
                    written += n;
                }
            }
            self.stats.entropy_bytes.add(written as u64);
            if queue.add_used(mem, head, written as u32).is_err() {
                self.signals.set_needs_reset();
                break;
            }
            used = true;
        }
        if used && should_notify(queue, mem) {
            self.signals.signal_used_queue();
        }
        budget.resume(&self.queue_evt);
    }
}

/// Fills `buf` from the kernel's random generator (never blocks once the
/// host has booted). Also the metadata service's tokens and seeds.
pub(crate) fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        // SAFETY: writes at most `buf.len() - at` bytes into `buf` from `at`.
        let n = unsafe { libc::getrandom(buf[at..].as_mut_ptr().cast(), buf.len() - at, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        at += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        mut queues: Vec<Queue>,
    ) -> Result<(), String> {
        let queue = queues.pop().ok_or("virtio-rng needs its queue")?;
        self.active = Some((mem, queue));
        // Requests posted before DRIVER_OK: served from the event loop.
        self.queue_evt.write(1).map_err(|e| e.to_string())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        watch_queue(ops, "virtio-rng", &self.queue_evt, self.limiter.as_ref());
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let kicks = &self.stats.entropy_event_count;
        match queue_wake(events.fd(), &self.queue_evt, self.limiter.as_mut(), kicks) {
            QueueWake::Serve if self.active.is_none() => self
                .early_notify
                .warn(format_args!("virtio-rng: queue notified while not running")),
            QueueWake::Serve => self.process_queue(),
            QueueWake::Wait | QueueWake::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counters;
    use crate::virtio::test_utils::{make_available, mem, ring_queue, used_entry, write_desc};
    use vm_memory::GuestAddress;

    fn device() -> Rng {
        let signals = Arc::new(DeviceSignals::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        Rng::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            signals,
            &RateLimiterConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn writable_buffers_are_filled_and_others_skipped() {
        let m = mem();
        // Chain 0: a readable buffer (skipped), then 600 writable bytes.
        write_desc(&m, 0, 0, (0x4000, 64, 1, 1));
        write_desc(&m, 0, 1, (0x5000, 600, 2, 0));
        // Chain 2: a buffer past the end of memory.
        write_desc(&m, 0, 2, ((16 << 20) - 8, 64, 2, 0));
        make_available(&m, 0, &[0, 2]);
        let mut rng = device();
        rng.activate(m.clone(), 0, vec![ring_queue(0, 16)]).unwrap();
        rng.process_queue();
        assert_eq!(used_entry(&m, 0, 0), (0, 600));
        assert_eq!(used_entry(&m, 0, 1), (2, 0));
        let mut got = [0u8; 600];
        m.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
        let distinct = got.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 100, "{distinct} distinct bytes in 600");
        let c: std::collections::HashMap<_, _> = rng.stats.counters().into_iter().collect();
        assert_eq!(c["entropy_bytes"], 600);
    }

    #[test]
    fn one_request_gets_at_most_max_request_bytes() {
        let m = mem();
        write_desc(&m, 0, 0, (0x10_0000, 1 << 20, 2, 0));
        make_available(&m, 0, &[0]);
        let mut rng = device();
        rng.activate(m.clone(), 0, vec![ring_queue(0, 16)]).unwrap();
        rng.process_queue();
        assert_eq!(used_entry(&m, 0, 0), (0, MAX_REQUEST as u32));
    }
}
