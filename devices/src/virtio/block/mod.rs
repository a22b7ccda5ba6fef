//! virtio-block over a raw image file.
//!
//! Data moves between the file and guest memory with one preadv/pwritev
//! per request, straight into the guest's buffers; FLUSH is fdatasync, so a completed flush means
//! the data is on stable storage.

mod request;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::warn;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::rate_limiter::{RateLimiter, RateLimiterConfig};

use super::{
    queue_wake, read_config_bytes, should_notify, watch_queue, Budget, DeviceSignals, LogOnce,
    QueueWake, VirtioDevice, VIRTIO_RING_F_EVENT_IDX,
};
pub use request::{execute, Outcome, SECTOR_SIZE};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the GET_ID serial.
pub const ID_BYTES: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image cannot be opened.
    #[error("cannot open drive {0}: {1}")]
    Open(PathBuf, #[source] std::io::Error),
    /// The image is not a regular file or block device.
    #[error("drive {0} is not a regular file or block device")]
    NotAFile(PathBuf),
    /// The serial is longer than GET_ID can carry.
    #[error("drive serial {0:?} is longer than {ID_BYTES} bytes")]
    SerialTooLong(String),
    /// The rate limiter's timer cannot be made.
    #[error("cannot make the drive's rate limiter timer: {0}")]
    Timer(#[source] std::io::Error),
}

/// How to build a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Advertise VIRTIO_BLK_F_RO and fail writes.
    pub read_only: bool,
    /// Serial returned by GET_ID (at most 20 bytes).
    pub serial: Option<String>,
    /// Limits on the requests served (data bytes, requests).
    pub rate_limiter: RateLimiterConfig,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
}

crate::counters!(
    /// What one drive did, under Firecracker's metric names.
    BlockMetrics {
        /// Bytes read from the image for the guest.
        read_bytes,
        /// Bytes the guest wrote to the image.
        write_bytes,
        /// Read requests served.
        read_count,
        /// Write requests served.
        write_count,
        /// Flushes served.
        flush_count,
        /// Requests refused as malformed or unsupported.
        invalid_reqs_count,
        /// Requests the host's I/O failed.
        execute_fails,
        /// Notifications of the queue.
        queue_event_count,
    }
);

/// Opens an image for reading (and writing unless `read_only`): a regular
/// file or a block device, and its length in bytes.
fn open_image(path: &std::path::Path, read_only: bool) -> Result<(File, u64), Error> {
    let file = crate::fd_path::open(path, !read_only).map_err(|e| Error::Open(path.into(), e))?;
    let meta = file.metadata().map_err(|e| Error::Open(path.into(), e))?;
    use std::os::unix::fs::FileTypeExt;
    let len = if meta.is_file() {
        meta.len()
    } else if meta.file_type().is_block_device() {
        use std::io::Seek;
        (&file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::Open(path.into(), e))?
    } else {
        return Err(Error::NotAFile(path.into()));
    };
    Ok((file, len))
}

/// A virtio-block device.
pub struct Block {
    file: File,
    read_only: bool,
    capacity: u64,
    id: [u8; ID_BYTES],
    config: Vec<u8>,
    queue_evt: EventFd,
    signals: Arc<DeviceSignals>,
    active: Option<Active>,
    early_notify: LogOnce,
    bad_request: LogOnce,
    descs: Vec<virtio_queue::desc::split::Descriptor>,
    stats: Arc<BlockMetrics>,
    limiter: Option<RateLimiter>,
}

impl Block {
    /// Changes a running drive: its image (the guest is told the new
    /// capacity through a configuration change) and its rate limits.
    /// Returns the capacity in sectors.
    pub fn update(
        &mut self,
        path: Option<&std::path::Path>,
        limits: Option<&RateLimiterConfig>,
    ) -> Result<u64, Error> {
        if let Some(path) = path {
            let (file, len) = open_image(path, self.read_only)?;
            // The old image closes here. What the guest wrote to it is in
            // the host's page cache; its flushes already made it durable.
            self.file = file;
            self.capacity = len / SECTOR_SIZE;
            self.config[..8].copy_from_slice(&self.capacity.to_le_bytes());
            self.signals.signal_config_change();
        }
        if let (Some(cfg), Some(l)) = (limits, self.limiter.as_mut()) {
            l.update(cfg);
        }
        Ok(self.capacity)
    }

    /// The drive's counters, for the VMM's metrics.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.stats.clone()
    }

    /// Opens the image; `queue_evt` is the queue's ioeventfd and `signals`
    /// the interrupt shared with the transport.
    pub fn new(
        cfg: &BlockConfig,
        queue_evt: EventFd,
        signals: Arc<DeviceSignals>,
    ) -> Result<Block, Error> {
        let (file, len) = open_image(&cfg.path, cfg.read_only)?;
        let mut id = [0u8; ID_BYTES];
        if let Some(serial) = &cfg.serial {
            if serial.len() > ID_BYTES {
                return Err(Error::SerialTooLong(serial.clone()));
            }
            id[..serial.len()].copy_from_slice(serial.as_bytes());
        }
        let capacity = len / SECTOR_SIZE;
        // capacity (u64), size_max (u32, unused), seg_max (u32).
        let mut config = Vec::with_capacity(16);
        config.extend_from_slice(&capacity.to_le_bytes());
        config.extend_from_slice(&0u32.to_le_bytes());
        config.extend_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        Ok(Block {
            file,
            read_only: cfg.read_only,
            capacity,
            id,
            config,
            queue_evt,
            signals,
            active: None,
            early_notify: LogOnce::default(),
            bad_request: LogOnce::default(),
            descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            stats: Arc::default(),
            // Always there (limiting nothing by default), so that a limit
            // set while the VM runs has a timer the event loop watches.
            limiter: Some(RateLimiter::new(&cfg.rate_limiter).map_err(Error::Timer)?),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queue;
        let mut used = false;
        let mut budget = Budget::for_queue(queue);
        loop {
            if queue.disable_notification(mem).is_err() {
                break;
            }
            budget.start_round();
            while let Some(chain) = budget.next(queue, mem, &self.signals, &self.bad_request) {
                let head = chain.head_index();
                self.descs.clear();
                self.descs.extend(chain);
                if let Some(limiter) = self.limiter.as_mut().filter(|l| l.limits()) {
                    // The data: every descriptor but the header and the
                    // status byte.
                    let data: u64 = self
                        .descs
                        .iter()
                        .skip(1)
                        .take(self.descs.len().saturating_sub(2))
                        .map(|d| u64::from(d.len()))
                        .sum();
                    if !limiter.consume(data) {
                        // Back in the ring until the limiter's timer.
                        queue.go_to_previous_position();
                        break;
                    }
                }
                let outcome = execute(
                    mem,
                    &self.file,
                    self.read_only,
                    self.capacity,
                    &self.id,
                    &self.descs,
                    &self.stats,
                );
                let len = match outcome {
                    Outcome::Done { used_len } => used_len,
                    Outcome::Malformed(why) => {
                        self.bad_request
                            .warn(format_args!("virtio-block: malformed request: {why}"));
                        self.signals.set_needs_reset();
                        0
                    }
                };
                if let Err(e) = queue.add_used(mem, head, len) {
                    self.bad_request
                        .warn(format_args!("virtio-block: cannot return a request: {e}"));
                    self.signals.set_needs_reset();
                }
                used = true;
                if self.signals.needs_reset() {
                    // Stop touching the rings until the driver resets us.
                    break;
                }
            }
            if self.signals.needs_reset()
                || budget.spent()
                || self.limiter.as_ref().is_some_and(RateLimiter::waiting)
                || !queue.enable_notification(mem).unwrap_or(false)
                || !budget.more_came()
            {
                break;
            }
        }
        if used && should_notify(queue, mem) {
            self.signals.signal_used_queue();
        }
        if self.signals.needs_reset() {
            self.active = None;
        } else {
            budget.resume(&self.queue_evt);
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f =
            (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX) | VIRTIO_RING_F_EVENT_IDX;
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        if !read_config_bytes(&self.config, offset, data) {
            self.bad_request.warn(format_args!(
                "virtio-block: config read out of range at {offset:#x}"
            ));
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        mut queues: Vec<Queue>,
    ) -> Result<(), String> {
        let mut queue = queues.pop().ok_or("no queue")?;
        queue.set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
        self.active = Some(Active { mem, queue });
        // Requests posted before DRIVER_OK wait in the ring: served from
        // the event loop, like every other pass, not from this vCPU.
        self.queue_evt.write(1).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        watch_queue(ops, "virtio-block", &self.queue_evt, self.limiter.as_ref());
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let kicks = &self.stats.queue_event_count;
        match queue_wake(events.fd(), &self.queue_evt, self.limiter.as_mut(), kicks) {
            QueueWake::Serve if self.active.is_none() => self.early_notify.warn(format_args!(
                "virtio-block: queue notified while not running"
            )),
            QueueWake::Serve => self.process_queue(),
            QueueWake::Wait | QueueWake::Other => {}
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if !self.read_only {
            if let Err(e) = self.file.sync_data() {
                warn!("virtio-block: final sync failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{
        avail_addr, desc_addr, make_available, mem, ring_queue, used_entry, used_idx, write_desc,
    };
    use proptest::prelude::*;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    /// A device on a 64 KiB image in a scratch file removed on drop.
    fn device(read_only: bool) -> (Block, Arc<DeviceSignals>, Scratch) {
        let dir = Scratch::new();
        std::fs::write(&dir.0, vec![0xabu8; 64 * 1024]).unwrap();
        let signals = Arc::new(DeviceSignals::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        let cfg = BlockConfig {
            path: dir.0.clone(),
            read_only,
            serial: Some("fuzz".into()),
            rate_limiter: Default::default(),
        };
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            Block::new(&cfg, evt, signals.clone()).unwrap(),
            signals,
            dir,
        )
    }

    /// Activates `blk` on queue 0 of `size` entries and runs the pass its
    /// activation asks the event loop for.
    fn activate(blk: &mut Block, m: &GuestMemoryMmap, size: u16) {
        blk.activate(m.clone(), 0, vec![ring_queue(0, size)])
            .unwrap();
        assert_eq!(
            blk.queue_evt.read().unwrap(),
            1,
            "activation kicks the queue"
        );
        blk.process_queue();
    }

    struct Scratch(std::path::PathBuf);
    impl Scratch {
        fn new() -> Scratch {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            Scratch(std::env::temp_dir().join(format!(
                "strato-blk-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            )))
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Descriptors biased towards interesting values: inside the guest, at
    /// its edge, far outside, or wrapping the address space.
    fn descriptor() -> impl Strategy<Value = (u64, u32, u16, u16)> {
        let addr = prop_oneof![
            0x4000u64..0x8000,
            Just((16u64 << 20) - 8),
            Just(u64::MAX - 16),
            any::<u64>(),
        ];
        let len = prop_oneof![1u32..1024, Just(16), Just(0), any::<u32>()];
        (addr, len, 0u16..8, 0u16..20)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the guest writes into its rings, the device neither
        /// panics nor writes outside guest memory (vm-memory checks every
        /// access), and every request it completes gets a sane used entry.
        #[test]
        fn random_rings_are_handled(
            descs in proptest::collection::vec(descriptor(), 16),
            heads in proptest::collection::vec(0u16..20, 16),
            avail_idx in any::<u16>(),
            headers in proptest::collection::vec((0u32..10, 0u64..200), 4),
            read_only in any::<bool>(),
        ) {
            let m = mem();
            for (i, d) in descs.iter().enumerate() {
                write_desc(&m, 0, i as u16, *d);
            }
            m.write_obj(avail_idx, GuestAddress(avail_addr(0) + 2)).unwrap();
            for (i, h) in heads.iter().enumerate() {
                m.write_obj(*h, GuestAddress(avail_addr(0) + 4 + 2 * i as u64)).unwrap();
            }
            // Plausible request headers where descriptors are likely to point.
            for (i, (kind, sector)) in headers.iter().enumerate() {
                let at = 0x4000 + 0x1000 * i as u64;
                m.write_obj(*kind, GuestAddress(at)).unwrap();
                m.write_obj(*sector, GuestAddress(at + 8)).unwrap();
            }
            let (mut blk, signals, _dir) = device(read_only);
            activate(&mut blk, &m, 16);
            let used = used_idx(&m, 0);
            // Never more completions than the guest made available.
            prop_assert!(used <= avail_idx.min(16) || signals.needs_reset());
            for i in 0..used.min(16) {
                prop_assert!(used_entry(&m, 0, i).0 < 16);
            }
        }
    }

    #[test]
    fn requests_before_driver_ok_are_served_on_activation() {
        let m = mem();
        // One GET_ID request: header, 20-byte buffer, status.
        write_desc(&m, 0, 0, (0x4000, 16, 1, 1));
        write_desc(&m, 0, 1, (0x5000, 20, 1 | 2, 2));
        write_desc(&m, 0, 2, (0x6000, 1, 2, 0));
        m.write_obj(8u32, GuestAddress(0x4000)).unwrap();
        m.write_obj(0xffu8, GuestAddress(0x6000)).unwrap();
        make_available(&m, 0, &[0]);
        let (mut blk, signals, _dir) = device(false);
        activate(&mut blk, &m, 16);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x6000)).unwrap(), 0);
        let mut id = [0u8; 4];
        m.read_slice(&mut id, GuestAddress(0x5000)).unwrap();
        assert_eq!(&id, b"fuzz");
        assert_eq!(used_idx(&m, 0), 1);
        assert_eq!(used_entry(&m, 0, 0), (0, 21));
        assert!(!signals.needs_reset());
    }

    #[test]
    fn no_interrupt_flag_is_honoured() {
        for (flags, expect_irq) in [(1u16, false), (0, true)] {
            let m = mem();
            write_desc(&m, 0, 0, (0x4000, 16, 1, 1));
            write_desc(&m, 0, 1, (0x5000, 20, 1 | 2, 2));
            write_desc(&m, 0, 2, (0x6000, 1, 2, 0));
            m.write_obj(8u32, GuestAddress(0x4000)).unwrap();
            m.write_obj(flags, GuestAddress(avail_addr(0))).unwrap();
            make_available(&m, 0, &[0]);
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let signals = Arc::new(DeviceSignals::new(irq.try_clone().unwrap()));
            let (mut blk, _, _dir) = device(false);
            blk.signals = signals;
            activate(&mut blk, &m, 16);
            assert_eq!(used_idx(&m, 0), 1);
            assert_eq!(irq.read().is_ok(), expect_irq, "flags {flags}");
        }
    }

    /// A GET_ID request as chain 0: header, 20-byte buffer, status.
    fn get_id_request(m: &GuestMemoryMmap) {
        write_desc(m, 0, 0, (0x4000, 16, 1, 1));
        write_desc(m, 0, 1, (0x5000, 20, 1 | 2, 2));
        write_desc(m, 0, 2, (0x6000, 1, 2, 0));
        m.write_obj(8u32, GuestAddress(0x4000)).unwrap();
    }

    #[test]
    fn a_pass_takes_a_queue_at_most_and_comes_back_for_the_rest() {
        let m = mem();
        get_id_request(&m);
        make_available(&m, 0, &[0; 8]);
        let (mut blk, signals, _dir) = device(false);
        activate(&mut blk, &m, 8);
        assert_eq!(used_idx(&m, 0), 8);
        // The pass stopped at its budget, not at an empty ring, so it
        // kicked its own queue: the event loop comes back.
        assert_eq!(blk.queue_evt.read().unwrap(), 1);
        make_available(&m, 0, &[0]);
        blk.process_queue();
        assert_eq!(used_idx(&m, 0), 9);
        // That pass found the ring empty: no kick.
        assert!(blk.queue_evt.read().is_err());
        assert!(!signals.needs_reset());
    }

    #[test]
    fn rings_that_overlap_cannot_hold_the_device() {
        // The used ring's flags are the available ring's index: each time
        // the device suppresses or re-arms kicks, it moves the index (found
        // by fuzzing: it spun the event loop for ever).
        let m = mem();
        let avail = avail_addr(0) + 2;
        let mut queue = Queue::new(16).unwrap();
        queue.set_size(16);
        queue.set_desc_table_address(Some(desc_addr(0) as u32), Some(0));
        queue.set_avail_ring_address(Some(avail as u32), Some(0));
        queue.set_used_ring_address(Some((avail + 2) as u32), Some(0));
        queue.set_ready(true);
        queue.set_next_avail(1);
        let (mut blk, _signals, _dir) = device(false);
        blk.activate(m.clone(), 0, vec![queue]).unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            blk.process_queue();
            let _ = done_tx.send(());
        });
        done.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the pass ends");
    }

    #[test]
    fn a_new_image_changes_the_capacity_and_tells_the_driver() {
        let (mut blk, signals, _dir) = device(false);
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 128);
        let bigger = Scratch::new();
        std::fs::write(&bigger.0, vec![1u8; 256 * 1024]).unwrap();
        assert_eq!(blk.update(Some(&bigger.0), None).unwrap(), 512);
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 512);
        assert_eq!(signals.interrupt_status() & crate::virtio::INT_CONFIG, 2);
        assert_eq!(signals.config_changes(), 1);
        // A path that cannot be opened changes nothing.
        let missing = std::path::Path::new("/nonexistent/image");
        assert!(blk.update(Some(missing), None).is_err());
        assert_eq!(blk.capacity(), 512);
    }

    #[test]
    fn a_runaway_available_index_needs_reset() {
        let m = mem();
        m.write_obj(1000u16, GuestAddress(avail_addr(0) + 2))
            .unwrap();
        let (mut blk, signals, _dir) = device(false);
        activate(&mut blk, &m, 16);
        assert!(signals.needs_reset());
        assert_eq!(used_idx(&m, 0), 0);
    }
}
