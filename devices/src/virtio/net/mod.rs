//! virtio-net over a TAP device.
//!
//! RX: a frame read from the tap is written into the guest's posted
//! buffers (several with VIRTIO_NET_F_MRG_RXBUF); while the guest has no
//! buffers the tap leaves the interest list, so there is no busy polling
//! and no frame larger than the posted buffers is written. TX: each chain
//! is one frame written to the tap; the interrupt that hands the chains
//! back waits up to [`TX_IRQ_DELAY`] for one that covers received frames
//! too. Offloads the driver accepts are set on the tap. With MMDS enabled,
//! frames for the metadata address go to the VMM's own stack instead of
//! the tap, and its answers are received ahead of the tap's frames.

mod tap;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::error;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::mmds::{MmdsNet, MmdsStack};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};

pub use tap::{Error as TapError, Tap};

use super::{
    queue_wake, read_config_bytes, should_notify, watch_queue, Budget, DeviceSignals, LogOnce,
    QueueWake, VirtioDevice, VIRTIO_RING_F_EVENT_IDX,
};

/// Size of `struct virtio_net_hdr_v1` (virtio 1.x always has num_buffers).
pub const VNET_HDR_LEN: usize = 12;
/// Queue size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame: a 64 KiB GSO packet, its Ethernet header and our header.
pub const MAX_FRAME: usize = 65536 + 14 + VNET_HDR_LEN;
const RX: usize = 0;
const TX: usize = 1;
/// Most buffers a transmitted frame may be gathered from (Linux uses up to
/// MAX_SKB_FRAGS + 2 = 19).
const TX_IOVECS: usize = 64;
/// Offset of num_buffers in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// How long the interrupt for sent frames may wait (transmit interrupt
/// moderation, as NICs do). The frames are already on the tap: the wait
/// only delays when the driver frees their buffers, and an interrupt for
/// received frames (an ACK, an answer) in the meantime covers them. A
/// sender whose TCP waits for those frees (small queues, autocorking)
/// meanwhile gathers its writes into fewer, larger frames, so it spends
/// less CPU per byte; a guest short of CPU sends faster. Short enough not
/// to limit a fast one: Linux 6.1's TCP queues up to 1 MiB, and 1 MiB
/// per 100 us is about 10 GiB/s. docs/benchmarks.md has the measurements.
pub const TX_IRQ_DELAY: Duration = Duration::from_micros(100);

const fn bit(b: u32) -> u64 {
    1 << b
}

/// How to build a NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Host tap interface.
    pub tap: String,
    /// Guest MAC address.
    pub mac: [u8; 6],
    /// Limits on the frames the guest receives (bytes, frames).
    pub rx_rate_limiter: RateLimiterConfig,
    /// Limits on the frames the guest sends.
    pub tx_rate_limiter: RateLimiterConfig,
    /// The metadata service, if the guest may reach it through this NIC.
    pub mmds: Option<MmdsNet>,
    /// How long the interrupt for sent frames may wait for one that covers
    /// received frames too ([`TX_IRQ_DELAY`] by default; zero raises it at
    /// once).
    pub tx_irq_delay: Duration,
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    mrg_rxbuf: bool,
}

crate::counters!(
    /// What one network interface did, under Firecracker's metric names.
    /// Bytes are the Ethernet frames' (the virtio-net header excluded).
    NetMetrics {
        /// Frames delivered to the guest.
        rx_packets_count,
        /// Bytes of them.
        rx_bytes_count,
        /// Frames from the tap that were dropped (no room, bad buffers).
        rx_fails,
        /// Frames the guest sent out through the tap.
        tx_packets_count,
        /// Bytes of them.
        tx_bytes_count,
        /// Frames the tap refused.
        tx_fails,
        /// Transmit chains that were not a frame.
        tx_malformed_frames,
        /// Notifications of the receive queue.
        rx_queue_event_count,
        /// Notifications of the transmit queue.
        tx_queue_event_count,
    }
);

/// A virtio-net device.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    queue_evts: [EventFd; 2],
    signals: Arc<DeviceSignals>,
    active: Option<Active>,
    rx_frame: Box<[u8]>,
    rx_len: usize,
    /// Receive scratch: (head, end index into rx_bufs) per chain.
    rx_heads: Vec<(u16, usize)>,
    rx_bufs: Vec<(vm_memory::GuestAddress, usize)>,
    rx_used: bool,
    tap_paused: bool,
    early_notify: LogOnce,
    bad_request: LogOnce,
    host_error: LogOnce,
    stats: Arc<NetMetrics>,
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    /// The pending frame already passed the receive limiter.
    rx_paid: bool,
    mmds: Option<MmdsStack>,
    /// Transmit interrupt moderation ([`TX_IRQ_DELAY`]): the driver is
    /// owed an interrupt for sent frames, and the timer that will raise it.
    tx_irq: TxIrq,
}

/// The deferred interrupt for sent frames.
struct TxIrq {
    /// None without a timer (it could not be made): no deferral then.
    timer: Option<TimerFd>,
    delay: Duration,
    /// The driver is owed an interrupt for used transmit buffers.
    owed: bool,
    /// The timer is set and has not fired yet.
    armed: bool,
}

impl TxIrq {
    fn new(delay: Duration) -> TxIrq {
        let timer = TimerFd::new().ok().filter(|t| {
            // Non-blocking, so a read after a spurious wake cannot stall
            // the event loop.
            // SAFETY: F_SETFL on a descriptor this function owns; no
            // memory is passed.
            unsafe { libc::fcntl(t.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) == 0 }
        });
        TxIrq {
            timer,
            delay,
            owed: false,
            armed: false,
        }
    }
}

impl Net {
    /// The interface's counters, for the VMM's metrics.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.stats.clone()
    }

    /// Opens the tap of `cfg`; `queue_evts` are the ioeventfds of the
    /// receive and transmit queues.
    pub fn new(
        cfg: &NetConfig,
        queue_evts: [EventFd; 2],
        signals: Arc<DeviceSignals>,
    ) -> Result<Net, TapError> {
        let tap = Tap::open(&cfg.tap)?;
        // No offloads until the driver accepts them.
        tap.set_offload(0)?;
        let mut net = Self::with_tap(tap, cfg.mac, queue_evts, signals);
        net.set_tx_irq_delay(cfg.tx_irq_delay);
        net.set_rate_limits(&cfg.rx_rate_limiter, &cfg.tx_rate_limiter)
            .map_err(TapError::Timer)?;
        if let Some(m) = &cfg.mmds {
            net.enable_mmds(m).map_err(TapError::Timer)?;
        }
        Ok(net)
    }

    /// A device on an already open tap (or a stand-in for one).
    pub fn with_tap(
        tap: Tap,
        mac: [u8; 6],
        queue_evts: [EventFd; 2],
        signals: Arc<DeviceSignals>,
    ) -> Net {
        Net {
            tap,
            mac,
            queue_evts,
            signals,
            active: None,
            rx_frame: vec![0u8; MAX_FRAME].into_boxed_slice(),
            rx_len: 0,
            rx_heads: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            rx_bufs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            rx_used: false,
            tap_paused: false,
            early_notify: LogOnce::default(),
            bad_request: LogOnce::default(),
            host_error: LogOnce::default(),
            stats: Arc::default(),
            rx_limiter: None,
            tx_limiter: None,
            rx_paid: false,
            mmds: None,
            tx_irq: TxIrq::new(TX_IRQ_DELAY),
        }
    }

    /// Changes how long the interrupt for sent frames may wait (zero: it
    /// is raised at once), from the next frame sent on.
    pub fn set_tx_irq_delay(&mut self, delay: Duration) {
        self.tx_irq.delay = delay;
    }

    /// The driver is owed an interrupt for sent frames: raised when the
    /// moderation timer fires, unless one for received frames comes first.
    fn signal_tx_used(&mut self) {
        let irq = &mut self.tx_irq;
        let Some(timer) = irq.timer.as_mut().filter(|_| !irq.delay.is_zero()) else {
            self.signals.signal_used_queue();
            return;
        };
        if !irq.armed {
            if timer.reset(irq.delay, None).is_err() {
                self.signals.signal_used_queue();
                return;
            }
            irq.armed = true;
        }
        irq.owed = true;
    }

    /// Raises the interrupt for used buffers of either queue; it covers
    /// the sent frames' too (the driver looks at every queue).
    fn signal_used(&mut self) {
        let irq = &mut self.tx_irq;
        irq.owed = false;
        // Nothing left for the timer to raise: an expiry would only wake
        // the event loop (under steady receive traffic, every 100 us).
        if irq.armed && irq.timer.as_mut().is_some_and(|t| t.clear().is_ok()) {
            irq.armed = false;
        }
        self.signals.signal_used_queue();
    }

    fn tx_irq_timer_fired(&mut self) {
        let irq = &mut self.tx_irq;
        let Some(t) = irq.timer.as_mut() else {
            return;
        };
        // Non-blocking: nothing to read means the expiry epoll reported was
        // cleared (above) before it was served; the timer may be armed
        // again since, for what is owed now.
        if t.wait().is_err() {
            return;
        }
        irq.armed = false;
        if std::mem::take(&mut irq.owed) && self.active.is_some() {
            self.signals.signal_used_queue();
        }
    }

    /// Serves MMDS to the guest through this NIC (before the event loop
    /// watches the device).
    pub fn enable_mmds(&mut self, net: &MmdsNet) -> std::io::Result<()> {
        self.mmds = Some(MmdsStack::new(net)?);
        Ok(())
    }

    /// Hands the frame of `parts` (guest buffers, the virtio-net header
    /// first) to the MMDS stack if it is for it; false leaves it to the tap.
    fn detour(
        mmds: &mut Option<MmdsStack>,
        mem: &GuestMemoryMmap,
        parts: &[(vm_memory::GuestAddress, usize)],
        len: usize,
    ) -> bool {
        let Some(stack) = mmds.as_mut() else {
            return false;
        };
        // Enough of the frame to see its Ethernet, ARP or IPv4 header.
        let mut head = [0u8; 42];
        let want = head.len().min(len - VNET_HDR_LEN);
        if read_parts(mem, parts, VNET_HDR_LEN, &mut head[..want]) != want
            || !stack.wants(&head[..want])
        {
            return false;
        }
        let mut frame = vec![0u8; len - VNET_HDR_LEN];
        if read_parts(mem, parts, VNET_HDR_LEN, &mut frame) == frame.len() {
            stack.receive(frame);
        }
        true
    }

    /// Limits what the guest receives and sends (before the event loop
    /// watches the device).
    pub fn set_rate_limits(
        &mut self,
        rx: &RateLimiterConfig,
        tx: &RateLimiterConfig,
    ) -> std::io::Result<()> {
        // Always there (limiting nothing by default), so that limits set
        // while the VM runs have timers the event loop watches.
        self.rx_limiter = Some(RateLimiter::new(rx)?);
        self.tx_limiter = Some(RateLimiter::new(tx)?);
        Ok(())
    }

    /// Changes the limits of a running interface.
    pub fn update_rate_limits(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) {
        for (cfg, l) in [(rx, &mut self.rx_limiter), (tx, &mut self.tx_limiter)] {
            if let (Some(cfg), Some(l)) = (cfg, l.as_mut()) {
                l.update(cfg);
            }
        }
    }

    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TX];
        let mut used = false;
        let mut budget = Budget::for_queue(queue);
        // Drain with kicks suppressed, then re-arm them (with EVENT_IDX this
        // publishes avail_event) and drain again if more came meanwhile.
        loop {
            let _ = queue.disable_notification(mem);
            budget.start_round();
            while let Some(chain) = budget.next(queue, mem, &self.signals, &self.bad_request) {
                let head = chain.head_index();
                // Gather the frame straight from guest memory: no copy.
                let mut iovs = [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; TX_IOVECS];
                let mut parts = [(vm_memory::GuestAddress(0), 0usize); TX_IOVECS];
                let (mut n, mut len, mut ok) = (0usize, 0usize, true);
                for d in chain {
                    let dlen = d.len() as usize;
                    if dlen == 0 {
                        continue;
                    }
                    if d.is_write_only() || n == TX_IOVECS || len + dlen > MAX_FRAME {
                        ok = false;
                        break;
                    }
                    // Fails unless the buffer lies inside one RAM region.
                    let Ok(slice) = mem.get_slice(d.addr(), dlen) else {
                        ok = false;
                        break;
                    };
                    iovs[n] = libc::iovec {
                        iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
                        iov_len: dlen,
                    };
                    parts[n] = (d.addr(), dlen);
                    n += 1;
                    len += dlen;
                }
                if ok && len > VNET_HDR_LEN {
                    if let Some(limiter) = self.tx_limiter.as_mut() {
                        if !limiter.consume((len - VNET_HDR_LEN) as u64) {
                            // Back in the ring until the limiter's timer.
                            queue.go_to_previous_position();
                            break;
                        }
                    }
                    if Self::detour(&mut self.mmds, mem, &parts[..n], len) {
                        // Answered by the VMM's stack: not sent to the host.
                    } else {
                        // SAFETY: each iovec is a bounds-checked slice of guest
                        // RAM, which `mem` keeps mapped (plain mmap regions: the
                        // pointer guard is a no-op) until after this call.
                        match unsafe { self.tap.write_iovecs(&iovs[..n]) } {
                            Ok(_) => {
                                self.stats.tx_packets_count.inc();
                                self.stats.tx_bytes_count.add((len - VNET_HDR_LEN) as u64);
                            }
                            Err(e) => {
                                self.stats.tx_fails.inc();
                                self.host_error.warn(format_args!(
                                    "virtio-net: frame to {} lost: {e}",
                                    self.tap.name()
                                ));
                            }
                        }
                    }
                } else {
                    self.stats.tx_malformed_frames.inc();
                    self.bad_request
                        .warn(format_args!("virtio-net: malformed transmit chain dropped"));
                }
                if queue.add_used(mem, head, 0).is_err() {
                    self.signals.set_needs_reset();
                    break;
                }
                used = true;
            }
            if self.signals.needs_reset()
                || budget.spent()
                || self.tx_limiter.as_ref().is_some_and(RateLimiter::waiting)
                || !queue.enable_notification(mem).unwrap_or(false)
                || !budget.more_came()
            {
                break;
            }
        }
        let notify = used && should_notify(queue, mem);
        budget.resume(&self.queue_evts[TX]);
        if notify {
            self.signal_tx_used();
        }
    }

    /// Writes the pending frame into receive buffers. Returns false when
    /// the guest has not posted enough buffers (the frame stays pending).
    fn deliver(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            // Link down until the driver is running: drop.
            self.stats.rx_fails.inc();
            self.rx_len = 0;
            return true;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RX];
        let frame = &mut self.rx_frame[..self.rx_len];
        // Gather enough chains, without writing, so a shortage leaves the
        // ring untouched. Scratch vectors are reused across frames.
        self.rx_heads.clear();
        self.rx_bufs.clear();
        let mut room = 0usize;
        let mut budget = Budget::for_queue(queue);
        while room < frame.len() {
            if self.rx_heads.len() == 1 && !active.mrg_rxbuf {
                // One buffer must hold the whole frame: drop it instead.
                self.bad_request.warn(format_args!(
                    "virtio-net: receive buffer too small, frame dropped"
                ));
                let _ = queue.add_used(mem, self.rx_heads[0].0, 0);
                self.stats.rx_fails.inc();
                self.rx_used = true;
                self.rx_len = 0;
                return true;
            }
            let Some(chain) = budget.next(queue, mem, &self.signals, &self.bad_request) else {
                // Ask for a kick when buffers arrive, unless some already did.
                if !budget.spent()
                    && !self.signals.needs_reset()
                    && queue.enable_notification(mem).unwrap_or(false)
                {
                    continue;
                }
                for _ in 0..self.rx_heads.len() {
                    queue.go_to_previous_position();
                }
                if budget.spent() {
                    // A whole queue of buffers cannot hold the frame, so no
                    // more will come: drop the frame and leave the ring.
                    self.bad_request.warn(format_args!(
                        "virtio-net: receive buffers too small, frame dropped"
                    ));
                    self.stats.rx_fails.inc();
                    self.rx_len = 0;
                    return true;
                }
                return false;
            };
            let head = chain.head_index();
            for d in chain.filter(|d| d.is_write_only()) {
                room = room.saturating_add(d.len() as usize);
                self.rx_bufs.push((d.addr(), d.len() as usize));
            }
            self.rx_heads.push((head, self.rx_bufs.len()));
        }
        let n_chains = self.rx_heads.len() as u16;
        frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&n_chains.to_le_bytes());
        let mut pos = 0usize;
        let mut first_buf = 0usize;
        let mut lost = false;
        for &(head, end) in &self.rx_heads {
            let mut written = 0u32;
            for &(addr, len) in &self.rx_bufs[first_buf..end] {
                if pos == frame.len() {
                    break;
                }
                let n = len.min(frame.len() - pos);
                if mem.write_slice(&frame[pos..pos + n], addr).is_err() {
                    self.bad_request.warn(format_args!(
                        "virtio-net: receive buffer outside guest memory"
                    ));
                    pos = frame.len();
                    lost = true;
                    break;
                }
                pos += n;
                written += n as u32;
            }
            first_buf = end;
            if queue.add_used(mem, head, written).is_err() {
                self.signals.set_needs_reset();
            }
        }
        if lost {
            self.stats.rx_fails.inc();
        } else {
            self.stats.rx_packets_count.inc();
            self.stats
                .rx_bytes_count
                .add(frame.len().saturating_sub(VNET_HDR_LEN) as u64);
        }
        self.rx_used = true;
        self.rx_len = 0;
        true
    }

    fn process_rx(&mut self, ops: &mut EventOps) {
        self.receive(ops);
        // One interrupt for everything delivered in this round.
        if std::mem::take(&mut self.rx_used) {
            if let Some(a) = self.active.as_mut() {
                if should_notify(&mut a.queues[RX], &a.mem) {
                    self.signal_used();
                }
            }
        }
    }

    fn receive(&mut self, ops: &mut EventOps) {
        loop {
            if self.rx_len == 0 {
                self.rx_paid = false;
                if let Some(frame) = self.mmds.as_mut().and_then(MmdsStack::next_frame) {
                    // The metadata service's answers come first and are not
                    // charged to the guest's receive rate.
                    let end = VNET_HDR_LEN + frame.len();
                    self.rx_frame[..VNET_HDR_LEN].fill(0);
                    self.rx_frame[VNET_HDR_LEN..end].copy_from_slice(&frame);
                    self.rx_len = end;
                    self.rx_paid = true;
                } else {
                    match self.tap.read_frame(&mut self.rx_frame) {
                        Ok(n) if n > VNET_HDR_LEN && self.active.is_none() => {
                            // The link is down until the driver runs: the frame
                            // is dropped, and costs the guest none of its rate.
                            self.stats.rx_fails.inc();
                            continue;
                        }
                        Ok(n) if n > VNET_HDR_LEN => self.rx_len = n,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                        Err(e) => {
                            self.host_error
                                .warn(format_args!("virtio-net: reading {}: {e}", self.tap.name()));
                            return;
                        }
                    }
                }
            }
            if !self.rx_paid {
                if let Some(limiter) = self.rx_limiter.as_mut() {
                    if !limiter.consume((self.rx_len - VNET_HDR_LEN) as u64) {
                        // The frame waits, and the tap with it, for the
                        // limiter's timer.
                        self.pause_tap(ops);
                        return;
                    }
                }
                self.rx_paid = true;
            }
            if !self.deliver() {
                self.pause_tap(ops);
                return;
            }
        }
    }

    /// Stops reading the tap until [`Self::resume_rx`].
    fn pause_tap(&mut self, ops: &mut EventOps) {
        if !self.tap_paused {
            let _ = ops.remove(Events::new(&self.tap, EventSet::IN));
            self.tap_paused = true;
        }
    }

    fn resume_rx(&mut self, ops: &mut EventOps) {
        if self.tap_paused {
            if ops.add(Events::new(&self.tap, EventSet::IN)).is_err() {
                error!("virtio-net: cannot resume receiving on {}", self.tap.name());
                return;
            }
            self.tap_paused = false;
        }
        self.process_rx(ops);
    }
}

/// Tap offload flags for the features the driver accepted.
/// Copies bytes of the frame in `parts`, from `skip` on, into `out`;
/// returns how many it could.
fn read_parts(
    mem: &GuestMemoryMmap,
    parts: &[(vm_memory::GuestAddress, usize)],
    mut skip: usize,
    out: &mut [u8],
) -> usize {
    let mut done = 0;
    for &(addr, len) in parts {
        if done == out.len() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - done);
        let Some(at) = addr.checked_add(skip as u64) else {
            break;
        };
        if mem.read_slice(&mut out[done..done + n], at).is_err() {
            break;
        }
        done += n;
        skip = 0;
    }
    done
}

fn tap_offloads(features: u64) -> u32 {
    let mut flags = 0;
    if features & bit(VIRTIO_NET_F_GUEST_CSUM) != 0 {
        flags |= tap::TUN_F_CSUM;
    }
    if features & bit(VIRTIO_NET_F_GUEST_TSO4) != 0 {
        flags |= tap::TUN_F_TSO4;
    }
    if features & bit(VIRTIO_NET_F_GUEST_TSO6) != 0 {
        flags |= tap::TUN_F_TSO6;
    }
    if features & bit(VIRTIO_NET_F_GUEST_ECN) != 0 {
        flags |= tap::TUN_F_TSO_ECN;
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_ECN)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_HOST_ECN)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        if !read_config_bytes(&config, offset, data) {
            self.bad_request
                .warn(format_args!("virtio-net: config read out of range"));
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<Queue>,
    ) -> Result<(), String> {
        if queues.len() != 2 {
            return Err("virtio-net needs two queues".into());
        }
        self.tap
            .set_offload(tap_offloads(features))
            .map_err(|e| e.to_string())?;
        let mut queues = queues;
        for q in &mut queues {
            q.set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
        }
        self.active = Some(Active {
            mem,
            queues,
            mrg_rxbuf: features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0,
        });
        self.rx_len = 0;
        // Frames the driver queued before it was done: sent from the event
        // loop, like every other queue pass, not from this vCPU.
        if let Err(e) = self.queue_evts[TX].write(1) {
            error!("virtio-net: cannot start transmitting: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        // The moderation timer is left alone (this runs on a vCPU thread,
        // whose seccomp filter has no timerfd_settime): it fires once more
        // and finds nothing owed.
        self.active = None;
        self.rx_len = 0;
        self.tx_irq.owed = false;
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let [rx, tx] = &self.queue_evts;
        watch_queue(ops, "virtio-net", rx, self.rx_limiter.as_ref());
        watch_queue(ops, "virtio-net", tx, self.tx_limiter.as_ref());
        if let Err(e) = ops.add(Events::new(&self.tap, EventSet::IN)) {
            error!("virtio-net: cannot watch {}: {e:?}", self.tap.name());
        }
        if let Some(m) = &self.mmds {
            if let Err(e) = ops.add(Events::new(m.timer(), EventSet::IN)) {
                error!("virtio-net: cannot watch the MMDS timer: {e:?}");
            }
        }
        if let Some(t) = &self.tx_irq.timer {
            if let Err(e) = ops.add(Events::new(t, EventSet::IN)) {
                error!("virtio-net: cannot watch the transmit interrupt timer: {e:?}");
                // Unwatched, it would never raise what it owes.
                self.tx_irq.timer = None;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.tap.as_raw_fd() {
            self.process_rx(ops);
            return;
        }
        if self
            .tx_irq
            .timer
            .as_ref()
            .is_some_and(|t| t.as_raw_fd() == fd)
        {
            self.tx_irq_timer_fired();
            return;
        }
        if let Some(m) = self.mmds.as_mut().filter(|m| m.timer().as_raw_fd() == fd) {
            m.on_timer();
            if m.has_frames() {
                self.process_rx(ops);
            }
            return;
        }
        let tx = queue_wake(
            fd,
            &self.queue_evts[TX],
            self.tx_limiter.as_mut(),
            &self.stats.tx_queue_event_count,
        );
        let rx = match tx {
            QueueWake::Other => queue_wake(
                fd,
                &self.queue_evts[RX],
                self.rx_limiter.as_mut(),
                &self.stats.rx_queue_event_count,
            ),
            _ => QueueWake::Other,
        };
        if (tx == QueueWake::Serve || rx == QueueWake::Serve) && self.active.is_none() {
            self.early_notify
                .warn(format_args!("virtio-net: queue notified while not running"));
        } else if tx == QueueWake::Serve {
            self.process_tx();
            if self.mmds.as_ref().is_some_and(MmdsStack::has_frames) {
                self.process_rx(ops);
            }
        } else if rx == QueueWake::Serve {
            // New buffers, or the limiter lets the waiting frame go.
            self.resume_rx(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::BucketConfig;
    use crate::virtio::test_utils::{make_available, mem, ring_queue, used_idx, write_desc};
    use std::os::unix::net::UnixDatagram;

    /// A device on one end of a datagram pair (the "tap"), the other end
    /// for the test, with the queues of both rings active.
    fn device(
        rx: RateLimiterConfig,
        tx: RateLimiterConfig,
    ) -> (Net, UnixDatagram, GuestMemoryMmap) {
        let (ours, host) = UnixDatagram::pair().unwrap();
        for s in [&ours, &host] {
            s.set_nonblocking(true).unwrap();
        }
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let signals = Arc::new(DeviceSignals::new(evt()));
        let mut net = Net::with_tap(
            Tap::from_fd(ours.into(), "test0"),
            [6, 0, 0, 0, 0, 1],
            [evt(), evt()],
            signals,
        );
        net.set_rate_limits(&rx, &tx).unwrap();
        let m = mem();
        net.activate(m.clone(), 0, vec![ring_queue(0, 16), ring_queue(1, 16)])
            .unwrap();
        (net, host, m)
    }

    fn one_per_second() -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: None,
            ops: Some(BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: 1000,
            }),
        }
    }

    #[test]
    fn the_transmit_limiter_holds_frames_in_the_ring() {
        let (mut net, host, m) = device(RateLimiterConfig::default(), one_per_second());
        // Three 60-byte frames after their headers.
        for i in 0..3u16 {
            write_desc(&m, 1, i, (0x4000 + 0x100 * u64::from(i), 72, 0, 0));
        }
        make_available(&m, 1, &[0, 1, 2]);
        net.process_tx();
        let mut buf = [0u8; 128];
        assert_eq!(host.recv(&mut buf).unwrap(), 72);
        assert!(host.recv(&mut buf).is_err(), "a second frame went out");
        assert_eq!(used_idx(&m, 1), 1);
        assert!(net.tx_limiter.as_ref().unwrap().waiting());
    }

    #[test]
    fn the_receive_limiter_holds_frames_in_the_tap() {
        use event_manager::{EventManager, SubscriberOps};
        let (net, host, m) = device(one_per_second(), RateLimiterConfig::default());
        for i in 0..4u16 {
            write_desc(&m, 0, i, (0x8000 + 0x1000 * u64::from(i), 2048, 2, 0));
        }
        make_available(&m, 0, &[0, 1, 2, 3]);
        for _ in 0..2 {
            host.send(&[0x5a; 72]).unwrap();
        }
        // The event loop, as the VMM runs it: the tap is readable.
        let net = Arc::new(std::sync::Mutex::new(net));
        let mut em = EventManager::<Arc<std::sync::Mutex<Net>>>::new().unwrap();
        em.add_subscriber(net.clone());
        for _ in 0..4 {
            em.run_with_timeout(0).unwrap();
        }
        assert_eq!(used_idx(&m, 0), 1, "one frame through");
        {
            let net = net.lock().unwrap();
            assert!(net.rx_limiter.as_ref().unwrap().waiting());
            assert_eq!(net.rx_len, 72, "the second frame waits, taken from the tap");
            assert!(net.tap_paused);
        }
        // A second later the limiter's timer lets it through.
        let start = std::time::Instant::now();
        while used_idx(&m, 0) < 2 && start.elapsed() < std::time::Duration::from_secs(5) {
            em.run_with_timeout(100).unwrap();
        }
        assert_eq!(used_idx(&m, 0), 2);
        assert!(start.elapsed() >= std::time::Duration::from_millis(900));
    }

    #[test]
    fn frames_before_the_driver_runs_are_dropped_free_of_the_limiter() {
        let (ours, host) = UnixDatagram::pair().unwrap();
        for s in [&ours, &host] {
            s.set_nonblocking(true).unwrap();
        }
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut net = Net::with_tap(
            Tap::from_fd(ours.into(), "test0"),
            [6, 0, 0, 0, 0, 1],
            [evt(), evt()],
            Arc::new(DeviceSignals::new(evt())),
        );
        net.set_rate_limits(&one_per_second(), &RateLimiterConfig::default())
            .unwrap();
        let mut em = event_manager::EventManager::<Arc<std::sync::Mutex<Net>>>::new().unwrap();
        for _ in 0..3 {
            host.send(&[0x5a; 72]).unwrap();
        }
        let net = Arc::new(std::sync::Mutex::new(net));
        event_manager::SubscriberOps::add_subscriber(&mut em, net.clone());
        em.run_with_timeout(0).unwrap();
        {
            let net = net.lock().unwrap();
            assert_eq!(net.stats.rx_fails.get(), 3, "dropped: no driver yet");
            assert!(!net.rx_limiter.as_ref().unwrap().waiting());
        }
        // The driver comes up: its first frame goes through at once, on
        // the limiter's one token.
        let m = mem();
        net.lock()
            .unwrap()
            .activate(m.clone(), 0, vec![ring_queue(0, 16), ring_queue(1, 16)])
            .unwrap();
        write_desc(&m, 0, 0, (0x8000, 2048, 2, 0));
        make_available(&m, 0, &[0]);
        host.send(&[0x5a; 72]).unwrap();
        em.run_with_timeout(0).unwrap();
        assert_eq!(used_idx(&m, 0), 1);
    }

    #[test]
    fn offloads_follow_features() {
        assert_eq!(tap_offloads(0), 0);
        let all = bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_ECN);
        assert_eq!(
            tap_offloads(all),
            tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6 | tap::TUN_F_TSO_ECN
        );
    }
}

#[cfg(test)]
mod device_tests {
    use super::*;
    use crate::virtio::test_utils::{
        make_available, mem, ring_queue, used_entry, used_idx, write_desc,
    };
    use event_manager::{EventManager, SubscriberOps};
    use proptest::prelude::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = 2; // VRING_DESC_F_WRITE
    const N: u16 = 1; // VRING_DESC_F_NEXT

    struct Rig {
        net: Arc<Mutex<Net>>,
        em: EventManager<Arc<Mutex<Net>>>,
        peer: OwnedFd,
        mem: GuestMemoryMmap,
        evts: [EventFd; 2],
        /// The device's interrupt (the irqfd's stand-in).
        irq: EventFd,
    }

    /// A device whose "tap" is one end of a SOCK_SEQPACKET pair, activated
    /// with queues of 16 entries; `features` as acked by the driver.
    fn rig(features: u64) -> Rig {
        rig_with(features, None)
    }

    /// [`rig`] with MMDS served on the NIC.
    fn rig_with(features: u64, mmds: Option<&MmdsNet>) -> Rig {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills two fds we then own.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: fresh fds from socketpair.
        let (ours, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let evts = [
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ];
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let signals = Arc::new(DeviceSignals::new(irq.try_clone().unwrap()));
        let net = Arc::new(Mutex::new(Net::with_tap(
            Tap::from_fd(ours, "test0"),
            [6, 0, 0, 0, 0, 1],
            [evts[0].try_clone().unwrap(), evts[1].try_clone().unwrap()],
            signals,
        )));
        if let Some(m) = mmds {
            net.lock().unwrap().enable_mmds(m).unwrap();
        }
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(net.clone());
        let m = mem();
        net.lock()
            .unwrap()
            .activate(
                m.clone(),
                features,
                vec![ring_queue(0, 16), ring_queue(1, 16)],
            )
            .unwrap();
        Rig {
            net,
            em,
            peer,
            mem: m,
            evts,
            irq,
        }
    }

    impl Rig {
        fn send(&self, frame: &[u8]) {
            // SAFETY: writes `frame` to our socket.
            let n =
                unsafe { libc::write(self.peer.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            assert_eq!(n as usize, frame.len());
        }

        fn recv(&self) -> Option<Vec<u8>> {
            let mut buf = vec![0u8; MAX_FRAME + 100];
            // SAFETY: reads into `buf`.
            let n =
                unsafe { libc::read(self.peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            (n >= 0).then(|| {
                buf.truncate(n as usize);
                buf
            })
        }

        fn run(&mut self) {
            while self.em.run_with_timeout(10).unwrap() > 0 {}
        }

        /// Interrupts raised since the last look.
        fn interrupts(&self) -> u64 {
            self.irq.read().unwrap_or(0)
        }

        /// Puts a frame in transmit descriptor `d` and kicks; `step` serves
        /// only what is ready now (not the moderation timer to come).
        fn transmit(&mut self, d: u16) {
            let at = 0x4000 + u64::from(d) * 0x100;
            self.mem
                .write_slice(&rx_frame(60), GuestAddress(at))
                .unwrap();
            write_desc(&self.mem, 1, d, (at, 60, 0, 0));
            make_available(&self.mem, 1, &[d]);
            self.evts[TX].write(1).unwrap();
            self.step();
        }

        fn step(&mut self) {
            self.em.run_with_timeout(0).unwrap();
        }
    }

    fn rx_frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend((0..len - VNET_HDR_LEN).map(|i| (i % 200) as u8 + 1));
        f
    }

    #[test]
    fn transmit_gathers_a_chain_into_one_frame() {
        let mut r = rig(0);
        r.mem
            .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(0x4000))
            .unwrap();
        r.mem
            .write_slice(b"hello, tap", GuestAddress(0x5000))
            .unwrap();
        write_desc(&r.mem, 1, 0, (0x4000, VNET_HDR_LEN as u32, N, 1));
        write_desc(&r.mem, 1, 1, (0x5000, 10, 0, 0));
        make_available(&r.mem, 1, &[0]);
        r.evts[TX].write(1).unwrap();
        r.run();
        let f = r.recv().expect("a frame");
        assert_eq!(&f[VNET_HDR_LEN..], b"hello, tap");
        assert_eq!(used_idx(&r.mem, 1), 1);
    }

    /// An ARP request for the metadata address is answered on the receive
    /// queue and never reaches the tap; other frames still do.
    #[test]
    fn frames_for_mmds_are_answered_by_the_vmm_not_the_tap() {
        let store = Arc::new(Mutex::new(crate::mmds::Mmds::default()));
        let ip = crate::mmds::DEFAULT_IPV4;
        let mut r = rig_with(0, Some(&MmdsNet { store, ipv4: ip }));
        let guest_mac = [6, 0, 0, 0, 0, 1];
        let mut arp = vec![0u8; VNET_HDR_LEN];
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&guest_mac);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&guest_mac);
        arp.extend_from_slice(&[10, 0, 0, 2]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&ip.octets());
        r.mem.write_slice(&arp, GuestAddress(0x4000)).unwrap();
        r.mem
            .write_slice(&rx_frame(60), GuestAddress(0x5000))
            .unwrap();
        write_desc(&r.mem, 1, 0, (0x4000, arp.len() as u32, 0, 0));
        write_desc(&r.mem, 1, 1, (0x5000, 60, 0, 0));
        make_available(&r.mem, 1, &[0, 1]);
        write_desc(&r.mem, 0, 0, (0x8000, 2048, W, 0));
        make_available(&r.mem, 0, &[0]);
        r.evts[TX].write(1).unwrap();
        r.run();
        assert_eq!(used_idx(&r.mem, 1), 2);
        // Only the second frame went out.
        let f = r.recv().expect("the other frame");
        assert_eq!(f, rx_frame(60));
        assert!(r.recv().is_none(), "the ARP request reached the tap");
        let (_, len) = used_entry(&r.mem, 0, 0);
        let mut reply = vec![0u8; len as usize];
        r.mem.read_slice(&mut reply, GuestAddress(0x8000)).unwrap();
        let eth = &reply[VNET_HDR_LEN..];
        assert_eq!(&eth[0..6], &guest_mac, "to the guest");
        assert_eq!(&eth[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(&eth[20..22], &[0, 2], "a reply");
        assert_eq!(&eth[22..28], &[0x06, 0x01, 0x23, 0x45, 0x67, 0x01]);
        assert_eq!(&eth[28..32], &ip.octets(), "for the service's address");
    }

    #[test]
    fn receive_fills_one_buffer() {
        let mut r = rig(0);
        write_desc(&r.mem, 0, 0, (0x8000, 2048, W, 0));
        make_available(&r.mem, 0, &[0]);
        let f = rx_frame(100);
        r.send(&f);
        r.run();
        let mut got = vec![0u8; 100];
        r.mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(used_entry(&r.mem, 0, 0), (0, 100));
    }

    #[test]
    fn too_small_buffer_drops_the_frame_without_overflow() {
        let mut r = rig(0);
        r.mem
            .write_slice(&[0xee; 256], GuestAddress(0x8000))
            .unwrap();
        write_desc(&r.mem, 0, 0, (0x8000, 64, W, 0));
        make_available(&r.mem, 0, &[0]);
        r.send(&rx_frame(200));
        r.run();
        assert_eq!(used_entry(&r.mem, 0, 0), (0, 0));
        let mut after = [0u8; 192];
        r.mem.read_slice(&mut after, GuestAddress(0x8040)).unwrap();
        assert!(after.iter().all(|&b| b == 0xee), "wrote past the buffer");
    }

    #[test]
    fn mergeable_buffers_spread_a_frame() {
        let mut r = rig(bit(VIRTIO_NET_F_MRG_RXBUF));
        for i in 0..3u16 {
            write_desc(&r.mem, 0, i, (0x8000 + 0x100 * u64::from(i), 64, W, 0));
        }
        make_available(&r.mem, 0, &[0, 1, 2]);
        let f = rx_frame(150);
        r.send(&f);
        r.run();
        assert_eq!(used_idx(&r.mem, 0), 3);
        assert_eq!(
            [0, 1, 2].map(|i| used_entry(&r.mem, 0, i)),
            [(0, 64), (1, 64), (2, 22)]
        );
        let hdr: u16 = r.mem.read_obj(GuestAddress(0x800a)).unwrap();
        assert_eq!(hdr, 3, "num_buffers");
        let mut tail = [0u8; 22];
        r.mem.read_slice(&mut tail, GuestAddress(0x8200)).unwrap();
        assert_eq!(&tail, &f[128..]);
    }

    #[test]
    fn frames_wait_for_buffers() {
        let mut r = rig(0);
        r.send(&rx_frame(80));
        r.run();
        assert!(r.net.lock().unwrap().tap_paused);
        write_desc(&r.mem, 0, 0, (0x8000, 2048, W, 0));
        make_available(&r.mem, 0, &[0]);
        r.evts[RX].write(1).unwrap();
        r.run();
        assert_eq!(used_entry(&r.mem, 0, 0), (0, 80));
        assert!(!r.net.lock().unwrap().tap_paused);
    }

    /// avail_event of queue `q` (16 entries): where the device asks to be
    /// kicked next when EVENT_IDX is on.
    fn avail_event(mem: &GuestMemoryMmap, q: u64) -> u16 {
        let at = crate::virtio::test_utils::used_addr(q) + 4 + 8 * 16;
        mem.read_obj(GuestAddress(at)).unwrap()
    }

    #[test]
    fn event_idx_rearms_kicks_on_both_queues() {
        let mut r = rig(VIRTIO_RING_F_EVENT_IDX);
        // TX: two frames; afterwards the device asks for a kick at 2.
        r.mem.write_slice(&[0u8; 64], GuestAddress(0x4000)).unwrap();
        write_desc(&r.mem, 1, 0, (0x4000, 64, 0, 0));
        write_desc(&r.mem, 1, 1, (0x4000, 64, 0, 0));
        make_available(&r.mem, 1, &[0, 1]);
        r.evts[TX].write(1).unwrap();
        r.run();
        assert!(r.recv().is_some() && r.recv().is_some());
        assert_eq!(avail_event(&r.mem, 1), 2);
        // RX without buffers: the frame waits and the device asks for a
        // kick at the next buffer.
        r.send(&rx_frame(80));
        r.run();
        assert!(r.net.lock().unwrap().tap_paused);
        assert_eq!(avail_event(&r.mem, 0), 0);
        write_desc(&r.mem, 0, 0, (0x8000, 2048, W, 0));
        make_available(&r.mem, 0, &[0]);
        r.evts[RX].write(1).unwrap();
        r.run();
        assert_eq!(used_entry(&r.mem, 0, 0), (0, 80));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random transmit rings: no panic, and nothing larger than a
        /// frame reaches the tap.
        #[test]
        fn random_transmit_rings(
            descs in proptest::collection::vec(
                (prop_oneof![0x4000u64..0x9000, any::<u64>()], prop_oneof![0u32..3000, any::<u32>()], 0u16..4, 0u16..20),
                16,
            ),
            avail in 0u16..40,
        ) {
            let mut r = rig(0);
            for (i, d) in descs.iter().enumerate() {
                write_desc(&r.mem, 1, i as u16, *d);
            }
            r.mem.write_obj(avail, GuestAddress(crate::virtio::test_utils::avail_addr(1) + 2)).unwrap();
            r.evts[TX].write(1).unwrap();
            r.run();
            while let Some(f) = r.recv() {
                prop_assert!(f.len() <= MAX_FRAME);
            }
        }
    }

    /// A sent frame is on the tap at once; the interrupt that hands its
    /// buffer back waits for the moderation timer.
    #[test]
    fn the_interrupt_for_sent_frames_waits_for_the_moderation_timer() {
        let mut r = rig(0);
        r.transmit(0);
        assert_eq!(r.recv().expect("the frame, at once"), rx_frame(60));
        assert_eq!(used_idx(&r.mem, 1), 1, "the buffer is used at once");
        assert_eq!(r.interrupts(), 0, "no interrupt before the timer");
        r.run();
        assert_eq!(r.interrupts(), 1, "the timer raised it");
        // A second frame arms the timer again.
        r.transmit(1);
        assert_eq!(r.interrupts(), 0);
        r.run();
        assert_eq!(r.interrupts(), 1);
    }

    /// An interrupt for a received frame covers the sent frames' owed one:
    /// the driver gets one interrupt, not two.
    #[test]
    fn an_interrupt_for_received_frames_covers_sent_ones() {
        let mut r = rig(0);
        let wait = Duration::from_millis(50);
        r.net.lock().unwrap().set_tx_irq_delay(wait);
        r.transmit(0);
        assert_eq!(r.interrupts(), 0);
        write_desc(&r.mem, 0, 0, (0x8000, 2048, W, 0));
        make_available(&r.mem, 0, &[0]);
        r.send(&rx_frame(100));
        r.step();
        assert_eq!(used_idx(&r.mem, 0), 1, "the frame was received");
        assert_eq!(r.interrupts(), 1, "one interrupt for both queues");
        {
            let net = r.net.lock().unwrap();
            let timer = net.tx_irq.timer.as_ref().unwrap();
            assert!(!timer.is_armed().unwrap(), "the timer was disarmed");
        }
        std::thread::sleep(wait * 2);
        r.run();
        assert_eq!(r.interrupts(), 0, "the timer found nothing owed");
    }

    /// An expiry that epoll reported but a covering interrupt cleared
    /// before it was served raises nothing, and leaves a timer armed since
    /// for newly owed frames to raise their interrupt later.
    #[test]
    fn a_cleared_expiry_served_late_raises_nothing() {
        let r = rig(0);
        let mut net = r.net.lock().unwrap();
        net.set_tx_irq_delay(Duration::from_millis(1));
        net.signal_tx_used();
        std::thread::sleep(Duration::from_millis(20));
        net.signal_used();
        assert_eq!(r.interrupts(), 1);
        net.set_tx_irq_delay(Duration::from_secs(60));
        net.signal_tx_used();
        net.tx_irq_timer_fired();
        assert_eq!(r.interrupts(), 0, "nothing raised early");
        assert!(
            net.tx_irq.owed && net.tx_irq.armed,
            "still owed, still timed"
        );
    }

    /// Without moderation the interrupt comes with the pass that used the
    /// buffer; a device reset drops what the timer owed.
    #[test]
    fn zero_moderation_interrupts_at_once_and_a_reset_drops_what_is_owed() {
        let mut r = rig(0);
        r.net.lock().unwrap().set_tx_irq_delay(Duration::ZERO);
        r.transmit(0);
        assert_eq!(r.interrupts(), 1);
        r.net.lock().unwrap().set_tx_irq_delay(TX_IRQ_DELAY);
        r.transmit(1);
        r.net.lock().unwrap().reset();
        r.run();
        assert_eq!(r.interrupts(), 0, "no interrupt for a reset device");
    }
}
