//! The service driven over a real TCP connection: a second smoltcp stack
//! plays the guest, and the two exchange Ethernet frames.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use serde_json::json;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use super::stack::{Rx, Tx};
use super::*;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

#[derive(Default)]
struct Queue {
    inbound: VecDeque<Vec<u8>>,
    outbound: VecDeque<Vec<u8>>,
}
impl Device for Queue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.inbound.pop_front()?;
        Some((Rx(f), Tx(&mut self.outbound)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.outbound))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// The guest's side: an interface at 10.0.0.2/24 with a route to the
/// service through its link, as `ip route add 169.254.169.254 dev eth0`.
struct Guest {
    iface: Interface,
    dev: Queue,
    sockets: SocketSet<'static>,
    start: std::time::Instant,
}

impl Guest {
    fn new() -> Guest {
        let mut dev = Queue::default();
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut iface = Interface::new(cfg, &mut dev, Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(Ipv4Address::new(10, 0, 0, 2).into(), 0))
                .unwrap();
        });
        Guest {
            iface,
            dev,
            sockets: SocketSet::new(vec![]),
            start: std::time::Instant::now(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    fn connect(&mut self, port: u16) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        let h = self.sockets.add(s);
        // No delayed ACKs: the test moves frames without waiting on timers.
        self.sockets.get_mut::<tcp::Socket>(h).set_ack_delay(None);
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, (Ipv4Address::new(169, 254, 169, 254), 80), port)
            .unwrap();
        h
    }

    /// Moves frames both ways until nothing moves.
    fn pump(&mut self, mmds: &mut MmdsStack) {
        for _ in 0..200 {
            let now = self.now();
            self.iface.poll(now, &mut self.dev, &mut self.sockets);
            let mut moved = false;
            while let Some(f) = self.dev.outbound.pop_front() {
                // Everything the guest sends here is for the service.
                assert!(mmds.wants(&f), "frame not for the service: {f:02x?}");
                mmds.receive(f);
                moved = true;
            }
            while let Some(f) = mmds.next_frame() {
                self.dev.inbound.push_back(f);
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange did not settle");
    }

    /// Sends `request` on a new connection and reads until the service
    /// closes it.
    fn exchange(&mut self, mmds: &mut MmdsStack, port: u16, request: &str) -> String {
        let h = self.connect(port);
        self.pump(mmds);
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        assert!(s.may_send(), "not connected: {}", s.state());
        s.send_slice(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        for _ in 0..50 {
            self.pump(mmds);
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if !s.may_recv() {
                break;
            }
        }
        self.sockets.get_mut::<tcp::Socket>(h).close();
        self.pump(mmds);
        String::from_utf8(got).unwrap()
    }
}

fn service(version: MmdsVersion) -> (MmdsStack, Arc<Mutex<Mmds>>) {
    let store = Arc::new(Mutex::new(Mmds::default()));
    {
        let mut s = store.lock().unwrap();
        s.configure(version, false);
        s.put(json!({"latest": {"meta-data": {"ami-id": "ami-7", "big": "x".repeat(40000)}}}))
            .unwrap();
    }
    let net = MmdsNet {
        store: store.clone(),
        ipv4: DEFAULT_IPV4,
    };
    (MmdsStack::new(&net).unwrap(), store)
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn a_guest_reads_the_store_over_tcp() {
    let (mut mmds, store) = service(MmdsVersion::V1);
    let mut guest = Guest::new();
    let r = guest.exchange(
        &mut mmds,
        40000,
        "GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert_eq!(body(&r), "ami-7");
    // A value larger than a socket buffer arrives whole.
    let r = guest.exchange(
        &mut mmds,
        40001,
        "GET /latest/meta-data/big HTTP/1.0\r\n\r\n",
    );
    assert_eq!(body(&r).len(), 40000, "{}", &r[..200.min(r.len())]);
    // The host's change shows at once.
    store
        .lock()
        .unwrap()
        .patch(&json!({"latest": {"meta-data": {"ami-id": "ami-8"}}}))
        .unwrap();
    let r = guest.exchange(
        &mut mmds,
        40002,
        "GET /latest/meta-data/ami-id HTTP/1.0\r\n\r\n",
    );
    assert_eq!(body(&r), "ami-8");
}

#[test]
fn version_2_sessions_over_tcp() {
    let (mut mmds, _) = service(MmdsVersion::V2);
    let mut guest = Guest::new();
    let r = guest.exchange(&mut mmds, 40010, "GET /latest HTTP/1.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.0 401"), "{r}");
    let r = guest.exchange(
        &mut mmds,
        40011,
        "PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
    let token = body(&r).to_string();
    // Two requests on one kept-alive connection, then a close.
    let r = guest.exchange(
        &mut mmds,
        40012,
        &format!(
            "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n\
             GET /latest HTTP/1.1\r\nX-metadata-token: {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 2, "{r}");
    assert!(r.ends_with("\r\n\r\nmeta-data/"), "{r}");
}

#[test]
fn hostile_requests_get_an_answer_and_a_close() {
    let (mut mmds, _) = service(MmdsVersion::V1);
    let mut guest = Guest::new();
    let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20000));
    let r = guest.exchange(&mut mmds, 40020, &huge);
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    let r = guest.exchange(&mut mmds, 40021, "\x01\x02 nonsense\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Every connection slot can be used again afterwards.
    for port in 0..40 {
        let r = guest.exchange(&mut mmds, 41000 + port, "GET / HTTP/1.0\r\n\r\n");
        assert_eq!(body(&r), "latest/", "connection {port}");
    }
}

#[test]
fn only_frames_for_the_service_are_taken() {
    let ip = Ipv4Addr::new(169, 254, 169, 254);
    let mut ipv4 = vec![0u8; 34];
    ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
    ipv4[30..34].copy_from_slice(&ip.octets());
    assert!(is_for(ip, &ipv4));
    ipv4[33] = 1;
    assert!(!is_for(ip, &ipv4));
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp[38..42].copy_from_slice(&ip.octets());
    assert!(is_for(ip, &arp));
    assert!(!is_for(ip, &arp[..40]));
    arp[13] = 0xdd;
    assert!(!is_for(ip, &arp));
}
