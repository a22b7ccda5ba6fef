//! The metadata service as a hostile guest sees it: Ethernet frames sent
//! to its address, taken by its TCP/IP stack and HTTP server.
//!
//! Input: chunks of `[kind, len, bytes...]`. Kind 0 is a raw frame; kind 1
//! is a TCP segment to the service's port 80 from one of four guest ports,
//! with the chunk's sequence and acknowledgement numbers, flags and
//! payload, so requests (whole, split, pipelined, oversized, garbage)
//! reach the HTTP layer; kind 2 lets the service's timers run.
#![no_main]

use std::sync::{Arc, Mutex};

use devices::mmds::{Mmds, MmdsNet, MmdsStack, MmdsVersion, DEFAULT_IPV4};
use libfuzzer_sys::fuzz_target;

const GUEST_MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
const GUEST_IP: [u8; 4] = [172, 16, 0, 2];

fn segment(c: &[u8]) -> Vec<u8> {
    let get = |i: usize| c.get(i).copied().unwrap_or(0);
    let payload = c.get(10..).unwrap_or(&[]);
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&[0x06, 0x01, 0x23, 0x45, 0x67, 0x01]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (40 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&DEFAULT_IPV4.octets());
    // Source port 40000..40003, destination 80.
    f.extend_from_slice(&[0x9c, 0x40 + (get(0) & 3), 0, 80]);
    let word = |i: usize| [get(i), get(i + 1), get(i + 2), get(i + 3)];
    f.extend_from_slice(&word(1));
    f.extend_from_slice(&word(5));
    f.extend_from_slice(&[0x50, get(9) & 0x3f, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

fuzz_target!(|data: &[u8]| {
    let store = Arc::new(Mutex::new(Mmds::default()));
    {
        let mut s = store.lock().unwrap();
        s.configure(MmdsVersion::V2, false);
        let _ = s.put(serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-1"}}}));
    }
    let net = MmdsNet {
        store,
        ipv4: DEFAULT_IPV4,
    };
    let mut stack = MmdsStack::new(&net).expect("stack");
    let mut rest = data;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], usize::from(rest[1]) * 8);
        let chunk = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        match kind % 3 {
            0 => {
                if stack.wants(chunk) {
                    stack.receive(chunk.to_vec());
                }
            }
            1 => {
                let f = segment(chunk);
                assert!(stack.wants(&f));
                stack.receive(f);
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
        let mut n = 0;
        while let Some(f) = stack.next_frame() {
            assert!(f.len() <= 1514, "a frame larger than the link's MTU");
            n += 1;
        }
        assert!(n <= 256, "{n} frames for one input frame");
    }
});
