//! MMDS's network side: the frames a guest sends to the metadata address
//! are taken off its NIC's transmit path and answered by a TCP/IP stack
//! (smoltcp) inside the VMM, whose own frames go to the guest's receive
//! queue. Nothing reaches the host's network.
//!
//! Bounds against a hostile guest: 30 connections (Firecracker's), a
//! request of at most 8 KiB, one request answered at a time per
//! connection, 10 s without progress ends a connection, and at most 256
//! frames wait for the guest's receive buffers.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
use vmm_sys_util::timerfd::TimerFd;

use super::store::{GuestRequest, Mmds};

/// The metadata service's MAC address on the guest's link (Firecracker's).
const MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
const PORT: u16 = 80;
const CONNECTIONS: usize = 30;
const SOCKET_RX: usize = 4096;
const SOCKET_TX: usize = 16384;
/// The most one request (head and body) may hold.
const MAX_REQUEST: usize = 8192;
const MAX_HEADERS: usize = 32;
/// A connection that neither sends nor takes anything for this long ends.
const IDLE: Duration = Duration::from_secs(10);
/// Frames for the guest held while it posts no receive buffers.
const MAX_QUEUED: usize = 256;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

/// What a NIC needs to serve MMDS: the store and the address to answer on.
#[derive(Clone, Debug)]
pub struct MmdsNet {
    /// The store, shared with the API.
    pub store: Arc<Mutex<Mmds>>,
    /// The guest reaches the service here (a link-local address).
    pub ipv4: Ipv4Addr,
}

impl PartialEq for MmdsNet {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.store, &other.store) && self.ipv4 == other.ipv4
    }
}

impl Eq for MmdsNet {}

/// The virtual wire between the NIC and smoltcp: one frame in at a time,
/// the stack's frames out.
struct Wire {
    inbound: Option<Vec<u8>>,
    outbound: VecDeque<Vec<u8>>,
}

/// A frame received (also the test's guest stack's token).
pub(super) struct Rx(pub(super) Vec<u8>);
/// Room for a frame to send: appended to the queue.
pub(super) struct Tx<'a>(pub(super) &'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.inbound.take()?;
        Some((Rx(frame), Tx(&mut self.outbound)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        (self.outbound.len() < MAX_QUEUED).then_some(Tx(&mut self.outbound))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        // The guest's frames come over a memory copy, not a cable, and with
        // checksum offload they carry partial checksums: not checked.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps.checksum.icmpv4 = Checksum::Tx;
        caps
    }
}

/// One of the service's TCP connections and the request it is on.
struct Conn {
    handle: SocketHandle,
    request: Vec<u8>,
    response: Vec<u8>,
    sent: usize,
    close_after: bool,
    /// When the connection last made progress (None while listening).
    active: Option<Instant>,
}

impl Conn {
    fn clear(&mut self) {
        self.request.clear();
        self.response = Vec::new();
        self.sent = 0;
        self.close_after = false;
        self.active = None;
    }
}

/// The metadata service on one NIC.
pub struct MmdsStack {
    ip: Ipv4Addr,
    store: Arc<Mutex<Mmds>>,
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    wire: Wire,
    epoch: Instant,
    timer: TimerFd,
}

/// A seed for the stack's initial sequence numbers (need not be secret:
/// without the generator, a fixed one still works).
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    let _ = crate::virtio::rng::fill(&mut seed);
    u64::from_ne_bytes(seed)
}

/// Whether `frame` (an Ethernet frame) is for the service at `ip`: an ARP
/// packet about `ip`, or an IPv4 packet to it.
pub fn is_for(ip: Ipv4Addr, frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    let target = match u16::from_be_bytes([frame[12], frame[13]]) {
        // The target protocol address of an Ethernet/IPv4 ARP packet.
        ETHERTYPE_ARP => frame.get(38..42),
        // The destination of an IPv4 header.
        ETHERTYPE_IPV4 => frame.get(30..34),
        _ => None,
    };
    target == Some(&ip.octets()[..])
}

impl MmdsStack {
    /// A stack answering at `net.ipv4`.
    pub fn new(net: &MmdsNet) -> std::io::Result<Self> {
        let mut wire = Wire {
            inbound: None,
            outbound: VecDeque::new(),
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(MAC)));
        config.random_seed = random_seed();
        let epoch = Instant::now();
        let mut iface = Interface::new(config, &mut wire, smoltcp::time::Instant::ZERO);
        // A /0 prefix makes every guest address on-link, so the stack
        // answers whatever address the guest uses, without routes.
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(net.ipv4.into(), 0));
        });
        let mut sockets = SocketSet::new(Vec::with_capacity(CONNECTIONS));
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; SOCKET_RX]),
                tcp::SocketBuffer::new(vec![0; SOCKET_TX]),
            );
            // Answers are written whole: no reason to hold back their tail.
            s.set_nagle_enabled(false);
            // Cannot fail: the port is not 0 and the socket is new.
            let _ = s.listen(PORT);
            conns.push(Conn {
                handle: sockets.add(s),
                request: Vec::new(),
                response: Vec::new(),
                sent: 0,
                close_after: false,
                active: None,
            });
        }
        Ok(MmdsStack {
            ip: net.ipv4,
            store: net.store.clone(),
            iface,
            sockets,
            conns,
            wire,
            epoch,
            timer: TimerFd::new()?,
        })
    }

    /// The timer the event loop watches for the stack's retransmissions
    /// and deadlines; [`Self::on_timer`] when it fires.
    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }

    /// Whether `frame` (an Ethernet frame from the guest) is for MMDS.
    pub fn wants(&self, frame: &[u8]) -> bool {
        is_for(self.ip, frame)
    }

    /// Takes a frame the guest sent to the service.
    pub fn receive(&mut self, frame: Vec<u8>) {
        self.wire.inbound = Some(frame);
        self.poll();
    }

    /// The next frame for the guest, if any.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.wire.outbound.pop_front()
    }

    /// Whether frames for the guest are waiting.
    pub fn has_frames(&self) -> bool {
        !self.wire.outbound.is_empty()
    }

    /// The timer fired.
    pub fn on_timer(&mut self) {
        // Clears the expiry; the event loop said it is readable, so this
        // does not block.
        let _ = self.timer.wait();
        self.poll();
    }

    fn poll(&mut self) {
        // Answering may queue data, which the next pass sends; a few
        // passes settle it (each pass without new work changes nothing).
        for _ in 0..4 {
            let now = smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64);
            self.iface.poll(now, &mut self.wire, &mut self.sockets);
            if !self.serve(Instant::now()) {
                break;
            }
        }
        self.arm_timer();
    }

    fn arm_timer(&mut self) {
        let now = smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64);
        let stack = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let wall = Instant::now();
        let deadline = self
            .conns
            .iter()
            .filter_map(|c| c.active)
            .map(|t| (t + IDLE).saturating_duration_since(wall))
            .min();
        let next = match (stack, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A zero interval would disarm the timer: at least 1 ms.
        let r = match next {
            Some(d) => self.timer.reset(d.max(Duration::from_millis(1)), None),
            None => self.timer.clear(),
        };
        if let Err(e) = r {
            log::warn!("mmds: cannot arm the timer: {e}");
        }
    }

    /// Reads requests, writes answers, ends idle connections. Returns
    /// whether anything changed that the stack must send.
    fn serve(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for c in &mut self.conns {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            match s.state() {
                State::Listen => continue,
                // Reused at once: the guest's link is a memory copy, where
                // no old segment can arrive late.
                State::Closed | State::TimeWait => {
                    c.clear();
                    s.abort();
                    let _ = s.listen(PORT);
                    continue;
                }
                _ => {}
            }
            let last = *c.active.get_or_insert(now);
            if now.saturating_duration_since(last) >= IDLE {
                if s.state() == State::Established && c.request.is_empty() && c.response.is_empty()
                {
                    // Idle between requests: closed politely, and reset if
                    // the guest does not finish the close in time either.
                    s.close();
                    c.active = Some(now);
                } else {
                    s.abort();
                }
                changed = true;
                continue;
            }
            loop {
                // Send what is left of the answer.
                if c.sent < c.response.len() {
                    match s.send_slice(&c.response[c.sent..]) {
                        Ok(n) if n > 0 => {
                            c.sent += n;
                            c.active = Some(now);
                            changed = true;
                        }
                        _ => {}
                    }
                    if c.sent < c.response.len() {
                        break;
                    }
                    c.response = Vec::new();
                    c.sent = 0;
                    if c.close_after {
                        s.close();
                        break;
                    }
                }
                // Take more of the request.
                while s.can_recv() && c.request.len() < MAX_REQUEST {
                    let room = MAX_REQUEST - c.request.len();
                    let got = s.recv(|buf| {
                        let n = buf.len().min(room);
                        (n, buf[..n].to_vec())
                    });
                    match got {
                        Ok(bytes) if !bytes.is_empty() => {
                            c.request.extend_from_slice(&bytes);
                            c.active = Some(now);
                        }
                        _ => break,
                    }
                }
                match answer(&self.store, &c.request, now) {
                    Parsed::Incomplete if c.request.len() >= MAX_REQUEST => {
                        c.response = too_large();
                        c.request.clear();
                        c.close_after = true;
                    }
                    Parsed::Incomplete => {
                        if !s.may_recv() && s.may_send() {
                            // The guest closed its side without a whole
                            // request: nothing more will come.
                            s.close();
                            changed = true;
                        }
                        break;
                    }
                    Parsed::Done {
                        used,
                        response,
                        close,
                    } => {
                        c.request.drain(..used);
                        c.response = response;
                        c.close_after = close;
                    }
                }
            }
        }
        changed
    }
}

enum Parsed {
    Incomplete,
    Done {
        used: usize,
        response: Vec<u8>,
        close: bool,
    },
}

fn too_large() -> Vec<u8> {
    super::store::GuestResponse {
        status: 413,
        content_type: "text/plain",
        headers: Vec::new(),
        body: format!("The request is larger than {MAX_REQUEST} bytes."),
    }
    .to_bytes(1, true)
}

/// Parses the request at the start of `buf` and answers it.
fn answer(store: &Mutex<Mmds>, buf: &[u8], now: Instant) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(e) => {
            let r = super::store::GuestResponse {
                status: 400,
                content_type: "text/plain",
                headers: Vec::new(),
                body: format!("Malformed request: {e}."),
            };
            return Parsed::Done {
                used: buf.len(),
                response: r.to_bytes(1, true),
                close: true,
            };
        }
    };
    let minor = req.version.unwrap_or(1);
    let pairs: Vec<(&str, &[u8])> = req.headers.iter().map(|h| (h.name, h.value)).collect();
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    // A body is read past and ignored: the service takes none.
    let body = match value("content-length").map(|v| v.trim().parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n <= MAX_REQUEST => n,
        Some(_) => {
            return Parsed::Done {
                used: buf.len(),
                response: too_large(),
                close: true,
            }
        }
    };
    if value("transfer-encoding").is_some() {
        let r = super::store::GuestResponse {
            status: 501,
            content_type: "text/plain",
            headers: Vec::new(),
            body: "Transfer-Encoding is not supported.".into(),
        };
        return Parsed::Done {
            used: buf.len(),
            response: r.to_bytes(minor, true),
            close: true,
        };
    }
    if buf.len() < head + body {
        return if head + body > MAX_REQUEST {
            Parsed::Done {
                used: buf.len(),
                response: too_large(),
                close: true,
            }
        } else {
            Parsed::Incomplete
        };
    }
    let connection = value("connection").unwrap_or_default();
    let close = if minor == 0 {
        !connection.contains("keep-alive")
    } else {
        connection.contains("close")
    };
    let request = GuestRequest {
        method: req.method.unwrap_or(""),
        target: req.path.unwrap_or(""),
        headers: &pairs,
        minor_version: minor,
    };
    let response = store
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .respond(&request, now);
    Parsed::Done {
        used: head + body,
        response: response.to_bytes(minor, close),
        close,
    }
}
