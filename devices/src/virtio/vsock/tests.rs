use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{
    make_available, mem, ring_queue, used_entry, used_idx, write_desc,
};
use crate::virtio::VIRTIO_F_VERSION_1;

const GUEST_CID: u64 = 3;
/// Where receive buffers (header, then 4 KiB of data) and transmit
/// packets live in the test memory.
const RX_BUFS: u64 = 0x20_0000;
const TX_BUFS: u64 = 0x80_0000;
const RX_DATA: u32 = 4096;

/// A packet as the tests write and read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pkt {
    src_port: u32,
    dst_port: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
    src_cid: u64,
    dst_cid: u64,
}

impl Pkt {
    /// A packet from the guest's `port` to the host's `host_port`.
    fn from_guest(port: u32, host_port: u32, op: u16) -> Pkt {
        Pkt {
            src_port: port,
            dst_port: host_port,
            op,
            buf_alloc: 64 * 1024,
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            ..Pkt::default()
        }
    }

    fn header(&self, type_: u16) -> [u8; PKT_HEADER_SIZE] {
        let mut h = [0u8; PKT_HEADER_SIZE];
        h[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        h[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        h[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        h[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        h[24..28].copy_from_slice(&(self.data.len() as u32).to_le_bytes());
        h[28..30].copy_from_slice(&type_.to_le_bytes());
        h[30..32].copy_from_slice(&self.op.to_le_bytes());
        h[32..36].copy_from_slice(&self.flags.to_le_bytes());
        h[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        h[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        h
    }

    fn parse(h: &[u8], data: &[u8]) -> Pkt {
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        assert_eq!(u16::from_le_bytes([h[28], h[29]]), TYPE_STREAM);
        let len = u32_at(24) as usize;
        Pkt {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            op: u16::from_le_bytes([h[30], h[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
            data: data[..len].to_vec(),
        }
    }
}

struct Rig {
    _dir: tempdir::Dir,
    uds: PathBuf,
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Vsock>>,
    events: EventManager<Arc<Mutex<Vsock>>>,
    kicks: [EventFd; 3],
    rx_posted: u16,
    rx_seen: u16,
    tx_sent: u16,
}

/// A scratch directory removed on drop (the tests' unix sockets).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "strato-vsock-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Rig {
    fn new() -> Rig {
        let dir = tempdir::Dir::new();
        let uds = dir.0.join("v.sock");
        let kicks: [EventFd; 3] =
            std::array::from_fn(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let evts = kicks.each_ref().map(|k| k.try_clone().unwrap());
        let signals = Arc::new(DeviceSignals::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        let config = VsockConfig {
            guest_cid: GUEST_CID as u32,
            uds_path: uds.clone(),
        };
        let mut dev = Vsock::new(&config, evts, signals).unwrap();
        let mem = mem();
        let queues = (0..3).map(|q| ring_queue(q, 256)).collect();
        dev.activate(mem.clone(), VIRTIO_F_VERSION_1, queues)
            .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut events = EventManager::new().unwrap();
        events.add_subscriber(dev.clone());
        let mut rig = Rig {
            _dir: dir,
            uds,
            mem,
            dev,
            events,
            kicks,
            rx_posted: 0,
            rx_seen: 0,
            tx_sent: 0,
        };
        rig.post_rx(32);
        rig.run();
        rig
    }

    /// Runs the event loop until it is idle.
    fn run(&mut self) {
        while self.events.run_with_timeout(50).unwrap() > 0 {}
    }

    /// Posts `n` receive buffers.
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let i = self.rx_posted;
            let at = RX_BUFS + u64::from(i % 128) * 0x2000;
            let d = 2 * (i % 128);
            write_desc(&self.mem, 0, d, (at, PKT_HEADER_SIZE as u32, 3, d + 1));
            write_desc(&self.mem, 0, d + 1, (at + 0x100, RX_DATA, 2, 0));
            make_available(&self.mem, 0, &[d]);
            self.rx_posted += 1;
        }
        self.kicks[RX].write(1).unwrap();
    }

    /// Sends `p` from the guest.
    fn send(&mut self, p: &Pkt) {
        self.send_typed(p, TYPE_STREAM);
    }

    fn send_typed(&mut self, p: &Pkt, type_: u16) {
        self.queue_tx(p, type_);
        self.kicks[TX].write(1).unwrap();
        self.run();
    }

    /// Makes `p` available on the transmit queue without kicking it.
    fn queue_tx(&mut self, p: &Pkt, type_: u16) {
        let i = self.tx_sent;
        let at = TX_BUFS + u64::from(i % 32) * 0x2_0000;
        let d = 2 * (i % 128);
        self.mem
            .write_slice(&p.header(type_), GuestAddress(at))
            .unwrap();
        if p.data.is_empty() {
            write_desc(&self.mem, 1, d, (at, PKT_HEADER_SIZE as u32, 0, 0));
        } else {
            self.mem
                .write_slice(&p.data, GuestAddress(at + 0x100))
                .unwrap();
            write_desc(&self.mem, 1, d, (at, PKT_HEADER_SIZE as u32, 1, d + 1));
            write_desc(&self.mem, 1, d + 1, (at + 0x100, p.data.len() as u32, 0, 0));
        }
        make_available(&self.mem, 1, &[d]);
        self.tx_sent += 1;
    }

    /// The packets the device put in the receive queue since last asked.
    fn received(&mut self) -> Vec<Pkt> {
        self.run();
        let mut out = Vec::new();
        while self.rx_seen != used_idx(&self.mem, 0) {
            let (id, len) = used_entry(&self.mem, 0, self.rx_seen % 256);
            let at = RX_BUFS + u64::from(id / 2) * 0x2000;
            let mut h = [0u8; PKT_HEADER_SIZE];
            self.mem.read_slice(&mut h, GuestAddress(at)).unwrap();
            let mut data = vec![0u8; RX_DATA as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(at + 0x100))
                .unwrap();
            let p = Pkt::parse(&h, &data);
            assert_eq!(len as usize, PKT_HEADER_SIZE + p.data.len());
            assert_eq!((p.src_cid, p.dst_cid), (HOST_CID, GUEST_CID));
            out.push(p);
            self.rx_seen += 1;
        }
        out
    }

    fn connections(&self) -> usize {
        self.dev.lock().unwrap().connections()
    }
}

fn ops(pkts: &[Pkt]) -> Vec<u16> {
    pkts.iter().map(|p| p.op).collect()
}

#[test]
fn a_guest_connection_reaches_the_host_listener_and_carries_data_both_ways() {
    let mut r = Rig::new();
    let mut path = r.uds.clone().into_os_string();
    path.push("_5000");
    let listener = UnixListener::bind(&path).unwrap();
    r.send(&Pkt::from_guest(1234, 5000, OP_REQUEST));
    let got = r.received();
    assert_eq!(ops(&got), [OP_RESPONSE]);
    assert_eq!((got[0].src_port, got[0].dst_port), (5000, 1234));
    assert_eq!(got[0].buf_alloc, CONN_BUF);
    let (mut host, _) = listener.accept().unwrap();

    let mut rw = Pkt::from_guest(1234, 5000, OP_RW);
    rw.data = b"hello from the guest".to_vec();
    r.send(&rw);
    let mut got = [0u8; 20];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello from the guest");

    host.write_all(b"and back").unwrap();
    let got = r.received();
    assert_eq!(ops(&got), [OP_RW]);
    assert_eq!(got[0].data, b"and back");
    assert_eq!(got[0].fwd_cnt, 20, "the guest's 20 bytes were passed on");

    // The guest closes: the device answers with a reset and the host sees
    // the end.
    let mut bye = Pkt::from_guest(1234, 5000, OP_SHUTDOWN);
    bye.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    r.send(&bye);
    assert_eq!(ops(&r.received()), [OP_RST]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(r.connections(), 0);
}

#[test]
fn a_host_connect_line_becomes_a_request_and_the_answer_an_ok() {
    let mut r = Rig::new();
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let got = r.received();
    assert_eq!(ops(&got), [OP_REQUEST]);
    let local = got[0].src_port;
    assert_eq!(got[0].dst_port, 52);
    assert!(local >= LOCAL_PORT_BASE);
    r.send(&Pkt::from_guest(52, local, OP_RESPONSE));
    let mut line = [0u8; 64];
    let n = host.read(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line[..n]).unwrap(),
        format!("OK {local}\n")
    );
    // Host data reaches the guest, at most its credit at a time.
    host.write_all(&[9u8; 10_000]).unwrap();
    let got = r.received();
    let total: usize = got.iter().map(|p| p.data.len()).sum();
    assert_eq!(total, 10_000);
    assert!(got.iter().all(|p| p.op == OP_RW && p.dst_port == 52));

    // The host program shuts its sending side: the guest is told, and
    // can still send; its own shutdown then ends the connection.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let got = r.received();
    assert_eq!(ops(&got), [OP_SHUTDOWN]);
    assert_eq!(got[0].flags, SHUTDOWN_SEND);
    let mut rw = Pkt::from_guest(52, local, OP_RW);
    rw.data = b"last words".to_vec();
    r.send(&rw);
    let mut last = [0u8; 10];
    host.read_exact(&mut last).unwrap();
    assert_eq!(&last, b"last words");
    let mut bye = Pkt::from_guest(52, local, OP_SHUTDOWN);
    bye.flags = SHUTDOWN_SEND;
    r.send(&bye);
    assert_eq!(ops(&r.received()), [OP_RST]);
    assert_eq!(r.connections(), 0);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn host_data_waits_for_the_guest_s_credit() {
    let mut r = Rig::new();
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONNECT 7\n").unwrap();
    let local = r.received()[0].src_port;
    let mut resp = Pkt::from_guest(7, local, OP_RESPONSE);
    resp.buf_alloc = 1000;
    r.send(&resp);
    let mut ok = [0u8; 32];
    let _ = host.read(&mut ok).unwrap();
    host.write_all(&[1u8; 3000]).unwrap();
    let got = r.received();
    assert_eq!(got.iter().map(|p| p.data.len()).sum::<usize>(), 1000);
    // The guest reads 600 of them and says so.
    let mut credit = Pkt::from_guest(7, local, OP_CREDIT_UPDATE);
    credit.buf_alloc = 1000;
    credit.fwd_cnt = 600;
    r.send(&credit);
    let got = r.received();
    assert_eq!(got.iter().map(|p| p.data.len()).sum::<usize>(), 600);
}

#[test]
fn a_host_program_that_closes_is_reset_when_the_guest_writes() {
    let mut r = Rig::new();
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    let local = r.received()[0].src_port;
    r.send(&Pkt::from_guest(9, local, OP_RESPONSE));
    let mut ok = [0u8; 32];
    let _ = host.read(&mut ok).unwrap();
    drop(host);
    assert_eq!(ops(&r.received()), [OP_SHUTDOWN]);
    let mut rw = Pkt::from_guest(9, local, OP_RW);
    rw.data = vec![1u8; 100];
    r.send(&rw);
    assert_eq!(ops(&r.received()), [OP_RST]);
    assert_eq!(r.connections(), 0);
}

#[test]
fn a_host_program_that_closes_with_data_unread_is_reset() {
    let mut r = Rig::new();
    let host = UnixStream::connect(&r.uds).unwrap();
    (&host).write_all(b"CONNECT 9\n").unwrap();
    let local = r.received()[0].src_port;
    r.send(&Pkt::from_guest(9, local, OP_RESPONSE));
    // The OK line is never read: the close is a reset of the socket.
    drop(host);
    assert_eq!(ops(&r.received()), [OP_RST]);
    assert_eq!(r.connections(), 0);
}

#[test]
fn refused_and_foreign_packets_are_reset() {
    let mut r = Rig::new();
    // Nobody listens on the host port.
    r.send(&Pkt::from_guest(1, 9999, OP_REQUEST));
    // Data for no connection.
    r.send(&Pkt::from_guest(2, 9999, OP_RW));
    // Another CID than the guest's, and a datagram.
    let mut spoofed = Pkt::from_guest(3, 9999, OP_REQUEST);
    spoofed.src_cid = 77;
    r.send(&spoofed);
    r.send_typed(&Pkt::from_guest(4, 9999, OP_REQUEST), 2);
    // A reset for nothing is not answered.
    r.send(&Pkt::from_guest(5, 9999, OP_RST));
    let got = r.received();
    assert_eq!(ops(&got), [OP_RST; 4]);
    assert_eq!(
        got.iter().map(|p| p.dst_port).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(r.connections(), 0);
}

#[test]
fn a_guest_that_overruns_its_credit_is_reset() {
    let mut r = Rig::new();
    let mut path = r.uds.clone().into_os_string();
    path.push("_80");
    let listener = UnixListener::bind(&path).unwrap();
    r.send(&Pkt::from_guest(10, 80, OP_REQUEST));
    assert_eq!(ops(&r.received()), [OP_RESPONSE]);
    // The host program never reads: the socket fills, then the device's
    // buffer, then the guest is over its credit.
    let (_host, _) = listener.accept().unwrap();
    let mut rw = Pkt::from_guest(10, 80, OP_RW);
    rw.data = vec![5u8; 64 * 1024];
    let mut reset = false;
    for _ in 0..200 {
        r.send(&rw);
        let got = r.received();
        if got.iter().any(|p| p.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "the overrun was never reset");
    assert_eq!(r.connections(), 0);
}

#[test]
fn bad_connect_lines_are_closed_and_good_ones_still_work() {
    let mut r = Rig::new();
    let mut bad = UnixStream::connect(&r.uds).unwrap();
    bad.write_all(b"HELLO 1\n").unwrap();
    let mut long = UnixStream::connect(&r.uds).unwrap();
    long.write_all(&[b'7'; 100]).unwrap();
    r.run();
    // Closed: the end, or a reset where the device left bytes unread.
    let closed = |s: &mut UnixStream| {
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    };
    assert!(closed(&mut bad));
    assert!(closed(&mut long));
    assert!(r.received().is_empty());
    let mut good = UnixStream::connect(&r.uds).unwrap();
    good.write_all(b"CONNECT 1\n").unwrap();
    assert_eq!(ops(&r.received()), [OP_REQUEST]);
}

#[test]
fn resets_owed_to_a_guest_without_receive_buffers_are_bounded() {
    let mut r = Rig::new();
    // Use up the posted receive buffers, then send to nobody's ports.
    for port in 0..32 {
        r.send(&Pkt::from_guest(port, 9999, OP_REQUEST));
    }
    assert_eq!(r.received().len(), 32);
    // In batches of 100 (the transmit ring holds 128 chains of two).
    for batch in 0..(MAX_RESETS as u32 / 100 + 1) {
        for port in batch * 100..(batch + 1) * 100 {
            r.queue_tx(&Pkt::from_guest(port, 9999, OP_CREDIT_UPDATE), TYPE_STREAM);
        }
        r.kicks[TX].write(1).unwrap();
        r.run();
    }
    assert_eq!(r.dev.lock().unwrap().resets.len(), MAX_RESETS);
    r.post_rx(16);
    assert_eq!(r.received().len(), 16);
}

#[test]
fn the_guest_cid_must_not_be_reserved() {
    let c = VsockConfig {
        guest_cid: 2,
        uds_path: "/nonexistent".into(),
    };
    assert!(matches!(c.validate(), Err(Error::Cid(2))));
}

#[test]
fn connect_lines_parse() {
    assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
    assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
    assert_eq!(parse_connect(b"CONNECT -1"), None);
    assert_eq!(parse_connect(b"connect 52"), None);
    assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
}
