//! What the fuzz targets share: reading structured values out of the
//! fuzzer's bytes, a small guest memory the bytes are written into, queues
//! over fixed ring addresses, and files backed by memory so that device and
//! loader code that wants a path gets one without touching the disk.
//!
//! The input formats are documented on each target and produced for the
//! seed corpus by `seeds.py`.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::virtio::DeviceSignals;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Reads little-endian values from the front of the fuzzer's bytes; past
/// the end every read gives zeros, so any input decodes.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// Wraps `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let got = self.bytes(2);
        b[..got.len()].copy_from_slice(got);
        u16::from_le_bytes(b)
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let got = self.bytes(4);
        b[..got.len()].copy_from_slice(got);
        u32::from_le_bytes(b)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.0.len())
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Size of the first RAM region; a second page of RAM follows a one-page
/// hole, so that buffers crossing into the hole or between regions occur.
pub const LOW_RAM: u64 = 0x1_0000;
/// Start of the second RAM region (one page).
pub const HIGH_RAM: u64 = LOW_RAM + 0x1000;

/// A fresh guest memory with `image` written at address 0 (as much of it
/// as fits in the first region).
pub fn guest_memory(image: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), LOW_RAM as usize),
        (GuestAddress(HIGH_RAM), 0x1000),
    ])
    .expect("guest memory");
    let len = image.len().min(LOW_RAM as usize);
    mem.write_slice(&image[..len], GuestAddress(0))
        .expect("image fits the first region");
    mem
}

/// Where queue `q`'s rings live: descriptor table at `q * 0x400`, the
/// available ring 0x100 and the used ring 0x200 above it, room for 16
/// entries each. Buffers go anywhere, rings included.
pub fn ring_addrs(q: u16) -> (u64, u64, u64) {
    let base = u64::from(q) * 0x400;
    (base, base + 0x100, base + 0x200)
}

/// A ready queue `q` of 1 to 16 entries (`size_bits` picks the power of
/// two) over [`ring_addrs`], as a driver would have set it up.
pub fn ring_queue(q: u16, size_bits: u8) -> Queue {
    let (desc, avail, used) = ring_addrs(q);
    let mut queue = Queue::new(256).expect("queue");
    queue.set_size(1 << (size_bits % 5));
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_ready(true);
    queue
}

/// Makes `more` further entries of queue `q` available, as a driver's
/// kick after posting buffers does (the ring entries are whatever the
/// image holds).
pub fn post(mem: &GuestMemoryMmap, q: u16, more: u8) {
    let at = GuestAddress(ring_addrs(q).1 + 2);
    let idx: u16 = mem.read_obj(at).expect("avail ring in memory");
    mem.write_obj(idx.wrapping_add(u16::from(more)), at)
        .expect("avail ring in memory");
}

/// A non-blocking eventfd.
pub fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

/// Interrupt signals over a fresh eventfd.
pub fn signals() -> Arc<DeviceSignals> {
    Arc::new(DeviceSignals::new(eventfd()))
}

/// An event loop with `device` subscribed, as the VMM runs its devices.
pub fn event_loop<S: MutEventSubscriber>(device: Arc<Mutex<S>>) -> EventManager<Arc<Mutex<S>>> {
    let mut em = EventManager::new().expect("epoll");
    em.add_subscriber(device);
    em
}

/// Dispatches what is ready, a bounded number of rounds (level-triggered
/// sources could otherwise keep it going).
pub fn run_ready<T: MutEventSubscriber>(em: &mut EventManager<T>) {
    for _ in 0..8 {
        if em.run_with_timeout(0).expect("epoll_wait") == 0 {
            break;
        }
    }
}

/// Kicks of a device with two queues, each after the driver posted more:
/// per byte of `kicks`, bit 7 picks the queue and bits 0-6 how many more
/// entries become available; the event loop runs after each.
pub fn kick_queues<T: MutEventSubscriber>(
    mem: &GuestMemoryMmap,
    kicks: &[u8],
    notify: &[EventFd; 2],
    em: &mut EventManager<T>,
) {
    for &kick in kicks {
        let q = kick >> 7;
        post(mem, u16::from(q), kick & 0x7f);
        notify[usize::from(q)].write(1).expect("kick");
        run_ready(em);
    }
}

/// Two queue ioeventfds and, for the harness, a second handle on each.
pub fn queue_eventfds() -> ([EventFd; 2], [EventFd; 2]) {
    let evts = [eventfd(), eventfd()];
    let kicks = [
        evts[0].try_clone().expect("eventfd"),
        evts[1].try_clone().expect("eventfd"),
    ];
    (evts, kicks)
}

/// A regular file that lives in memory, with a path (`/proc/self/fd/N`)
/// for code that opens files by name.
pub struct MemFile {
    file: File,
}

impl MemFile {
    /// An empty file.
    pub fn new(name: &str) -> Self {
        let name = std::ffi::CString::new(name).expect("no NUL in the name");
        // SAFETY: memfd_create reads the NUL-terminated name and returns a
        // new descriptor or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        MemFile { file }
    }

    /// Replaces the contents with `data`.
    pub fn set(&mut self, data: &[u8]) {
        self.file.set_len(0).expect("truncate");
        self.file.rewind().expect("rewind");
        self.file.write_all(data).expect("write");
    }

    /// A path that opens this file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// A connected pair of non-blocking datagram sockets: one end stands in
/// for a tap (each write is one frame), the other is the host.
pub fn packet_pair() -> (OwnedFd, OwnedFd) {
    let (ours, host) = UnixDatagram::pair().expect("socketpair");
    for s in [&ours, &host] {
        s.set_nonblocking(true).expect("non-blocking");
    }
    (ours.into(), host.into())
}
