//! virtio-mem: memory the guest plugs and unplugs in blocks while it runs.
//!
//! The device owns a region of guest-physical space above the boot RAM,
//! cut into blocks (the guest's unit: 2 MiB by default) and slots (the
//! host's unit: 128 MiB by default, a KVM memory slot each). The VMM sets a
//! requested size ([`MemShared::set_requested_mib`]); the guest's driver
//! plugs blocks until its plugged size reaches it, or unplugs blocks until
//! it is down to it, one request at a time on the device's queue.
//!
//! The host side of a request:
//! - a plug makes every slot it touches visible to the vCPUs (a KVM memory
//!   slot, [`Slots`]) before it is acknowledged, so the guest's first
//!   access finds memory;
//! - an unplug hides the slots it leaves empty, then releases the blocks
//!   (`MADV_DONTNEED`: the region is private anonymous memory, so the
//!   pages leave the VMM's RSS and read as zeros if ever used again).
//!
//! A guest can only reach memory in a slot that holds a plugged block, and
//! the device offers `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`, by which the
//! driver promises not to touch unplugged blocks at all. The device
//! emulation (the other devices' buffers) sees the whole region: a buffer
//! the guest places in an unplugged block is served, at the cost of the
//! pages it touches, never more than the region's size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, should_notify, Budget, DeviceSignals, LogOnce, VirtioDevice};

/// virtio device id of a memory device.
pub const DEVICE_ID: u32 = 24;
/// Feature: the driver does not touch unplugged memory.
const F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;
/// Queue size.
const QUEUE_SIZE: u16 = 128;
/// Size of a request (`struct virtio_mem_req`).
const REQ_LEN: usize = 24;
/// Size of a response (`struct virtio_mem_resp`).
const RESP_LEN: usize = 10;

const REQ_PLUG: u16 = 0;
const REQ_UNPLUG: u16 = 1;
const REQ_UNPLUG_ALL: u16 = 2;
const REQ_STATE: u16 = 3;

const MIB: u64 = 1 << 20;

/// Default slot size in MiB (Firecracker's).
pub const DEFAULT_SLOT_MIB: u64 = 128;
/// Default block size in MiB (Firecracker's; x86's pageblock, the least
/// Linux's driver takes).
pub const DEFAULT_BLOCK_MIB: u64 = 2;
/// The smallest slot: Linux adds memory in sections of 128 MiB on x86_64
/// and arm64, so a smaller slot would only split one section.
pub const MIN_SLOT_MIB: u64 = 128;
/// The largest region: 1 TiB, what the guest-physical space of every
/// supported platform leaves above RAM. Bounds the block map (a bit per
/// block) too.
pub const MAX_TOTAL_MIB: u64 = 1 << 20;

/// The hotpluggable memory's sizes, in MiB, as the APIs take them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemConfig {
    /// The region: the most that can be plugged.
    pub total_size_mib: u64,
    /// The host's unit: one KVM memory slot each.
    pub slot_size_mib: u64,
    /// The guest's unit of plugging.
    pub block_size_mib: u64,
}

impl MemConfig {
    /// A region of `total_size_mib` with the default slot and block sizes.
    pub fn new(total_size_mib: u64) -> MemConfig {
        MemConfig {
            total_size_mib,
            slot_size_mib: DEFAULT_SLOT_MIB,
            block_size_mib: DEFAULT_BLOCK_MIB,
        }
    }

    /// Checks the sizes against each other, as Firecracker does.
    pub fn validate(&self) -> Result<(), Error> {
        let (total, slot, block) = (self.total_size_mib, self.slot_size_mib, self.block_size_mib);
        if block < 2 || !block.is_power_of_two() {
            return Err(Error::BlockSize(block));
        }
        if slot < MIN_SLOT_MIB || slot % block != 0 {
            return Err(Error::SlotSize(slot, block));
        }
        if total == 0 || total > MAX_TOTAL_MIB {
            return Err(Error::TotalSize(total));
        }
        if total % slot != 0 {
            return Err(Error::TotalNotSlots(total, slot));
        }
        Ok(())
    }

    /// How many slots the region has.
    pub fn slots(&self) -> u64 {
        self.total_size_mib / self.slot_size_mib.max(1)
    }
}

/// Errors of the hotpluggable memory's configuration and controls.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A block size Linux cannot use.
    #[error("block_size_mib {0} must be a power of 2 and at least 2")]
    BlockSize(u64),
    /// A slot size that is too small or not whole blocks.
    #[error(
        "slot_size_mib {0} must be at least {MIN_SLOT_MIB} and a multiple of block_size_mib {1}"
    )]
    SlotSize(u64, u64),
    /// An empty or too large region.
    #[error("total_size_mib {0} must be between 1 and {MAX_TOTAL_MIB}")]
    TotalSize(u64),
    /// A region that is not whole slots.
    #[error("total_size_mib {0} must be a multiple of slot_size_mib {1}")]
    TotalNotSlots(u64, u64),
    /// A requested size beyond the region.
    #[error("requested_size_mib {0} is more than total_size_mib {1}, the most this VM was started with room for")]
    TooLarge(u64, u64),
    /// A requested size that is not whole blocks.
    #[error("requested_size_mib {0} must be a multiple of block_size_mib {1}")]
    NotBlocks(u64, u64),
}

/// What the VMM sees of the device: its sizes, the requested size and the
/// plugged size (all in MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemStatus {
    pub total_size_mib: u64,
    pub slot_size_mib: u64,
    pub block_size_mib: u64,
    /// What the guest has plugged.
    pub plugged_size_mib: u64,
    /// What the guest was asked to have.
    pub requested_size_mib: u64,
}

/// What the VMM and the device share.
pub struct MemShared {
    config: MemConfig,
    /// Guest-physical start of the region.
    addr: u64,
    requested: AtomicU64,
    plugged: AtomicU64,
    signals: Arc<DeviceSignals>,
    /// Serializes changes of the requested size.
    update: Mutex<()>,
}

impl MemShared {
    /// The sizes, the requested and the plugged size.
    pub fn status(&self) -> MemStatus {
        MemStatus {
            total_size_mib: self.config.total_size_mib,
            slot_size_mib: self.config.slot_size_mib,
            block_size_mib: self.config.block_size_mib,
            plugged_size_mib: self.plugged.load(Ordering::SeqCst) / MIB,
            requested_size_mib: self.requested.load(Ordering::SeqCst) / MIB,
        }
    }

    /// The configuration the VM started with.
    pub fn config(&self) -> MemConfig {
        self.config
    }

    /// Guest-physical start of the region.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Asks the guest to have `mib` plugged: whole blocks, at most the
    /// region. The guest's driver is told through a configuration change.
    pub fn set_requested_mib(&self, mib: u64) -> Result<(), Error> {
        let c = &self.config;
        if mib > c.total_size_mib {
            return Err(Error::TooLarge(mib, c.total_size_mib));
        }
        if !mib.is_multiple_of(c.block_size_mib) {
            return Err(Error::NotBlocks(mib, c.block_size_mib));
        }
        let _serial = self.update.lock().unwrap_or_else(|e| e.into_inner());
        if self.requested.swap(mib * MIB, Ordering::SeqCst) != mib * MIB {
            self.signals.signal_config_change();
        }
        Ok(())
    }
}

/// Makes the region's slots visible to the vCPUs or hides them: the VMM's
/// KVM memory slots.
pub trait Slots: Send {
    /// Slot `index` (counted from the region's start) becomes visible
    /// (`present`) or hidden.
    fn set(&mut self, index: u64, present: bool) -> std::io::Result<()>;
}

/// The state of a range of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Plugged = 0,
    Unplugged = 1,
    Mixed = 2,
}

/// Which blocks are plugged, and how many in each slot.
#[derive(Debug)]
struct BlockMap {
    plugged: Vec<u64>,
    per_slot: Vec<u64>,
    blocks_per_slot: u64,
    count: u64,
}

impl BlockMap {
    fn new(blocks: u64, blocks_per_slot: u64) -> BlockMap {
        BlockMap {
            plugged: vec![0; blocks.div_ceil(64) as usize],
            per_slot: vec![0; blocks.div_ceil(blocks_per_slot.max(1)) as usize],
            blocks_per_slot: blocks_per_slot.max(1),
            count: 0,
        }
    }

    fn is_plugged(&self, block: u64) -> bool {
        self.plugged[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// The state of blocks `first..first + n` (in range, n > 0).
    fn state(&self, first: u64, n: u64) -> State {
        let plugged = (first..first + n).filter(|&b| self.is_plugged(b)).count() as u64;
        match plugged {
            0 => State::Unplugged,
            p if p == n => State::Plugged,
            _ => State::Mixed,
        }
    }

    /// The slots that plugging `first..first + n` would make non-empty.
    fn slots_to_show(&self, first: u64, n: u64) -> Vec<u64> {
        let (s0, s1) = (
            first / self.blocks_per_slot,
            (first + n - 1) / self.blocks_per_slot,
        );
        (s0..=s1)
            .filter(|&s| self.per_slot[s as usize] == 0)
            .collect()
    }

    /// Marks `first..first + n` plugged or unplugged (each block changes)
    /// and returns the slots that became empty.
    fn set(&mut self, first: u64, n: u64, plugged: bool) -> Vec<u64> {
        let mut emptied = Vec::new();
        for b in first..first + n {
            let (word, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            let slot = (b / self.blocks_per_slot) as usize;
            if plugged {
                self.plugged[word] |= bit;
                self.per_slot[slot] += 1;
                self.count += 1;
            } else {
                self.plugged[word] &= !bit;
                self.per_slot[slot] -= 1;
                self.count -= 1;
                if self.per_slot[slot] == 0 {
                    emptied.push(slot as u64);
                }
            }
        }
        emptied
    }

    /// The runs of plugged blocks: (first, count).
    fn runs(&self) -> Vec<(u64, u64)> {
        let blocks = self.per_slot.len() as u64 * self.blocks_per_slot;
        let mut runs = Vec::new();
        let mut start = None;
        for b in 0..=blocks {
            let p = b < blocks && (b / 64) < self.plugged.len() as u64 && self.is_plugged(b);
            match (p, start) {
                (true, None) => start = Some(b),
                (false, Some(s)) => {
                    runs.push((s, b - s));
                    start = None;
                }
                _ => {}
            }
        }
        runs
    }
}

/// A guest's answer, as the response's type and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Response {
    Ack,
    Nack,
    Error,
    State(State),
}

impl Response {
    fn bytes(self) -> [u8; RESP_LEN] {
        let (kind, state): (u16, u16) = match self {
            Response::Ack => (0, 0),
            Response::Nack => (1, 0),
            Response::Error => (3, 0),
            Response::State(s) => (0, s as u16),
        };
        let mut b = [0u8; RESP_LEN];
        b[..2].copy_from_slice(&kind.to_le_bytes());
        b[8..].copy_from_slice(&state.to_le_bytes());
        b
    }
}

/// A virtio-mem device.
pub struct Mem {
    shared: Arc<MemShared>,
    region_size: u64,
    block_size: u64,
    blocks: BlockMap,
    slots: Box<dyn Slots>,
    queue_evt: EventFd,
    signals: Arc<DeviceSignals>,
    active: Option<(GuestMemoryMmap, Queue)>,
    early_notify: LogOnce,
    bad_request: LogOnce,
    host_error: LogOnce,
}

impl Mem {
    /// A device for the region at `addr` sized by `config` (validated),
    /// whose queue's ioeventfd is `queue_evt`, showing and hiding slots
    /// through `slots`. Nothing is plugged at the start.
    pub fn new(
        config: MemConfig,
        addr: u64,
        slots: Box<dyn Slots>,
        queue_evt: EventFd,
        signals: Arc<DeviceSignals>,
    ) -> Result<Mem, Error> {
        config.validate()?;
        Ok(Self::with_sizes(
            config,
            addr,
            config.block_size_mib * MIB,
            config.slot_size_mib * MIB,
            slots,
            queue_evt,
            signals,
        ))
    }

    /// [`Mem::new`] with the block and slot sizes in bytes, unchecked.
    fn with_sizes(
        config: MemConfig,
        addr: u64,
        block_size: u64,
        slot_size: u64,
        slots: Box<dyn Slots>,
        queue_evt: EventFd,
        signals: Arc<DeviceSignals>,
    ) -> Mem {
        let region_size = config.total_size_mib * MIB;
        Mem {
            shared: Arc::new(MemShared {
                config,
                addr,
                requested: AtomicU64::new(0),
                plugged: AtomicU64::new(0),
                signals: signals.clone(),
                update: Mutex::new(()),
            }),
            region_size,
            block_size,
            blocks: BlockMap::new(region_size / block_size, slot_size / block_size),
            slots,
            queue_evt,
            signals,
            active: None,
            early_notify: LogOnce::default(),
            bad_request: LogOnce::default(),
            host_error: LogOnce::default(),
        }
    }

    /// The controls the VMM keeps.
    pub fn shared(&self) -> Arc<MemShared> {
        self.shared.clone()
    }

    /// The block range of a request, if it is whole blocks inside the
    /// region.
    fn blocks_of(&self, addr: u64, nb_blocks: u16) -> Option<(u64, u64)> {
        let offset = addr.checked_sub(self.shared.addr)?;
        let n = u64::from(nb_blocks);
        let len = n.checked_mul(self.block_size)?;
        if n == 0 || offset % self.block_size != 0 || offset.checked_add(len)? > self.region_size {
            return None;
        }
        Some((offset / self.block_size, n))
    }

    fn plugged_bytes(&self) -> u64 {
        self.blocks.count * self.block_size
    }

    /// Carries out one request.
    fn handle(&mut self, mem: &GuestMemoryMmap, kind: u16, addr: u64, nb_blocks: u16) -> Response {
        if kind == REQ_UNPLUG_ALL {
            for (first, n) in self.blocks.runs() {
                self.unplug(mem, first, n);
            }
            return Response::Ack;
        }
        let Some((first, n)) = self.blocks_of(addr, nb_blocks) else {
            self.bad_request.warn(format_args!(
                "virtio-mem: request {kind} for {nb_blocks} blocks at {addr:#x}: not whole blocks of the region"
            ));
            return Response::Error;
        };
        let state = self.blocks.state(first, n);
        match kind {
            REQ_STATE => Response::State(state),
            REQ_PLUG if state != State::Unplugged => Response::Error,
            REQ_PLUG => {
                let requested = self.shared.requested.load(Ordering::SeqCst);
                if self.plugged_bytes() + n * self.block_size > requested {
                    return Response::Nack;
                }
                let mut shown = Vec::new();
                for slot in self.blocks.slots_to_show(first, n) {
                    if let Err(e) = self.slots.set(slot, true) {
                        self.host_error
                            .warn(format_args!("virtio-mem: cannot map slot {slot}: {e}"));
                        for s in shown {
                            let _ = self.slots.set(s, false);
                        }
                        return Response::Error;
                    }
                    shown.push(slot);
                }
                self.blocks.set(first, n, true);
                self.publish();
                Response::Ack
            }
            REQ_UNPLUG if state != State::Plugged => Response::Error,
            REQ_UNPLUG => {
                self.unplug(mem, first, n);
                Response::Ack
            }
            _ => Response::Error,
        }
    }

    /// Unplugs `first..first + n` (all plugged): hides the slots left
    /// empty, then releases the blocks' memory on the host.
    fn unplug(&mut self, mem: &GuestMemoryMmap, first: u64, n: u64) {
        for slot in self.blocks.set(first, n, false) {
            if let Err(e) = self.slots.set(slot, false) {
                self.host_error
                    .warn(format_args!("virtio-mem: cannot unmap slot {slot}: {e}"));
            }
        }
        let gpa = GuestAddress(self.shared.addr + first * self.block_size);
        let len = (n * self.block_size) as usize;
        match mem.get_slice(gpa, len) {
            Ok(slice) => {
                // SAFETY: `slice` is `len` bytes of the region's private
                // anonymous mapping, which stays mapped; MADV_DONTNEED only
                // drops its pages, which read as zeros when next touched.
                let r = unsafe {
                    libc::madvise(
                        slice.ptr_guard_mut().as_ptr().cast(),
                        len,
                        libc::MADV_DONTNEED,
                    )
                };
                if r != 0 {
                    self.host_error.warn(format_args!(
                        "virtio-mem: cannot release unplugged memory: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
            Err(e) => self.host_error.warn(format_args!(
                "virtio-mem: unplugged blocks outside guest memory: {e}"
            )),
        }
        self.publish();
    }

    fn publish(&self) {
        self.shared
            .plugged
            .store(self.plugged_bytes(), Ordering::SeqCst);
    }

    fn process_queue(&mut self) {
        let Some((mem, mut queue)) = self.active.take() else {
            return;
        };
        let mut used = false;
        let mut budget = Budget::for_queue(&queue);
        while let Some(chain) = budget.next(&mut queue, &mem, &self.signals, &self.bad_request) {
            let head = chain.head_index();
            let mut req = [0u8; REQ_LEN];
            let mut have = 0usize;
            let mut resp_at = None;
            for d in chain {
                if d.is_write_only() {
                    if resp_at.is_none() && d.len() as usize >= RESP_LEN {
                        resp_at = Some(d.addr());
                    }
                } else if have < REQ_LEN {
                    let n = (d.len() as usize).min(REQ_LEN - have);
                    if mem.read_slice(&mut req[have..have + n], d.addr()).is_err() {
                        break;
                    }
                    have += n;
                }
            }
            let mut written = 0;
            match (have, resp_at) {
                (REQ_LEN, Some(at)) => {
                    let kind = u16::from_le_bytes([req[0], req[1]]);
                    let addr = u64::from_le_bytes(req[8..16].try_into().unwrap_or_default());
                    let nb_blocks = u16::from_le_bytes([req[16], req[17]]);
                    let resp = self.handle(&mem, kind, addr, nb_blocks);
                    if mem.write_slice(&resp.bytes(), at).is_ok() {
                        written = RESP_LEN as u32;
                    }
                }
                _ => self.bad_request.warn(format_args!(
                    "virtio-mem: a request without its {REQ_LEN} bytes or room for the answer"
                )),
            }
            if queue.add_used(&mem, head, written).is_err() {
                self.signals.set_needs_reset();
                break;
            }
            used = true;
        }
        if used && should_notify(&mut queue, &mem) {
            self.signals.signal_used_queue();
        }
        budget.resume(&self.queue_evt);
        self.active = Some((mem, queue));
    }

    fn config_bytes(&self) -> [u8; 56] {
        let s = &self.shared;
        let mut c = [0u8; 56];
        let fields = [
            (0, self.block_size),
            (16, s.addr),
            (24, self.region_size),
            // The whole region is usable from the start.
            (32, self.region_size),
            (40, s.plugged.load(Ordering::SeqCst)),
            (48, s.requested.load(Ordering::SeqCst)),
        ];
        for (at, v) in fields {
            c[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        c
    }
}

impl VirtioDevice for Mem {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1 | F_UNPLUGGED_INACCESSIBLE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        mut queues: Vec<Queue>,
    ) -> Result<(), String> {
        let queue = queues.pop().ok_or("virtio-mem needs its queue")?;
        self.active = Some((mem, queue));
        // Requests posted before DRIVER_OK: served from the event loop.
        self.queue_evt.write(1).map_err(|e| e.to_string())
    }

    /// The blocks stay as they are: a driver that finds memory plugged
    /// when it starts unplugs it all first (virtio-mem's rule), and a
    /// plugged block may hold a guest's data until it says otherwise.
    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Mem {
    fn init(&mut self, ops: &mut EventOps) {
        super::watch_queue(ops, "virtio-mem", &self.queue_evt, None);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != std::os::fd::AsRawFd::as_raw_fd(&self.queue_evt) {
            return;
        }
        let _ = self.queue_evt.read();
        if self.active.is_none() {
            self.early_notify
                .warn(format_args!("virtio-mem: queue notified while not running"));
            return;
        }
        self.process_queue();
    }
}

#[cfg(test)]
mod tests;
