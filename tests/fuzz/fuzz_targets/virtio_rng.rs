//! virtio-rng requests over a guest memory the input fills.
//!
//! Input: `flags` (bits 0-2: queue size 2^n up to 16), `kicks` (count up
//! to 7, then one byte each: bits 0-6 how many more entries become
//! available), then the guest memory image: the rings at 0x0.
#![no_main]

use std::sync::{Arc, Mutex};

use devices::virtio::rng::Rng;
use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use strato_fuzz::{event_loop, eventfd, guest_memory, post, ring_queue, run_ready, signals, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let n_kicks = input.u8() % 8;
    let kicks = input.bytes(usize::from(n_kicks));
    let mem = guest_memory(input.rest());

    let evt = eventfd();
    let notify = evt.try_clone().expect("eventfd");
    let rng = Arc::new(Mutex::new(Rng::new(evt, signals(), &Default::default()).expect("rng device")));
    let mut em = event_loop(rng.clone());
    // Activation kicks the queue: the event loop serves what the image
    // already made available.
    rng.lock()
        .unwrap()
        .activate(mem.clone(), 0, vec![ring_queue(0, flags & 7)])
        .expect("activate");
    run_ready(&mut em);
    for &more in kicks {
        post(&mem, 0, more & 0x7f);
        notify.write(1).expect("kick");
        run_ready(&mut em);
    }
});
