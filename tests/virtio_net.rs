//! virtio-net over a tap device in a network namespace the test creates.
//! Frames use a local experimental EtherType and never leave the namespace.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use strato_tests::{guest, Netns};

const ETHERTYPE: u16 = 0x88b5;

/// A raw packet socket bound to one interface and our EtherType.
struct Packet {
    fd: OwnedFd,
    ifindex: i32,
}

impl Packet {
    fn open(ifname: &str) -> Packet {
        let proto = ETHERTYPE.to_be() as i32;
        // SAFETY: plain socket creation; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = CString::new(ifname).unwrap();
        // SAFETY: name is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETHERTYPE.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: binds our socket to a correctly sized sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 30,
            tv_usec: 0,
        };
        // SAFETY: sets a receive timeout from a valid timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Packet { fd, ifindex }
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: receives into a buffer of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: sends `frame` to a correctly sized sockaddr_ll.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n as usize,
            frame.len(),
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(60, 0);
    f
}

#[test]
fn frames_cross_the_tap_both_ways() {
    let ns = Netns::new("net", &["tap0"]);
    let guest_mac = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
    // The host side: wait for the guest's frame, answer it.
    let host = ns.run(move || {
        let sock = Packet::open("tap0");
        let got = sock.recv().expect("no frame from the guest");
        let reply = frame(guest_mac, [0x06, 0, 0, 0, 0, 1], b"strato-net-rx");
        sock.send(&reply);
        got
    });
    std::thread::sleep(Duration::from_millis(100));
    let kernel = guest("net");
    let r = ns.strato(
        &[
            "run",
            "--no-stdin",
            "--memory",
            "64",
            "--kernel",
            kernel.to_str().unwrap(),
            "--net",
            "tap=tap0,mac=06:00:ac:10:00:02",
        ],
        Duration::from_secs(60),
    );
    let got = host.join().unwrap();
    r.assert_ok();
    assert_eq!(&got[0..6], &[0xff; 6], "broadcast destination");
    assert_eq!(&got[6..12], &guest_mac, "guest MAC as source");
    assert_eq!(&got[12..14], &ETHERTYPE.to_be_bytes());
    assert!(got[14..].starts_with(b"strato-net-tx"), "{got:?}");
    assert!(r.stdout.contains("net: mac 06:00:ac:10:00:02"), "{r:#?}");
    assert!(r.stdout.contains("net: rx strato-net-rx"), "{r:#?}");
}

#[test]
fn a_tap_that_cannot_be_opened_is_a_clear_error() {
    let ns = Netns::new("net-missing", &[]);
    let hello = guest("hello");
    // As root /dev/net/tun creates a missing tap, so take a name that is a
    // TUN (layer 3) device: the kernel refuses to attach to it as a tap.
    ns.add_tun("tun0");
    let r = ns.strato(
        &[
            "run",
            "--no-stdin",
            "--kernel",
            hello.to_str().unwrap(),
            "--net",
            "tap=tun0",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(r.code(), 1, "{r:#?}");
    assert!(r.stderr.contains("cannot attach to tap tun0"), "{r:#?}");
    // Names the kernel could never accept are refused before that.
    let bad = strato_tests::run_guest("hello", &["--no-stdin", "--net", "tap=bad/name"]);
    assert_eq!(bad.code(), 1, "{bad:#?}");
    assert!(bad.stderr.contains("tap name \"bad/name\""), "{bad:#?}");
}

#[test]
fn four_drives_and_two_nics_at_once() {
    let ns = Netns::new("many", &["tap0", "tap1"]);
    let dir = strato_tests::Scratch::new("many");
    let images: Vec<Vec<u8>> = (0..4)
        .map(|i| strato_tests::random_bytes(64 * 1024, 20 + i))
        .collect();
    let paths: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, d)| dir.file(&format!("d{i}.img"), d))
        .collect();
    let listeners: Vec<_> = ["tap0", "tap1"]
        .into_iter()
        .map(|tap| ns.run(move || Packet::open(tap).recv()))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let kernel = guest("many");
    let mut args: Vec<String> = [
        "run",
        "--no-stdin",
        "--memory",
        "64",
        "--console",
        "virtio",
        "--kernel",
        kernel.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    for p in &paths {
        args.push("--drive".into());
        args.push(format!("path={p}"));
    }
    for (i, tap) in ["tap0", "tap1"].iter().enumerate() {
        args.push("--net".into());
        args.push(format!("tap={tap},mac=06:00:ac:10:00:1{i}"));
    }
    let r = ns.strato(&args, Duration::from_secs(60));
    r.assert_ok();
    for (i, data) in images.iter().enumerate() {
        let first: String = data[..8].iter().map(|b| format!("{b:02x}")).collect();
        let line = format!("many: blk {i} capacity 128 first-bytes {first}");
        assert!(
            r.lines().contains(&line.as_str()),
            "missing {line:?}: {r:#?}"
        );
    }
    assert!(r.lines().contains(&"many: 4 blk 2 net"), "{r:#?}");
    for (i, l) in listeners.into_iter().enumerate() {
        let f = l.join().unwrap().expect("no frame on the tap");
        assert_eq!(f[6..12], [0x06, 0x00, 0xac, 0x10, 0x00, 0x10 + i as u8]);
        assert!(f[14..].starts_with(format!("strato-many-{i}").as_bytes()));
    }
}

/// A NIC's receive rate limiter holds the guest to its rate. Once the
/// guest (`net-bench mode=rx`) has posted its buffers, the host sends 800
/// frames of 1514 bytes at once into the tap (its queue holds 1000). At
/// 1 MiB/s from a 128 KiB bucket (full at the start) the last 1.08 MB wait
/// 1.03 s; at 400 frames a second from a bucket of 100, 700 frames wait
/// 1.75 s. Measured from the first frame sent to strato's exit; each run
/// may take what the unlimited one took on top.
#[test]
fn a_nic_s_receive_rate_limiter_holds_the_guest_to_its_rate() {
    const COUNT: usize = 800;
    let ns = Netns::new("net-rx-rate", &["tap0"]);
    let dir = strato_tests::Scratch::new("net-rx-rate");
    let mut n = 0;
    let mut run = |limiter: &str| {
        n += 1;
        let cfg = dir.file(
            &format!("cfg{n}.json"),
            format!(
                r#"{{"boot-source":{{"kernel_image_path":"{}","boot_args":"console=ttyS0 mode=rx count={COUNT}"}},
                "machine-config":{{"vcpu_count":1,"mem_size_mib":32}},
                "network-interfaces":[{{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"{limiter}}}]}}"#,
                guest("net-bench").display()
            )
            .as_bytes(),
        );
        let console = dir.0.join(format!("console{n}.log"));
        let watched = console.clone();
        let sender = ns.run(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !std::fs::read_to_string(&watched)
                .unwrap_or_default()
                .contains("net-bench: rx ready")
            {
                assert!(Instant::now() < deadline, "the guest never got ready");
                std::thread::sleep(Duration::from_millis(2));
            }
            let sock = Packet::open("tap0");
            let mut f = frame(
                [0x06, 0x00, 0xac, 0x10, 0x00, 0x02],
                [6, 0, 0, 0, 0, 1],
                b"strato-rate",
            );
            f.resize(1514, 0);
            let sent = Instant::now();
            for _ in 0..COUNT {
                sock.send(&f);
            }
            sent
        });
        let r = ns.strato(
            &[
                "vm",
                "--config-file",
                &cfg,
                "--no-api",
                "--console-log",
                console.to_str().unwrap(),
            ],
            Duration::from_secs(60),
        );
        let end = Instant::now();
        let sent = sender.join().unwrap();
        r.assert_ok();
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        assert!(
            text.contains(&format!("net-bench: rx {COUNT} done")),
            "{text}"
        );
        end - sent
    };
    for (limiter, want) in [
        (
            r#","rx_rate_limiter":{"bandwidth":{"size":131072,"refill_time":125}}"#,
            Duration::from_millis(1030),
        ),
        (
            r#","rx_rate_limiter":{"ops":{"size":100,"refill_time":250}}"#,
            Duration::from_millis(1750),
        ),
    ] {
        let free = run("");
        let took = run(limiter);
        strato_tests::assert_rate(limiter, took, want, free);
    }
}
