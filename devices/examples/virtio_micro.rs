//! Device micro-benchmark: what strato's virtio-block and virtio-net
//! devices cost per request or frame on the host, with no VM at all.
//!
//!     cargo run --release -p devices --example virtio_micro [-- --quick]
//!
//! Guest memory is an anonymous mapping built with vm-memory; the rings
//! and buffers a driver would write are written directly into it. Each
//! figure is the median over several rounds of the time per request or
//! frame, printed as a Markdown table next to a baseline: the bare system
//! call the device makes for it (pread/pwrite of the same bytes into the
//! same guest memory, write/read of the same frame on the same kind of
//! socket). "device − baseline" is then the device's own overhead.
//!
//! - block, `execute()`: one request from a ready descriptor list
//!   (header, one data buffer, status) against a 64 MiB image file whose
//!   pages are in the page cache.
//! - block, queue: the same requests made available on a 256-entry split
//!   queue, then the queue eventfd written (what KVM's ioeventfd does on a
//!   QueueNotify) and the event loop run until the used ring has them all:
//!   epoll wake-up, chain parsing, I/O, used ring, interrupt eventfd.
//! - net TX: frames (12-byte virtio-net header + frame, one descriptor
//!   each) made available on the transmit queue, eventfd, event loop until
//!   used; the "tap" is one end of a SOCK_SEQPACKET socketpair
//!   (`Tap::from_fd`), drained outside the timed part.
//! - net RX: frames written into the socketpair outside the timed part,
//!   2 KiB buffers already posted; timed from running the event loop until
//!   the used ring has every frame.
//!
//! The last column counts interrupt eventfd writes (irqfd signals, each a
//! system call and, under KVM, an interrupt injection) per request/frame.
//! The rows marked NO_INTERRUPT repeat a case with the driver asking for no
//! used-buffer interrupts (VRING_AVAIL_F_NO_INTERRUPT), as a polling
//! driver does.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::virtio::block::{execute, Block, BlockConfig, BlockMetrics, Outcome};
use devices::virtio::net::{Net, Tap};
use devices::virtio::{DeviceSignals, VirtioDevice};
use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const NEXT: u16 = 1; // VRING_DESC_F_NEXT
const WRITE: u16 = 2; // VRING_DESC_F_WRITE
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VNET_HDR_LEN: usize = 12;

const MEM_SIZE: usize = 160 << 20;
const QSIZE: u16 = 256;
/// Rings of queue q: descriptors at RINGS + q * 0x4000, avail +0x1000,
/// used +0x2000.
const RINGS: u64 = 0x10_0000;
/// Request headers (32 bytes apart; status byte at +16).
const HDRS: u64 = 0x20_0000;
/// Data buffers: 1 MiB apart for block, 2 KiB apart for net.
const DATA: u64 = 0x100_0000;
/// Receive buffers, 2 KiB apart.
const RX_BUFS: u64 = 0x800_0000;
const IMAGE_BYTES: u64 = 64 << 20;

fn desc_addr(q: u64) -> u64 {
    RINGS + q * 0x4000
}
fn avail_addr(q: u64) -> u64 {
    desc_addr(q) + 0x1000
}
fn used_addr(q: u64) -> u64 {
    desc_addr(q) + 0x2000
}

/// A split queue of QSIZE entries over the fixed ring addresses.
fn ring_queue(q: u64) -> Queue {
    let mut queue = Queue::new(QSIZE).expect("queue");
    queue.set_size(QSIZE);
    queue.set_desc_table_address(Some(desc_addr(q) as u32), Some(0));
    queue.set_avail_ring_address(Some(avail_addr(q) as u32), Some(0));
    queue.set_used_ring_address(Some(used_addr(q) as u32), Some(0));
    queue.set_ready(true);
    queue
}

fn write_desc(mem: &GuestMemoryMmap, q: u64, i: u16, d: (u64, u32, u16, u16)) {
    let at = desc_addr(q) + 16 * u64::from(i);
    mem.write_obj(d.0, GuestAddress(at)).unwrap();
    mem.write_obj(d.1, GuestAddress(at + 8)).unwrap();
    mem.write_obj(d.2, GuestAddress(at + 12)).unwrap();
    mem.write_obj(d.3, GuestAddress(at + 14)).unwrap();
}

/// The driver's side of one queue: publishes heads, reads the used idx.
struct Driver {
    q: u64,
    avail_idx: u16,
}

impl Driver {
    fn new(q: u64) -> Driver {
        Driver { q, avail_idx: 0 }
    }
    fn publish(&mut self, mem: &GuestMemoryMmap, heads: impl Iterator<Item = u16>) {
        for h in heads {
            let slot = u64::from(self.avail_idx % QSIZE);
            mem.write_obj(h, GuestAddress(avail_addr(self.q) + 4 + 2 * slot))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        mem.write_obj(self.avail_idx, GuestAddress(avail_addr(self.q) + 2))
            .unwrap();
    }
    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(used_addr(self.q) + 2)).unwrap()
    }
}

/// Median of per-round nanoseconds per operation.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    what: String,
    device_ns: f64,
    base_ns: f64,
    irqs: f64,
}

fn irq_count(irq: &EventFd) -> u64 {
    irq.read().unwrap_or(0)
}

fn nonblocking_eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

// ------------------------------------------------------------------ block

/// A scratch image of IMAGE_BYTES, unlinked at once, its pages cached.
fn image() -> (File, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("strato-micro-{}.img", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("scratch image");
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for _ in 0..IMAGE_BYTES >> 20 {
        f.write_all(&chunk).unwrap();
    }
    // Warm the page cache (it is, having just been written; read anyway).
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut sink = vec![0u8; 1 << 20];
    while f.read(&mut sink).unwrap() > 0 {}
    (f, path)
}

fn header(mem: &GuestMemoryMmap, slot: u64, kind: u32, sector: u64) {
    let at = HDRS + 32 * slot;
    mem.write_obj(kind, GuestAddress(at)).unwrap();
    mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(at + 16)).unwrap();
}

/// Sector of the n-th request of `len` bytes, cycling through the image.
fn sector_of(n: u64, len: u64) -> u64 {
    (n * len) % (IMAGE_BYTES - len + 1) / 512 / (len / 512) * (len / 512)
}

fn host_ptr(mem: &GuestMemoryMmap, addr: u64, len: usize) -> *mut u8 {
    mem.get_slice(GuestAddress(addr), len)
        .expect("in guest memory")
        .ptr_guard_mut()
        .as_ptr()
}

/// pread/pwrite of `len` bytes straight into guest memory: the baseline.
fn raw_io(mem: &GuestMemoryMmap, fd: RawFd, write: bool, len: usize, n: u64) {
    let p = host_ptr(mem, DATA, len);
    for i in 0..n {
        let off = (sector_of(i, len as u64) * 512) as libc::off64_t;
        // SAFETY: `p..p + len` is guest memory that stays mapped while
        // `mem` lives; the kernel reads or writes at most len bytes there.
        let r = unsafe {
            if write {
                libc::pwrite64(fd, p.cast(), len, off)
            } else {
                libc::pread64(fd, p.cast(), len, off)
            }
        };
        assert_eq!(r, len as isize, "raw I/O");
    }
}

fn bench_execute(
    mem: &GuestMemoryMmap,
    file: &File,
    write: bool,
    len: u32,
    rounds: usize,
    per: u64,
) -> Row {
    let kind = if write {
        VIRTIO_BLK_T_OUT
    } else {
        VIRTIO_BLK_T_IN
    };
    let flags = if write { NEXT } else { NEXT | WRITE };
    let descs = [
        Descriptor::new(HDRS, 16, NEXT, 1),
        Descriptor::new(DATA, len, flags, 2),
        Descriptor::new(HDRS + 16, 1, WRITE, 0),
    ];
    let cap = IMAGE_BYTES / 512;
    let mut dev = Vec::new();
    let mut base = Vec::new();
    let mut n = 0u64;
    let stats = BlockMetrics::default();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per {
            header(mem, 0, kind, sector_of(n, u64::from(len)));
            n += 1;
            let out = execute(mem, file, false, cap, b"micro", &descs, &stats);
            assert_eq!(
                out,
                Outcome::Done {
                    used_len: if write { 1 } else { len + 1 }
                }
            );
        }
        dev.push(t.elapsed().as_nanos() as f64 / per as f64);
        let t = Instant::now();
        raw_io(mem, file.as_raw_fd(), write, len as usize, per);
        base.push(t.elapsed().as_nanos() as f64 / per as f64);
    }
    Row {
        what: format!(
            "block {} {}, execute()",
            if write { "write" } else { "read" },
            size_name(len as usize)
        ),
        device_ns: median(dev),
        base_ns: median(base),
        irqs: 0.0,
    }
}

struct BlockRig {
    blk: Arc<Mutex<Block>>,
    em: EventManager<Arc<Mutex<Block>>>,
    evt: EventFd,
    irq: EventFd,
    drv: Driver,
}

fn block_rig(mem: &GuestMemoryMmap, path: &std::path::Path) -> BlockRig {
    clear_rings(mem);
    let evt = nonblocking_eventfd();
    let irq = nonblocking_eventfd();
    let signals = Arc::new(DeviceSignals::new(irq.try_clone().unwrap()));
    let cfg = BlockConfig {
        path: path.to_path_buf(),
        read_only: false,
        serial: None,
        rate_limiter: Default::default(),
    };
    let blk = Block::new(&cfg, evt.try_clone().unwrap(), signals).expect("block device");
    let blk = Arc::new(Mutex::new(blk));
    let mut em = EventManager::new().expect("event manager");
    em.add_subscriber(blk.clone());
    blk.lock()
        .unwrap()
        .activate(mem.clone(), 0, vec![ring_queue(0)])
        .expect("activate");
    BlockRig {
        blk,
        em,
        evt,
        irq,
        drv: Driver::new(0),
    }
}

/// Requests through the queue, `batch` made available per notify.
#[allow(clippy::too_many_arguments)]
fn bench_block_queue(
    mem: &GuestMemoryMmap,
    rig: &mut BlockRig,
    fd: RawFd,
    write: bool,
    len: u32,
    batch: u16,
    rounds: usize,
    per: u64,
) -> Row {
    let kind = if write {
        VIRTIO_BLK_T_OUT
    } else {
        VIRTIO_BLK_T_IN
    };
    let flags = if write { NEXT } else { NEXT | WRITE };
    // Request s: descriptors 3s..3s+2, header slot s, data buffer s
    // (1 MiB apart; at most 16 buffers of 1 MiB fit below MEM_SIZE).
    let stride = if len > 64 << 10 { 1u64 << 20 } else { 64 << 10 };
    for s in 0..batch {
        let s64 = u64::from(s);
        let i = 3 * s;
        write_desc(mem, 0, i, (HDRS + 32 * s64, 16, NEXT, i + 1));
        write_desc(mem, 0, i + 1, (DATA + stride * s64, len, flags, i + 2));
        write_desc(mem, 0, i + 2, (HDRS + 32 * s64 + 16, 1, WRITE, 0));
    }
    let mut dev = Vec::new();
    let mut base = Vec::new();
    let mut irqs = 0u64;
    let mut n = 0u64;
    let batches = per.div_ceil(u64::from(batch));
    irq_count(&rig.irq);
    for _ in 0..rounds {
        let mut ns = 0u128;
        for _ in 0..batches {
            for s in 0..batch {
                header(mem, u64::from(s), kind, sector_of(n, u64::from(len)));
                n += 1;
            }
            rig.drv.publish(mem, (0..batch).map(|s| 3 * s));
            let target = rig.drv.avail_idx;
            let t = Instant::now();
            rig.evt.write(1).unwrap();
            while rig.drv.used_idx(mem) != target {
                rig.em.run().unwrap();
            }
            ns += t.elapsed().as_nanos();
        }
        irqs += irq_count(&rig.irq);
        let reqs = (batches * u64::from(batch)) as f64;
        dev.push(ns as f64 / reqs);
        let t = Instant::now();
        raw_io(mem, fd, write, len as usize, per);
        base.push(t.elapsed().as_nanos() as f64 / per as f64);
    }
    assert_eq!(mem.read_obj::<u8>(GuestAddress(HDRS + 16)).unwrap(), 0);
    let _ = &rig.blk;
    Row {
        what: format!(
            "block {} {}, queue, {} per notify",
            if write { "write" } else { "read" },
            size_name(len as usize),
            batch
        ),
        device_ns: median(dev),
        base_ns: median(base),
        irqs: irqs as f64 / (rounds as u64 * batches * u64::from(batch)) as f64,
    }
}

// -------------------------------------------------------------------- net

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds we then own.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair");
    for fd in fds {
        // Room for a whole batch of big frames in flight (root may exceed
        // wmem_max with the FORCE variant; fall back quietly).
        let size: libc::c_int = 4 << 20;
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
            // SAFETY: setsockopt reads one int.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
    // SAFETY: fresh fds from socketpair.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn sock_write(fd: RawFd, buf: &[u8]) {
    // SAFETY: writes buf.len() bytes from buf.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    assert_eq!(n, buf.len() as isize, "socket write");
}

/// Reads frames until none is left; returns how many.
fn sock_drain(fd: RawFd, buf: &mut [u8]) -> u64 {
    let mut n = 0;
    // SAFETY: reads at most buf.len() bytes into buf.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } >= 0 {
        n += 1;
    }
    n
}

struct NetRig {
    em: EventManager<Arc<Mutex<Net>>>,
    peer: OwnedFd,
    evts: [EventFd; 2],
    irq: EventFd,
    rx: Driver,
    tx: Driver,
    _net: Arc<Mutex<Net>>,
}

fn net_rig(mem: &GuestMemoryMmap) -> NetRig {
    clear_rings(mem);
    let (ours, peer) = seqpacket_pair();
    let evts = [nonblocking_eventfd(), nonblocking_eventfd()];
    let irq = nonblocking_eventfd();
    let signals = Arc::new(DeviceSignals::new(irq.try_clone().unwrap()));
    let net = Net::with_tap(
        Tap::from_fd(ours, "micro0"),
        [6, 0, 0, 0, 0, 1],
        [evts[0].try_clone().unwrap(), evts[1].try_clone().unwrap()],
        signals,
    );
    let net = Arc::new(Mutex::new(net));
    let mut em = EventManager::new().expect("event manager");
    em.add_subscriber(net.clone());
    net.lock()
        .unwrap()
        .activate(mem.clone(), 0, vec![ring_queue(0), ring_queue(1)])
        .expect("activate");
    NetRig {
        em,
        peer,
        evts,
        irq,
        rx: Driver::new(0),
        tx: Driver::new(1),
        _net: net,
    }
}

fn frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + size];
    f[VNET_HDR_LEN..VNET_HDR_LEN + 6].fill(0xff);
    f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&[6, 0, 0, 0, 0, 1]);
    f[VNET_HDR_LEN + 12] = 0x88;
    f[VNET_HDR_LEN + 13] = 0xb5;
    f
}

const NET_BATCH: u16 = 64;

fn bench_net_tx(mem: &GuestMemoryMmap, rig: &mut NetRig, size: usize, rounds: usize) -> Row {
    let f = frame(size);
    for i in 0..NET_BATCH {
        let addr = DATA + 2048 * u64::from(i);
        mem.write_slice(&f, GuestAddress(addr)).unwrap();
        write_desc(mem, 1, i, (addr, f.len() as u32, 0, 0));
    }
    let (a, b) = seqpacket_pair();
    let mut sink = vec![0u8; 70000];
    let batches = 64u64;
    let mut dev = Vec::new();
    let mut base = Vec::new();
    let mut irqs = 0u64;
    irq_count(&rig.irq);
    for _ in 0..rounds {
        let mut ns = 0u128;
        let mut base_ns = 0u128;
        for _ in 0..batches {
            rig.tx.publish(mem, 0..NET_BATCH);
            let target = rig.tx.avail_idx;
            let t = Instant::now();
            rig.evts[1].write(1).unwrap();
            while rig.tx.used_idx(mem) != target {
                rig.em.run().unwrap();
            }
            ns += t.elapsed().as_nanos();
            let got = sock_drain(rig.peer.as_raw_fd(), &mut sink);
            assert_eq!(got, u64::from(NET_BATCH), "frames lost on TX");

            let t = Instant::now();
            for _ in 0..NET_BATCH {
                sock_write(a.as_raw_fd(), &f);
            }
            base_ns += t.elapsed().as_nanos();
            sock_drain(b.as_raw_fd(), &mut sink);
        }
        irqs += irq_count(&rig.irq);
        let frames = (batches * u64::from(NET_BATCH)) as f64;
        dev.push(ns as f64 / frames);
        base.push(base_ns as f64 / frames);
    }
    Row {
        what: format!("net TX {size}-byte frames, {NET_BATCH} per notify"),
        device_ns: median(dev),
        base_ns: median(base),
        irqs: irqs as f64 / (rounds as u64 * batches * u64::from(NET_BATCH)) as f64,
    }
}

fn bench_net_rx(mem: &GuestMemoryMmap, rig: &mut NetRig, size: usize, rounds: usize) -> Row {
    let f = frame(size);
    for i in 0..QSIZE {
        write_desc(mem, 0, i, (RX_BUFS + 2048 * u64::from(i), 2048, WRITE, 0));
    }
    let (a, b) = seqpacket_pair();
    let mut sink = vec![0u8; 70000];
    let batches = 64u64;
    let mut dev = Vec::new();
    let mut base = Vec::new();
    let mut irqs = 0u64;
    let mut next = 0u16;
    irq_count(&rig.irq);
    for _ in 0..rounds {
        let mut ns = 0u128;
        let mut base_ns = 0u128;
        for _ in 0..batches {
            // Buffers first (and the device told), then the frames.
            let heads: Vec<u16> = (0..NET_BATCH).map(|k| (next + k) % QSIZE).collect();
            next = (next + NET_BATCH) % QSIZE;
            rig.rx.publish(mem, heads.into_iter());
            rig.evts[0].write(1).unwrap();
            rig.em.run().unwrap();
            let target = rig.rx.avail_idx;
            for _ in 0..NET_BATCH {
                sock_write(rig.peer.as_raw_fd(), &f);
            }
            let t = Instant::now();
            while rig.rx.used_idx(mem) != target {
                rig.em.run().unwrap();
            }
            ns += t.elapsed().as_nanos();

            for _ in 0..NET_BATCH {
                sock_write(a.as_raw_fd(), &f);
            }
            let t = Instant::now();
            let got = sock_drain(b.as_raw_fd(), &mut sink);
            base_ns += t.elapsed().as_nanos();
            assert_eq!(got, u64::from(NET_BATCH));
        }
        irqs += irq_count(&rig.irq);
        let frames = (batches * u64::from(NET_BATCH)) as f64;
        dev.push(ns as f64 / frames);
        base.push(base_ns as f64 / frames);
    }
    let got: u32 = mem
        .read_obj(GuestAddress(
            used_addr(0) + 4 + 8 * u64::from((next + QSIZE - 1) % QSIZE) + 4,
        ))
        .unwrap();
    assert_eq!(got as usize, f.len(), "RX used length");
    Row {
        what: format!("net RX {size}-byte frames, {NET_BATCH} buffers posted per batch"),
        device_ns: median(dev),
        base_ns: median(base),
        irqs: irqs as f64 / (rounds as u64 * batches * u64::from(NET_BATCH)) as f64,
    }
}

// ------------------------------------------------------------------- main

const NO_INTERRUPT: &str = ", driver set VRING_AVAIL_F_NO_INTERRUPT";

/// Sets or clears VRING_AVAIL_F_NO_INTERRUPT on the avail rings of `queues`.
fn set_no_interrupt(mem: &GuestMemoryMmap, queues: &[u64], on: bool) {
    for &q in queues {
        mem.write_obj(u16::from(on), GuestAddress(avail_addr(q)))
            .unwrap();
    }
}

/// Zeroes the rings of queues 0 and 1 (a new device after an old one).
fn clear_rings(mem: &GuestMemoryMmap) {
    mem.write_slice(&[0u8; 0x8000], GuestAddress(RINGS))
        .unwrap();
}

fn size_name(len: usize) -> String {
    if len >= 1 << 20 {
        format!("{} MiB", len >> 20)
    } else {
        format!("{} KiB", len >> 10)
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 100_000.0 {
        format!("{:.0} µs", ns / 1000.0)
    } else if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 9 };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    // Touch all of guest memory once so page faults are not measured.
    for off in (0..MEM_SIZE as u64).step_by(4096) {
        mem.write_obj(0u8, GuestAddress(off)).unwrap();
    }
    assert_eq!(mem.num_regions(), 1);

    let (file, path) = image();
    let fd = file.as_raw_fd();
    let mut rows = Vec::new();
    let small = if quick { 2000 } else { 8000 };
    let big = if quick { 30 } else { 100 };
    for write in [false, true] {
        rows.push(bench_execute(&mem, &file, write, 4096, rounds, small));
        rows.push(bench_execute(&mem, &file, write, 1 << 20, rounds, big));
    }
    {
        let mut rig = block_rig(&mem, &path);
        rows.push(bench_block_queue(
            &mem, &mut rig, fd, false, 4096, 1, rounds, small,
        ));
        rows.push(bench_block_queue(
            &mem, &mut rig, fd, false, 4096, 64, rounds, small,
        ));
        rows.push(bench_block_queue(
            &mem,
            &mut rig,
            fd,
            false,
            1 << 20,
            1,
            rounds,
            big,
        ));
        rows.push(bench_block_queue(
            &mem, &mut rig, fd, true, 4096, 1, rounds, small,
        ));
        // A polling driver that asks for no interrupts.
        set_no_interrupt(&mem, &[0], true);
        let mut row = bench_block_queue(&mem, &mut rig, fd, false, 4096, 1, rounds, small);
        row.what += NO_INTERRUPT;
        rows.push(row);
        set_no_interrupt(&mem, &[0], false);
    }
    let _ = std::fs::remove_file(&path);

    let mut rig = net_rig(&mem);
    for size in [60, 1514] {
        rows.push(bench_net_tx(&mem, &mut rig, size, rounds));
    }
    for size in [60, 1514] {
        rows.push(bench_net_rx(&mem, &mut rig, size, rounds));
    }
    set_no_interrupt(&mem, &[0, 1], true);
    let mut row = bench_net_tx(&mem, &mut rig, 60, rounds);
    row.what += NO_INTERRUPT;
    rows.push(row);
    let mut row = bench_net_rx(&mem, &mut rig, 60, rounds);
    row.what += NO_INTERRUPT;
    rows.push(row);

    println!("virtio_micro: strato device costs on the host, no VM (median of {rounds} rounds)");
    println!();
    println!("| operation | device | baseline | device − baseline | irq signals |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what,
            fmt_ns(r.device_ns),
            fmt_ns(r.base_ns),
            fmt_ns(r.device_ns - r.base_ns),
            if r.what.contains("execute()") {
                "–".to_string()
            } else {
                format!("{:.2}", r.irqs)
            }
        );
    }
    println!();
    println!(
        "baseline: pread/pwrite of the same bytes into the same guest memory (block); \
         write() or read() of the same frame on a SOCK_SEQPACKET socketpair (net). \
         irq signals: interrupt eventfd writes per request/frame."
    );
}
