//! virtio-net transmit and receive over a guest memory the input fills,
//! with a SOCK_SEQPACKET socket standing in for the tap.
//!
//! Input: `flags` (bits 0-2: receive queue size 2^n up to 16; bits 3-5:
//! transmit queue size; bit 6: MRG_RXBUF; bit 7: EVENT_IDX), `frames`
//! (count up to 7, then a u16 length each: frames the host sends, filled
//! with a pattern), `kicks` (count up to 7, then one byte each: bit 7 picks
//! the queue, bits 0-6 how many more entries become available), then the
//! guest memory image: receive rings at 0x0, transmit rings at 0x400.
#![no_main]

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::virtio::net::{Net, Tap, MAX_FRAME, VNET_HDR_LEN};
use devices::virtio::{VirtioDevice, VIRTIO_RING_F_EVENT_IDX};
use libfuzzer_sys::fuzz_target;
use strato_fuzz::{event_loop, guest_memory, kick_queues, packet_pair, queue_eventfds};
use strato_fuzz::{ring_queue, run_ready, signals, Input};

/// VIRTIO_NET_F_MRG_RXBUF.
const MRG_RXBUF: u64 = 1 << 15;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let n_frames = input.u8() % 8;
    let frames: Vec<usize> = (0..n_frames)
        .map(|_| usize::from(input.u16()) + VNET_HDR_LEN)
        .collect();
    let n_kicks = input.u8() % 8;
    let kicks = input.bytes(usize::from(n_kicks));
    let mem = guest_memory(input.rest());

    let (ours, host) = packet_pair();
    let (evts, notify) = queue_eventfds();
    let net = Net::with_tap(
        Tap::from_fd(ours, "fuzz0"),
        [6, 0, 0, 0, 0, 1],
        evts,
        signals(),
    );
    let net = Arc::new(Mutex::new(net));
    let mut em = event_loop(net.clone());
    let mut features = 0;
    if flags & 0x40 != 0 {
        features |= MRG_RXBUF;
    }
    if flags & 0x80 != 0 {
        features |= VIRTIO_RING_F_EVENT_IDX;
    }
    let queues = vec![ring_queue(0, flags & 7), ring_queue(1, (flags >> 3) & 7)];
    // Activation kicks the transmit queue: the event loop below sends what
    // the image already made available.
    net.lock()
        .unwrap()
        .activate(mem.clone(), features, queues)
        .expect("activate");

    for (i, &len) in frames.iter().enumerate() {
        let frame: Vec<u8> = (0..len).map(|b| (b + i) as u8).collect();
        // SAFETY: writes `frame` from a live buffer of that length; a full
        // socket buffer just drops it.
        unsafe { libc::write(host.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    }
    run_ready(&mut em);
    kick_queues(&mem, kicks, &notify, &mut em);

    // Every frame that reached the "tap" is one the device may send.
    let mut buf = vec![0u8; MAX_FRAME + 1];
    loop {
        // SAFETY: reads into `buf`, a live buffer of that length.
        let n = unsafe { libc::read(host.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            break;
        }
        assert!(n as usize <= MAX_FRAME, "a {n}-byte frame reached the tap");
    }
});
