//! virtio-vsock with Firecracker's hybrid vsock: stream sockets between
//! the guest (AF_VSOCK) and host programs over unix sockets.
//!
//! - Host to guest: a program connects to the unix socket `uds_path` and
//!   writes `CONNECT <port>\n`; the device asks the guest for a connection
//!   to `<port>` from a host port of its own, and when the guest accepts
//!   it writes `OK <host port>\n` back. From then on the unix socket is the
//!   connection.
//! - Guest to host: a guest connection to CID 2 (the host), port P, is
//!   a connection to the unix socket `<uds_path>_P`, which a host program
//!   listens on; none there, and the guest's connect is refused.
//!
//! The packet format (header and payload in the guest's buffers) is
//! parsed with rust-vmm's `virtio-vsock`. Data flow is virtio-vsock's
//! credit scheme ([`conn`]): the device buffers at most [`conn::CONN_BUF`]
//! of the guest's data per connection and reads from a host socket only
//! what the guest has room for, so neither side can make the VMM hold more.
//! Host sockets are polled edge-triggered: a connection remembers that its
//! socket is readable until a read finds it empty.
//!
//! Bounded for a hostile side: at most [`MAX_CONNECTIONS`] connections and
//! [`MAX_ACCEPTING`] host connections that have not said where to yet,
//! each given [`HANDSHAKE_TIMEOUT`] to do so; a guest that does not answer
//! a connection request within that time is reset. A host program that
//! shuts its sending side (or closes) is a SHUTDOWN to the guest, which may
//! still send; one that no longer takes data is a reset.

pub mod conn;

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use self::conn::{Conn, Control, State, CONN_BUF};
use super::{read_config_bytes, should_notify, Budget, DeviceSignals, LogOnce, VirtioDevice};

/// virtio device id of a socket device.
pub const DEVICE_ID: u32 = 19;
/// The host's CID: where guest connections to the host go.
pub const HOST_CID: u64 = 2;
/// Most connections at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Most host connections waiting to say `CONNECT <port>`.
pub const MAX_ACCEPTING: usize = 32;
/// How long a host connection has to say where to, and the guest to
/// answer a connection request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const QUEUE_SIZE: u16 = 256;
/// Most resets owed to the guest at once.
const MAX_RESETS: usize = 1024;
const RX: usize = 0;
const TX: usize = 1;
/// The most payload one packet carries (the guest's own limit is 64 KiB).
const MAX_PKT_DATA: u32 = 64 * 1024;
/// The longest `CONNECT <port>\n` line.
const CONNECT_LINE_MAX: usize = 32;
/// Host ports the device connects to the guest from, for host-initiated
/// connections: far above the ports guests listen on.
const LOCAL_PORT_BASE: u32 = 1 << 30;

const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;

/// How to build a socket device (Firecracker's `PUT /vsock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID, 3 or more.
    pub guest_cid: u32,
    /// The unix socket host programs connect to; `<uds_path>_<port>` are
    /// the ones guest connections go to.
    pub uds_path: PathBuf,
}

/// Errors of setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CID the guest cannot have.
    #[error("guest_cid {0} is reserved: it must be 3 or more")]
    Cid(u32),
    /// The unix socket cannot be made.
    #[error("cannot listen on {0}: {1}")]
    Listen(PathBuf, #[source] std::io::Error),
    /// An OS resource failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl VsockConfig {
    /// Checks what can be checked without making the socket.
    pub fn validate(&self) -> Result<(), Error> {
        if self.guest_cid < 3 {
            return Err(Error::Cid(self.guest_cid));
        }
        Ok(())
    }
}

/// A connection's ports: the host side's, then the guest's.
type Key = (u32, u32);

/// A host connection that has not said where to yet.
struct Accepting {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// A virtio-vsock device.
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    queue_evts: [EventFd; 3],
    signals: Arc<DeviceSignals>,
    active: Option<Active>,
    conns: HashMap<Key, Conn>,
    /// Connection keys in turn order for the receive queue.
    turns: VecDeque<Key>,
    by_fd: HashMap<RawFd, Key>,
    accepting: HashMap<RawFd, Accepting>,
    /// Resets owed to the guest for packets of no connection (host port,
    /// guest port).
    resets: VecDeque<Key>,
    next_local_port: u32,
    timer: TimerFd,
    timer_armed: bool,
    /// The driver reset the device: connections go on the next event.
    reset_pending: bool,
    buf: Vec<u8>,
    bad_packet: LogOnce,
    host_error: LogOnce,
    early_notify: LogOnce,
}

impl Vsock {
    /// A device for `config`, listening on its `uds_path` (a stale socket
    /// file there, one nobody listens on, is replaced).
    pub fn new(
        config: &VsockConfig,
        queue_evts: [EventFd; 3],
        signals: Arc<DeviceSignals>,
    ) -> Result<Vsock, Error> {
        config.validate()?;
        let listener = listen(&config.uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Vsock {
            cid: u64::from(config.guest_cid),
            uds_path: config.uds_path.clone(),
            listener,
            queue_evts,
            signals,
            active: None,
            conns: HashMap::new(),
            turns: VecDeque::new(),
            by_fd: HashMap::new(),
            accepting: HashMap::new(),
            resets: VecDeque::new(),
            next_local_port: LOCAL_PORT_BASE,
            timer: TimerFd::new().map_err(|e| Error::Io(e.into()))?,
            timer_armed: false,
            reset_pending: false,
            buf: Vec::with_capacity(MAX_PKT_DATA as usize),
            bad_packet: LogOnce::default(),
            host_error: LogOnce::default(),
            early_notify: LogOnce::default(),
        })
    }

    /// How many connections are open (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    // ------------------------------------------------------------ guest

    /// Serves the transmit queue: the guest's packets.
    fn process_tx(&mut self, ops: &mut EventOps) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut used = false;
        {
            let Active { mem, queues } = &mut active;
            let queue = &mut queues[TX];
            let mut budget = Budget::for_queue(queue);
            while let Some(mut chain) = budget.next(queue, mem, &self.signals, &self.bad_packet) {
                let head = chain.head_index();
                match VsockPacket::from_tx_virtq_chain(mem, chain.inner_mut(), MAX_PKT_DATA) {
                    Ok(pkt) => {
                        self.buf.clear();
                        if let Some(data) = pkt.data_slice() {
                            self.buf.resize(data.len(), 0);
                            data.copy_to(&mut self.buf[..]);
                        }
                        let hdr = Header::of(&pkt);
                        self.handle_packet(hdr, ops);
                    }
                    Err(e) => self.bad_packet.warn(format_args!(
                        "virtio-vsock: a bad packet from the guest: {e}"
                    )),
                }
                if queue.add_used(mem, head, 0).is_err() {
                    self.signals.set_needs_reset();
                    break;
                }
                used = true;
            }
            if used && should_notify(queue, mem) {
                self.signals.signal_used_queue();
            }
            budget.resume(&self.queue_evts[TX]);
        }
        self.active = Some(active);
    }

    /// One packet from the guest (its payload in `self.buf`).
    fn handle_packet(&mut self, h: Header, ops: &mut EventOps) {
        let key = (h.dst_port, h.src_port);
        if h.src_cid != self.cid || h.dst_cid != HOST_CID || h.type_ != TYPE_STREAM {
            self.bad_packet.warn(format_args!(
                "virtio-vsock: a packet from CID {} to {} of type {}: not a stream from the guest to the host",
                h.src_cid, h.dst_cid, h.type_
            ));
            if h.op != OP_RST {
                self.queue_reset(key);
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            match h.op {
                OP_REQUEST => self.connect_to_host(key, &h, ops),
                OP_RST => {}
                _ => self.queue_reset(key),
            }
            return;
        };
        c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        match (h.op, c.state) {
            (OP_RESPONSE, State::Connecting(_)) => {
                c.state = State::Established;
                let ok = format!("OK {}\n", key.0);
                if c.stream.write_all(ok.as_bytes()).is_err() {
                    self.reset(key, ops);
                }
            }
            (OP_RW, State::Established) => {
                let data = std::mem::take(&mut self.buf);
                let taken = c.guest_done_sending || c.push_from_guest(&data);
                let failed = c.failed;
                self.buf = data;
                if !taken {
                    self.bad_packet.warn(format_args!(
                        "virtio-vsock: the guest sent more than its credit on port {}",
                        key.0
                    ));
                }
                if !taken || failed {
                    self.reset(key, ops);
                }
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => {
                if !c.controls.contains(&Control::CreditUpdate) {
                    c.controls.push_back(Control::CreditUpdate);
                }
            }
            (OP_SHUTDOWN, _) => {
                c.guest_done_receiving |= h.flags & SHUTDOWN_RCV != 0;
                c.guest_done_sending |= h.flags & SHUTDOWN_SEND != 0;
                c.flush();
                // The guest closed (done both ways), or both ends are done
                // sending: virtio-vsock's close, answered with a reset.
                let done = (c.guest_done_receiving && c.guest_done_sending)
                    || (c.guest_done_sending && c.host_done_sending && c.pending.is_empty());
                if done || c.failed {
                    self.reset(key, ops);
                }
            }
            (OP_RST, _) => self.remove(key, ops),
            // A request for a connection that exists, a response to none,
            // data before the connection is up: reset it.
            _ => self.reset(key, ops),
        }
    }

    /// A guest connection to the host's port `key.0`: to the unix socket
    /// `<uds_path>_<port>`, answered at once.
    fn connect_to_host(&mut self, key: Key, h: &Header, ops: &mut EventOps) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.host_error.warn(format_args!(
                "virtio-vsock: {MAX_CONNECTIONS} connections open, refusing more"
            ));
            self.queue_reset(key);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let mut c = Conn::new(stream, State::Established);
                c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
                c.controls.push_back(Control::Response);
                self.insert(key, c, ops);
            }
            // Nobody listening, or too many waiting to be accepted: the
            // guest's connect is refused.
            Err(_) => self.queue_reset(key),
        }
    }

    /// Serves the receive queue: what the device owes the guest. Resets
    /// for unknown connections first, then a packet per connection in
    /// turn, until the guest's buffers or the work run out.
    fn process_rx(&mut self, ops: &mut EventOps) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut used = false;
        {
            let Active { mem, queues } = &mut active;
            let queue = &mut queues[RX];
            let mut budget = Budget::for_queue(queue);
            let mut idle_turns = 0;
            loop {
                let work = self.next_work();
                let Some(work) = work else { break };
                let Some(mut chain) = budget.next(queue, mem, &self.signals, &self.bad_packet)
                else {
                    self.undo(work);
                    break;
                };
                let head = chain.head_index();
                let written =
                    match VsockPacket::from_rx_virtq_chain(mem, chain.inner_mut(), MAX_PKT_DATA) {
                        Ok(mut pkt) => self.fill(work, &mut pkt, ops),
                        Err(e) => {
                            self.bad_packet
                                .warn(format_args!("virtio-vsock: a bad receive buffer: {e}"));
                            self.undo(work);
                            Some(0)
                        }
                    };
                match written {
                    Some(len) => {
                        if queue.add_used(mem, head, len).is_err() {
                            self.signals.set_needs_reset();
                            break;
                        }
                        used = true;
                        idle_turns = 0;
                    }
                    // Nothing to send after all (the host socket was
                    // empty): the buffer goes back.
                    None => {
                        queue.go_to_previous_position();
                        idle_turns += 1;
                        // A turn can leave a reset to send (a host socket
                        // that failed); otherwise a round of turns that
                        // sent nothing ends the pass.
                        if idle_turns > self.turns.len() && self.resets.is_empty() {
                            break;
                        }
                    }
                }
            }
            if used && should_notify(queue, mem) {
                self.signals.signal_used_queue();
            }
            budget.resume(&self.queue_evts[RX]);
        }
        self.active = Some(active);
        self.arm_timer();
    }

    /// The next thing to send: a reset for no connection, or a
    /// connection's turn.
    fn next_work(&mut self) -> Option<Work> {
        if let Some(key) = self.resets.pop_front() {
            return Some(Work::Reset(key));
        }
        for _ in 0..self.turns.len() {
            let key = self.turns.pop_front()?;
            self.turns.push_back(key);
            let Some(c) = self.conns.get(&key) else {
                continue;
            };
            if !c.controls.is_empty() || c.wants_to_send_data() {
                return Some(Work::Conn(key));
            }
        }
        None
    }

    /// Puts back work no buffer was found for.
    fn undo(&mut self, work: Work) {
        if let Work::Reset(key) = work {
            self.resets.push_front(key);
        }
    }

    /// Writes one packet for `work` into `pkt`: its length, or None if
    /// there was nothing to send after all.
    fn fill(
        &mut self,
        work: Work,
        pkt: &mut VsockPacket<'_, ()>,
        ops: &mut EventOps,
    ) -> Option<u32> {
        let cid = self.cid;
        let header = |pkt: &mut VsockPacket<'_, ()>, key: Key, op: u16, fwd_cnt: u32| {
            pkt.set_src_cid(HOST_CID)
                .set_dst_cid(cid)
                .set_src_port(key.0)
                .set_dst_port(key.1)
                .set_type(TYPE_STREAM)
                .set_op(op)
                .set_flags(0)
                .set_len(0)
                .set_buf_alloc(CONN_BUF)
                .set_fwd_cnt(fwd_cnt);
        };
        let key = match work {
            Work::Reset(key) => {
                header(pkt, key, OP_RST, 0);
                return Some(PKT_HEADER_SIZE as u32);
            }
            Work::Conn(key) => key,
        };
        let c = self.conns.get_mut(&key)?;
        if let Some(control) = c.controls.pop_front() {
            c.fwd_cnt_told = c.fwd_cnt;
            let op = match control {
                Control::Request => OP_REQUEST,
                Control::Response => OP_RESPONSE,
                Control::CreditUpdate => OP_CREDIT_UPDATE,
                Control::Shutdown(_) => OP_SHUTDOWN,
                Control::Rst => OP_RST,
            };
            header(pkt, key, op, c.fwd_cnt);
            if let Control::Shutdown(flags) = control {
                pkt.set_flags(flags);
            }
            if control == Control::Rst {
                self.remove(key, ops);
            }
            return Some(PKT_HEADER_SIZE as u32);
        }
        let room = pkt.data_slice().map_or(0, |d| d.len());
        let max = (c.peer_credit() as usize)
            .min(room)
            .min(MAX_PKT_DATA as usize);
        if max == 0 {
            return None;
        }
        match c.read_host(&mut self.buf, max) {
            Ok(0) => {
                // The host program sends no more (it shut its sending
                // side, or closed): the guest is told, and may still send
                // (a program that closed fails the next write).
                c.host_done_sending = true;
                c.readable = false;
                if c.guest_done_sending && c.pending.is_empty() {
                    self.reset(key, ops);
                } else {
                    c.controls.push_back(Control::Shutdown(SHUTDOWN_SEND));
                }
                None
            }
            Ok(n) => {
                let data = pkt.data_slice()?;
                data.copy_from(&self.buf[..n]);
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                c.fwd_cnt_told = c.fwd_cnt;
                header(pkt, key, OP_RW, c.fwd_cnt);
                pkt.set_len(n as u32);
                Some((PKT_HEADER_SIZE + n) as u32)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(_) => {
                self.reset(key, ops);
                None
            }
        }
    }

    // ------------------------------------------------------------- host

    /// Takes the host connections waiting on the listening socket.
    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        self.host_error
                            .warn(format_args!("virtio-vsock: accept failed: {e}"));
                    }
                    return;
                }
            };
            if self.accepting.len() >= MAX_ACCEPTING || self.conns.len() >= MAX_CONNECTIONS {
                self.host_error.warn(format_args!(
                    "virtio-vsock: too many host connections, closing new ones"
                ));
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if ops
                .add(Events::new(
                    &stream,
                    EventSet::IN | EventSet::EDGE_TRIGGERED,
                ))
                .is_err()
            {
                continue;
            }
            self.accepting.insert(
                fd,
                Accepting {
                    stream,
                    line: Vec::new(),
                    since: Instant::now(),
                },
            );
            // It may have written its line already.
            self.read_connect_line(fd, ops);
        }
    }

    /// Reads a waiting host connection's `CONNECT <port>\n`; once it is
    /// whole, asks the guest for the connection.
    fn read_connect_line(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(a) = self.accepting.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte: whatever follows the line is the connection's.
        let port = loop {
            match a.stream.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect(&a.line),
                Ok(_) if a.line.len() < CONNECT_LINE_MAX => a.line.push(byte[0]),
                Ok(_) => break None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let Some(a) = self.accepting.remove(&fd) else {
            return;
        };
        let _ = ops.remove(Events::new(
            &a.stream,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        ));
        let Some(port) = port else {
            // Dropped: a line that is not `CONNECT <port>`, or no line.
            return;
        };
        let Some(local) = self.free_local_port(port) else {
            return;
        };
        let mut c = Conn::new(a.stream, State::Connecting(Instant::now()));
        c.controls.push_back(Control::Request);
        self.insert((local, port), c, ops);
        self.arm_timer();
    }

    /// A host port for a new connection to the guest's `peer` port.
    fn free_local_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = match port.checked_add(1) {
                Some(p) => p,
                None => LOCAL_PORT_BASE,
            };
            if !self.conns.contains_key(&(port, peer)) {
                return Some(port);
            }
        }
        None
    }

    /// Events on a connection's host socket.
    fn host_event(&mut self, key: Key, set: EventSet, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
        }
        if set.contains(EventSet::OUT) {
            c.flush();
        }
        // A host program that closed before the guest answered its
        // request, or that no longer takes the guest's data.
        let gone = matches!(c.state, State::Connecting(_)) && set.contains(EventSet::HANG_UP);
        if gone || c.failed {
            self.reset(key, ops);
        }
    }

    // ------------------------------------------------------ connections

    fn insert(&mut self, key: Key, c: Conn, ops: &mut EventOps) {
        let fd = c.stream.as_raw_fd();
        let watched = ops.add(Events::new(
            &c.stream,
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
        ));
        if let Err(e) = watched {
            self.host_error.warn(format_args!(
                "virtio-vsock: cannot watch a connection: {e:?}"
            ));
            self.queue_reset(key);
            return;
        }
        self.by_fd.insert(fd, key);
        self.turns.push_back(key);
        self.conns.insert(key, c);
    }

    /// Ends a connection with a reset to the guest (its host socket
    /// closes).
    fn reset(&mut self, key: Key, ops: &mut EventOps) {
        if self.conns.contains_key(&key) {
            self.remove(key, ops);
            self.queue_reset(key);
        }
    }

    /// Owes the guest a reset for `key`. A guest that sends to ports
    /// nobody has but posts no receive buffers would make the list grow
    /// without end: past [`MAX_RESETS`] the new ones are dropped (the
    /// guest's connects then time out instead of being refused).
    fn queue_reset(&mut self, key: Key) {
        if self.resets.len() < MAX_RESETS {
            self.resets.push_back(key);
        } else {
            self.bad_packet.warn(format_args!(
                "virtio-vsock: {MAX_RESETS} resets waiting for receive buffers, dropping more"
            ));
        }
    }

    /// Ends a connection without telling the guest (it reset it).
    fn remove(&mut self, key: Key, ops: &mut EventOps) {
        if let Some(c) = self.conns.remove(&key) {
            let _ = ops.remove(Events::new(&c.stream, EventSet::empty()));
            self.by_fd.remove(&c.stream.as_raw_fd());
        }
        self.turns.retain(|k| *k != key);
    }

    /// Resets what has waited too long: host connections that did not say
    /// where to, and connection requests the guest did not answer.
    fn expire(&mut self, ops: &mut EventOps) {
        let now = Instant::now();
        let late = |since: Instant| now.duration_since(since) >= HANDSHAKE_TIMEOUT;
        let stale: Vec<RawFd> = self
            .accepting
            .iter()
            .filter(|(_, a)| late(a.since))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stale {
            if let Some(a) = self.accepting.remove(&fd) {
                let _ = ops.remove(Events::new(&a.stream, EventSet::empty()));
            }
        }
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Connecting(t) if late(t)))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.reset(key, ops);
        }
    }

    /// Keeps a one-second timer running while anything can expire.
    fn arm_timer(&mut self) {
        let waiting = !self.accepting.is_empty()
            || self
                .conns
                .values()
                .any(|c| !matches!(c.state, State::Established));
        if waiting == self.timer_armed {
            return;
        }
        let period = Duration::from_secs(1);
        let r = match waiting {
            true => self.timer.reset(period, Some(period)),
            false => self.timer.clear(),
        };
        match r {
            Ok(()) => self.timer_armed = waiting,
            Err(e) => error!("virtio-vsock: cannot set the timer: {e}"),
        }
    }

    /// Drops every connection (device reset).
    fn drop_connections(&mut self, ops: &mut EventOps) {
        for c in self.conns.values() {
            let _ = ops.remove(Events::new(&c.stream, EventSet::empty()));
        }
        self.conns.clear();
        self.by_fd.clear();
        self.turns.clear();
        self.resets.clear();
    }
}

/// What the receive queue carries next.
#[derive(Clone, Copy, Debug)]
enum Work {
    Reset(Key),
    Conn(Key),
}

/// The fields of a packet's header the device looks at.
#[derive(Clone, Copy, Debug)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Header {
    fn of(p: &VsockPacket<'_, ()>) -> Header {
        Header {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            type_: p.type_(),
            op: p.op(),
            flags: p.flags(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
        }
    }
}

/// `CONNECT <port>` (the line without its newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?;
    port.trim_end_matches('\r').parse().ok()
}

/// Listens on `path`, replacing a socket file there that nobody listens on.
fn listen(path: &Path) -> Result<UnixListener, Error> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            use std::os::unix::fs::FileTypeExt;
            let stale = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
                && UnixStream::connect(path).is_err();
            if !stale {
                return Err(Error::Listen(path.to_owned(), e));
            }
            std::fs::remove_file(path).map_err(|e| Error::Listen(path.to_owned(), e))?;
            UnixListener::bind(path).map_err(|e| Error::Listen(path.to_owned(), e))
        }
        Err(e) => Err(Error::Listen(path.to_owned(), e)),
    }
}

/// Connects to the unix socket at `path` without blocking: a listener
/// whose queue is full refuses (EAGAIN) instead of holding the event loop.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: a plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of which `len` bytes (family,
    // path and its NUL) are passed; `fd` is open.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        queues: Vec<Queue>,
    ) -> Result<(), String> {
        if queues.len() != 3 {
            return Err(format!("virtio-vsock needs 3 queues, got {}", queues.len()));
        }
        self.active = Some(Active { mem, queues });
        // Whatever is owed (host connections made before the driver came
        // up) goes as soon as the guest posts receive buffers.
        self.queue_evts[RX].write(1).map_err(|e| e.to_string())?;
        self.queue_evts[TX].write(1).map_err(|e| e.to_string())
    }

    /// Connections end with the driver: a new driver starts from none.
    /// They are dropped on the event loop, which must stop watching their
    /// sockets first; the event queue's kick brings it there.
    fn reset(&mut self) {
        self.active = None;
        self.reset_pending = true;
        if let Err(e) = self.queue_evts[2].write(1) {
            warn!("virtio-vsock: cannot wake the event loop: {e}");
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            super::watch_queue(ops, "virtio-vsock", evt, None);
        }
        let listener = Events::new(&self.listener, EventSet::IN | EventSet::EDGE_TRIGGERED);
        if let Err(e) = ops.add(listener) {
            error!(
                "virtio-vsock: cannot watch {}: {e:?}",
                self.uds_path.display()
            );
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            error!("virtio-vsock: cannot watch its timer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if std::mem::take(&mut self.reset_pending) {
            self.drop_connections(ops);
        }
        let fd = events.fd();
        if fd == self.queue_evts[TX].as_raw_fd() {
            let _ = self.queue_evts[TX].read();
            if self.active.is_none() {
                self.early_notify.warn(format_args!(
                    "virtio-vsock: queue notified while not running"
                ));
            }
            self.process_tx(ops);
        } else if fd == self.queue_evts[RX].as_raw_fd() {
            let _ = self.queue_evts[RX].read();
        } else if fd == self.queue_evts[2].as_raw_fd() {
            // The event queue: the device sends no events.
            let _ = self.queue_evts[2].read();
        } else if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if fd == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            self.expire(ops);
        } else if self.accepting.contains_key(&fd) {
            self.read_connect_line(fd, ops);
        } else if let Some(key) = self.by_fd.get(&fd).copied() {
            self.host_event(key, events.event_set(), ops);
        } else {
            // A socket closed since this event was queued.
            return;
        }
        self.process_rx(ops);
        self.arm_timer();
    }
}

#[cfg(test)]
mod tests;
