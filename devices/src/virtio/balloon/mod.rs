//! virtio-balloon: the guest gives memory back to the host on request.
//!
//! The VMM sets a target ([`BalloonShared::set_target_mib`]); the guest's
//! driver allocates that many pages and reports their frame numbers on the
//! inflate queue, and the device releases each page on the host
//! (`MADV_DONTNEED`: the guest's RAM is private anonymous memory, so the
//! page leaves the VMM's RSS and reads as zeros when next touched). A lower
//! target makes the driver hand pages back on the deflate queue; there is
//! nothing to do for them (no `VIRTIO_BALLOON_F_MUST_TELL_HOST`), the guest
//! faults them in again when it uses them.
//!
//! With a statistics interval the driver keeps one buffer of memory
//! statistics in the stats queue; every interval the device hands it back,
//! which makes the driver refill it. With free page reporting the driver
//! reports ranges of free pages, which are released like inflated ones.
//! The queues the driver uses are numbered without gaps: inflate, deflate,
//! then stats and reporting if their features were accepted.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{read_config_bytes, should_notify, Budget, DeviceSignals, LogOnce, VirtioDevice};

/// virtio device id of a memory balloon.
pub const DEVICE_ID: u32 = 5;
/// Feature: the statistics queue exists.
pub const F_STATS_VQ: u32 = 1;
/// Feature: the guest deflates the balloon when it runs out of memory.
pub const F_DEFLATE_ON_OOM: u32 = 2;
/// Feature: the guest reports free pages.
pub const F_REPORTING: u32 = 5;
/// VIRTIO_F_VERSION_1.
const F_VERSION_1: u32 = 32;

/// The balloon's page size: frame numbers count 4 KiB pages whatever the
/// guest's page size.
pub const PAGE_SIZE: u64 = 4096;
const PAGES_PER_MIB: u32 = (1 << 20) / PAGE_SIZE as u32;
/// Queue size offered for every queue.
const QUEUE_SIZE: u16 = 256;
/// One statistic: a 16-bit tag and a 64-bit value, packed.
const STAT_LEN: usize = 10;
/// Most statistics read from one buffer (the spec defines 10 tags).
const MAX_STATS: usize = 32;

/// How to build a balloon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Initial target in MiB.
    pub amount_mib: u32,
    /// Let the guest deflate when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Statistics polling interval in seconds; 0: no statistics queue.
    pub stats_polling_interval_s: u16,
    /// Offer free page reporting.
    pub free_page_reporting: bool,
}

/// The guest's memory statistics, as its driver last reported them
/// (bytes, or counts for the fault and swap figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
}

impl BalloonStats {
    fn set(&mut self, tag: u16, value: u64) -> bool {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Errors of the balloon's controls.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A target larger than the guest's memory.
    #[error("amount_mib {0} is more than the guest's {1} MiB of memory")]
    TooLarge(u32, u64),
    /// Statistics were not enabled when the VM started.
    #[error("statistics were not enabled when the VM started (stats_polling_interval_s 0)")]
    NoStats,
    /// Statistics cannot be turned off after the start.
    #[error("stats_polling_interval_s cannot go to 0 after the start")]
    StatsOff,
}

/// What the VMM and the device share: the target, what the guest reports
/// it has given, the statistics and their interval.
pub struct BalloonShared {
    target_pages: AtomicU32,
    actual_pages: AtomicU32,
    guest_mib: u64,
    config: Mutex<BalloonConfig>,
    stats: Mutex<Option<BalloonStats>>,
    signals: Arc<DeviceSignals>,
    /// Tells the device that the statistics interval changed.
    interval_changed: EventFd,
}

impl BalloonShared {
    /// The current target in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.target_pages.load(Ordering::SeqCst)
    }

    /// The pages the guest says the balloon holds.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages.load(Ordering::SeqCst)
    }

    /// The configuration, with the current target.
    pub fn config(&self) -> BalloonConfig {
        let mut c = *crate::bus::lock(&self.config);
        c.amount_mib = self.target_pages() / PAGES_PER_MIB;
        c
    }

    /// Sets the target and tells the guest (a config-change interrupt).
    pub fn set_target_mib(&self, mib: u32) -> Result<(), Error> {
        if u64::from(mib) > self.guest_mib {
            return Err(Error::TooLarge(mib, self.guest_mib));
        }
        self.target_pages
            .store(mib * PAGES_PER_MIB, Ordering::SeqCst);
        self.signals.signal_config_change();
        Ok(())
    }

    /// The last statistics the guest reported, if statistics are on.
    pub fn stats(&self) -> Result<Option<BalloonStats>, Error> {
        if crate::bus::lock(&self.config).stats_polling_interval_s == 0 {
            return Err(Error::NoStats);
        }
        Ok(*crate::bus::lock(&self.stats))
    }

    /// Changes the statistics interval (not to or from 0 after the start).
    pub fn set_stats_interval(&self, seconds: u16) -> Result<(), Error> {
        let mut c = crate::bus::lock(&self.config);
        if c.stats_polling_interval_s == 0 {
            return Err(Error::NoStats);
        }
        if seconds == 0 {
            return Err(Error::StatsOff);
        }
        c.stats_polling_interval_s = seconds;
        if let Err(e) = self.interval_changed.write(1) {
            warn!("virtio-balloon: cannot signal the new interval: {e}");
        }
        Ok(())
    }
}

/// Which queue is which, for the features the driver accepted.
#[derive(Clone, Copy)]
struct QueueMap {
    stats: Option<usize>,
    reporting: Option<usize>,
}

impl QueueMap {
    fn new(features: u64) -> QueueMap {
        let mut next = 2;
        let mut take = |bit: u32| {
            (features & (1 << bit) != 0).then(|| {
                next += 1;
                next - 1
            })
        };
        let stats = take(F_STATS_VQ);
        let reporting = take(F_REPORTING);
        QueueMap { stats, reporting }
    }

    fn count(&self) -> usize {
        2 + usize::from(self.stats.is_some()) + usize::from(self.reporting.is_some())
    }
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    map: QueueMap,
    /// The statistics buffer the driver left with us, to give back at the
    /// next poll.
    stats_head: Option<u16>,
}

const INFLATE: usize = 0;
const DEFLATE: usize = 1;

/// A virtio-balloon device.
pub struct Balloon {
    shared: Arc<BalloonShared>,
    features: u64,
    queue_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    signals: Arc<DeviceSignals>,
    timer: TimerFd,
    active: Option<Active>,
    bad_request: LogOnce,
    host_error: LogOnce,
    /// Ranges of inflated pages given back to the host (one `madvise`
    /// each): what coalescing saves shows in tests.
    released_ranges: u64,
}

impl Balloon {
    /// A balloon for a guest of `guest_mib` MiB with `queue_evts` (one per
    /// queue: inflate, deflate, stats, reporting) and `signals`.
    pub fn new(
        cfg: &BalloonConfig,
        guest_mib: u64,
        queue_evts: Vec<EventFd>,
        signals: Arc<DeviceSignals>,
    ) -> std::io::Result<Balloon> {
        if u64::from(cfg.amount_mib) > guest_mib {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                Error::TooLarge(cfg.amount_mib, guest_mib).to_string(),
            ));
        }
        let mut features = 1u64 << F_VERSION_1;
        if cfg.deflate_on_oom {
            features |= 1 << F_DEFLATE_ON_OOM;
        }
        if cfg.stats_polling_interval_s > 0 {
            features |= 1 << F_STATS_VQ;
        }
        if cfg.free_page_reporting {
            features |= 1 << F_REPORTING;
        }
        let shared = Arc::new(BalloonShared {
            target_pages: AtomicU32::new(cfg.amount_mib * PAGES_PER_MIB),
            actual_pages: AtomicU32::new(0),
            guest_mib,
            config: Mutex::new(*cfg),
            stats: Mutex::new(None),
            signals: signals.clone(),
            interval_changed: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        Ok(Balloon {
            shared,
            features,
            queue_sizes: vec![QUEUE_SIZE; queue_evts.len()],
            queue_evts,
            signals,
            timer: TimerFd::new()?,
            active: None,
            bad_request: LogOnce::default(),
            host_error: LogOnce::default(),
            released_ranges: 0,
        })
    }

    /// How many queues a balloon needs at most (its ioeventfds).
    pub const MAX_QUEUES: usize = 4;

    /// The controls the VMM keeps.
    pub fn shared(&self) -> Arc<BalloonShared> {
        self.shared.clone()
    }

    /// Releases the 4 KiB pages at the frame numbers in the buffers of
    /// `queue` (inflate), or only takes them back (deflate).
    fn process_pages(&mut self, queue: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let q = &mut active.queues[queue];
        let mut used = false;
        let mut budget = Budget::for_queue(q);
        while let Some(chain) = budget.next(q, mem, &self.signals, &self.bad_request) {
            let head = chain.head_index();
            if queue == INFLATE {
                let mut run = PageRun::default();
                for d in chain.filter(|d| !d.is_write_only()) {
                    let mut buf = [0u8; 4096];
                    let mut pfns = [0u32; 1024];
                    let mut at = 0u64;
                    let len = u64::from(d.len()) / 4 * 4;
                    while at < len {
                        let n = (len - at).min(buf.len() as u64) as usize;
                        let Some(addr) = d.addr().checked_add(at) else {
                            break;
                        };
                        if mem.read_slice(&mut buf[..n], addr).is_err() {
                            self.bad_request.warn(format_args!(
                                "virtio-balloon: page list outside guest memory"
                            ));
                            break;
                        }
                        let k = n / 4;
                        for (pfn, b) in pfns.iter_mut().zip(buf[..n].chunks_exact(4)) {
                            *pfn = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        }
                        // Linux lists the pages in the order it got them,
                        // mostly descending: sorted, neighbours become one
                        // range and one madvise (256 pages of a buffer: one
                        // call instead of 256, which made an inflate 3 to 4
                        // times slower than Firecracker's).
                        pfns[..k].sort_unstable();
                        for (i, pfn) in pfns[..k].iter().enumerate() {
                            if i > 0 && pfns[i - 1] == *pfn {
                                continue;
                            }
                            let gpa = u64::from(*pfn) * PAGE_SIZE;
                            run.add(mem, gpa, PAGE_SIZE, &self.bad_request, &self.host_error);
                        }
                        at += n as u64;
                    }
                }
                run.flush(&self.host_error);
                self.released_ranges += run.ranges;
            }
            if q.add_used(mem, head, 0).is_err() {
                self.signals.set_needs_reset();
                break;
            }
            used = true;
        }
        if used && should_notify(q, mem) {
            self.signals.signal_used_queue();
        }
        budget.resume(&self.queue_evts[queue]);
    }

    /// Free page reporting: each buffer is a range of free guest pages.
    fn process_reporting(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(index) = active.map.reporting else {
            return;
        };
        let mem = &active.mem;
        let q = &mut active.queues[index];
        let mut used = false;
        let mut budget = Budget::for_queue(q);
        while let Some(chain) = budget.next(q, mem, &self.signals, &self.bad_request) {
            let head = chain.head_index();
            let mut run = PageRun::default();
            for d in chain {
                run.add(
                    mem,
                    d.addr().0,
                    u64::from(d.len()),
                    &self.bad_request,
                    &self.host_error,
                );
            }
            run.flush(&self.host_error);
            if q.add_used(mem, head, 0).is_err() {
                self.signals.set_needs_reset();
                break;
            }
            used = true;
        }
        if used && should_notify(q, mem) {
            self.signals.signal_used_queue();
        }
        budget.resume(&self.queue_evts[index]);
    }

    /// The driver filled the statistics buffer: read it and keep it until
    /// the next poll.
    fn process_stats(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(index) = active.map.stats else {
            return;
        };
        let mem = &active.mem;
        let q = &mut active.queues[index];
        let mut budget = Budget::for_queue(q);
        while let Some(chain) = budget.next(q, mem, &self.signals, &self.bad_request) {
            let head = chain.head_index();
            // A second buffer while one is held: give the old one back.
            if let Some(old) = active.stats_head.replace(head) {
                if q.add_used(mem, old, 0).is_err() {
                    self.signals.set_needs_reset();
                    return;
                }
            }
            let mut stats = BalloonStats::default();
            let mut count = 0;
            for d in chain.filter(|d| !d.is_write_only()) {
                let n = (d.len() as usize / STAT_LEN).min(MAX_STATS - count);
                for i in 0..n {
                    let mut raw = [0u8; STAT_LEN];
                    let Some(addr) = d.addr().checked_add((i * STAT_LEN) as u64) else {
                        break;
                    };
                    if mem.read_slice(&mut raw, addr).is_err() {
                        break;
                    }
                    let tag = u16::from_le_bytes([raw[0], raw[1]]);
                    let mut value = [0u8; 8];
                    value.copy_from_slice(&raw[2..]);
                    // Unknown tags come from newer drivers: skipped.
                    stats.set(tag, u64::from_le_bytes(value));
                }
                count += n;
            }
            *crate::bus::lock(&self.shared.stats) = Some(stats);
        }
        budget.resume(&self.queue_evts[index]);
        if self.arm_timer().is_err() {
            self.host_error.warn(format_args!(
                "virtio-balloon: cannot arm the statistics timer"
            ));
        }
    }

    /// Gives the statistics buffer back, which makes the driver refill it.
    fn poll_stats(&mut self) {
        let _ = self.timer.wait();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (Some(index), Some(head)) = (active.map.stats, active.stats_head.take()) else {
            return;
        };
        let q = &mut active.queues[index];
        if q.add_used(&active.mem, head, 0).is_err() {
            self.signals.set_needs_reset();
            return;
        }
        if should_notify(q, &active.mem) {
            self.signals.signal_used_queue();
        }
    }

    /// Arms the poll timer for one interval (re-armed when the driver
    /// sends the next buffer).
    fn arm_timer(&mut self) -> std::io::Result<()> {
        let seconds = crate::bus::lock(&self.shared.config).stats_polling_interval_s;
        if seconds == 0 {
            return Ok(());
        }
        self.timer
            .reset(Duration::from_secs(u64::from(seconds)), None)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// Coalesces guest pages into host ranges for `madvise`.
#[derive(Default)]
struct PageRun {
    start: usize,
    len: usize,
    /// Ranges given back to the host so far (one `madvise` each).
    ranges: u64,
}

impl PageRun {
    /// Adds `len` bytes of guest memory at `gpa`; a range outside guest
    /// RAM or across regions is skipped (and logged once).
    fn add(&mut self, mem: &GuestMemoryMmap, gpa: u64, len: u64, bad: &LogOnce, err: &LogOnce) {
        if len == 0 {
            return;
        }
        let host = mem
            .get_slice(GuestAddress(gpa), len as usize)
            .ok()
            .map(|s| s.ptr_guard().as_ptr() as usize);
        let Some(host) = host else {
            bad.warn(format_args!(
                "virtio-balloon: page {gpa:#x} (+{len:#x}) is not guest RAM"
            ));
            return;
        };
        if self.len > 0 && self.start + self.len == host {
            self.len += len as usize;
            return;
        }
        self.flush(err);
        self.start = host;
        self.len = len as usize;
    }

    fn flush(&mut self, err: &LogOnce) {
        if self.len == 0 {
            return;
        }
        // Only whole host pages: a partial one stays.
        let page = PAGE_SIZE as usize;
        let start = self.start.next_multiple_of(page);
        let end = (self.start + self.len) / page * page;
        if end > start {
            // SAFETY: [start, end) lies in guest RAM (each piece came from
            // a bounds-checked slice of `mem`), a private anonymous mapping
            // that lives as long as the VM; dropping its pages only makes
            // the guest read zeros there, which is what the balloon means.
            let r = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            };
            if r != 0 {
                err.warn(format_args!(
                    "virtio-balloon: madvise: {}",
                    std::io::Error::last_os_error()
                ));
            }
            self.ranges += 1;
        }
        self.len = 0;
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queues_needed(&self, features: u64) -> usize {
        QueueMap::new(features).count()
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&self.shared.target_pages().to_le_bytes());
        config[4..].copy_from_slice(&self.shared.actual_pages().to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (offset 4, 4 bytes) is the driver's to write.
        if offset == 4 && data.len() == 4 {
            let actual = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.shared.actual_pages.store(actual, Ordering::SeqCst);
        } else {
            self.bad_request.warn(format_args!(
                "virtio-balloon: config write of {} bytes at {offset}",
                data.len()
            ));
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<Queue>,
    ) -> Result<(), String> {
        let map = QueueMap::new(features);
        if queues.len() != map.count() {
            return Err(format!(
                "{} queues for features {features:#x}, {} needed",
                queues.len(),
                map.count()
            ));
        }
        self.active = Some(Active {
            mem,
            queues,
            map,
            stats_head: None,
        });
        // The driver primes the stats queue before DRIVER_OK, when its kick
        // found the device inactive: look at every queue once more (on the
        // event loop, which may arm the statistics timer).
        for evt in &self.queue_evts[..map.count().min(self.queue_evts.len())] {
            if let Err(e) = evt.write(1) {
                warn!("virtio-balloon: cannot requeue a queue event: {e}");
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        // The timer is left alone: this runs on a vCPU thread, whose
        // seccomp filter has no timerfd_settime. An armed timer fires once
        // more and finds nothing to hand back.
        self.active = None;
        self.shared.actual_pages.store(0, Ordering::SeqCst);
    }
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                error!("virtio-balloon: cannot watch a queue: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            error!("virtio-balloon: cannot watch the statistics timer: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.shared.interval_changed, EventSet::IN)) {
            error!("virtio-balloon: cannot watch interval changes: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.timer.as_raw_fd() {
            self.poll_stats();
            return;
        }
        if fd == self.shared.interval_changed.as_raw_fd() {
            let _ = self.shared.interval_changed.read();
            // The held buffer goes back now; the new interval applies from
            // the next one.
            if self.active.as_ref().is_some_and(|a| a.stats_head.is_some()) {
                let _ = self.timer.reset(Duration::from_millis(1), None);
            }
            return;
        }
        let Some(q) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) else {
            return;
        };
        let _ = self.queue_evts[q].read();
        let Some(map) = self.active.as_ref().map(|a| a.map) else {
            return;
        };
        match q {
            INFLATE | DEFLATE => self.process_pages(q),
            _ if Some(q) == map.stats => self.process_stats(),
            _ if Some(q) == map.reporting => self.process_reporting(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
