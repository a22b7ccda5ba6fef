//! One stream connection between a guest socket and a host unix socket,
//! and virtio-vsock's credit accounting for it.
//!
//! Each side tells the other how much it can buffer (`buf_alloc`) and how
//! many bytes it has passed on so far (`fwd_cnt`); a sender may have at
//! most `buf_alloc - (sent - fwd_cnt)` bytes in flight. The counters wrap
//! at 2^32, so every difference is taken with wrapping arithmetic.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// What the device buffers per connection for the host socket: the
/// `buf_alloc` it tells the guest. A guest that sends more than that
/// without waiting for credit breaks the protocol and is reset.
pub const CONN_BUF: u32 = 256 * 1024;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the REQUEST is (to be) sent, the guest has not
    /// answered yet; since then.
    Connecting(Instant),
    /// Data flows (each way until its sender shuts it).
    Established,
}

/// A packet without data the device owes the guest on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Request,
    Response,
    CreditUpdate,
    /// SHUTDOWN with these flags.
    Shutdown(u32),
    Rst,
}

/// One connection.
pub struct Conn {
    pub stream: UnixStream,
    pub state: State,
    /// The guest's `buf_alloc` and `fwd_cnt`, from its last packet.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes the device has sent the guest (RW payloads).
    pub rx_cnt: u32,
    /// Bytes of the guest's the device has written to the host socket.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as the guest last heard it.
    pub fwd_cnt_told: u32,
    /// The guest's bytes not yet taken by the host socket.
    pub pending: VecDeque<u8>,
    /// Control packets owed to the guest, in order.
    pub controls: VecDeque<Control>,
    /// The host socket had data (or an end) when last read (edge-triggered
    /// polling: it stays set until a read finds nothing).
    pub readable: bool,
    /// The guest will send no more (SHUTDOWN with SEND): the host socket
    /// is shut for writing once `pending` is out.
    pub guest_done_sending: bool,
    /// The guest will take no more data (SHUTDOWN with RCV).
    pub guest_done_receiving: bool,
    /// The host program's stream ended (it shut its sending side, or
    /// closed): the guest was told the host sends no more.
    pub host_done_sending: bool,
    /// Writing to the host socket failed (the program closed it): the
    /// connection is to be reset.
    pub failed: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, state: State) -> Conn {
        Conn {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            pending: VecDeque::new(),
            controls: VecDeque::new(),
            readable: true,
            guest_done_sending: false,
            guest_done_receiving: false,
            host_done_sending: false,
            failed: false,
        }
    }

    /// Takes the guest's credit figures from one of its packets.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the device has host data to send and the guest room for it.
    pub fn wants_to_send_data(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_done_sending
            && !self.guest_done_receiving
            && self.peer_credit() > 0
    }

    /// Takes `data` from the guest for the host socket: writes what the
    /// socket takes and keeps the rest. False if the guest sent more than
    /// its credit allowed.
    pub fn push_from_guest(&mut self, data: &[u8]) -> bool {
        if self.pending.len() + data.len() > CONN_BUF as usize {
            return false;
        }
        self.pending.extend(data);
        self.flush();
        true
    }

    /// Writes what the host socket takes of `pending`; shuts the socket
    /// for writing once the guest has said it sends no more and all is
    /// out. Counts what went out as forwarded, and asks to tell the guest
    /// when a quarter of its window has come free.
    pub fn flush(&mut self) {
        while !self.pending.is_empty() {
            let (head, _) = self.pending.as_slices();
            match self.stream.write(head) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The writable edge resumes it.
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.failed = true;
                    break;
                }
            }
        }
        if self.pending.is_empty() && self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= CONN_BUF / 4
            && !self.controls.contains(&Control::CreditUpdate)
        {
            self.controls.push_back(Control::CreditUpdate);
        }
    }

    /// Reads at most `max` bytes of host data into `buf` (cleared first).
    /// Ok(0) is the end of the host's stream; Err(WouldBlock) clears
    /// `readable`.
    pub fn read_host(&mut self, buf: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
        buf.resize(max, 0);
        loop {
            match self.stream.read(&mut buf[..max]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.clear();
                    if e.kind() == ErrorKind::WouldBlock {
                        self.readable = false;
                    }
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_wraps_and_never_goes_below_zero() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, State::Established);
        c.update_peer_credit(1000, u32::MAX - 10);
        c.rx_cnt = u32::MAX - 10;
        assert_eq!(c.peer_credit(), 1000);
        c.rx_cnt = c.rx_cnt.wrapping_add(600);
        assert_eq!(c.peer_credit(), 400);
        c.rx_cnt = c.rx_cnt.wrapping_add(600);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_data_beyond_the_window_is_refused_and_the_rest_waits_for_the_socket() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, State::Established);
        assert!(c.push_from_guest(&[7u8; 1000]));
        assert_eq!(c.fwd_cnt, 1000);
        let mut got = [0u8; 1000];
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, [7u8; 1000]);
        // Fill the socket, then the device's buffer, then one byte more.
        let mut total = 0usize;
        while c.pending.is_empty() {
            assert!(c.push_from_guest(&[1u8; 4096]));
            total += 4096;
            assert!(total < 64 << 20, "the socket never filled");
        }
        while c.pending.len() + 4096 <= CONN_BUF as usize {
            assert!(c.push_from_guest(&[1u8; 4096]));
        }
        let room = CONN_BUF as usize - c.pending.len();
        assert!(!c.push_from_guest(&vec![1u8; room + 1]));
        assert!(c.controls.contains(&Control::CreditUpdate));
    }

    #[test]
    fn shutdown_for_sending_waits_for_the_pending_bytes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, State::Established);
        c.guest_done_sending = true;
        assert!(c.push_from_guest(b"bye"));
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
    }
}
