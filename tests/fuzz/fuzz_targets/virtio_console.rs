//! virtio-console transmit and receive over a guest memory the input
//! fills, with a pipe as the host input and a sink as the output.
//!
//! Input: `flags` (bits 0-2: receiveq size 2^n up to 16; bits 3-5:
//! transmitq size; bit 6: close the host input after writing it), `host`
//! (u16 length, then that many bytes of host input), `kicks` (count up to
//! 7, then one byte each: bit 7 picks the queue, bits 0-6 how many more
//! entries become available), then the guest memory image: receiveq rings
//! at 0x0, transmitq rings at 0x400.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::virtio::console::Console;
use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use strato_fuzz::{event_loop, guest_memory, kick_queues, queue_eventfds, ring_queue, run_ready};
use strato_fuzz::{signals, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let host_len = input.u16();
    let host = input.bytes(usize::from(host_len));
    let n_kicks = input.u8() % 8;
    let kicks = input.bytes(usize::from(n_kicks));
    let mem = guest_memory(input.rest());

    let (reader, mut writer) = std::io::pipe().expect("pipe");
    // The pipe holds 64 KiB, more than the largest input.
    writer.write_all(host).expect("host input");
    let writer = (flags & 0x40 == 0).then_some(writer);
    let (evts, notify) = queue_eventfds();
    let console = Console::new(
        Box::new(std::io::sink()),
        Some(reader.into()),
        evts,
        signals(),
    );
    let console = Arc::new(Mutex::new(console));
    let mut em = event_loop(console.clone());
    let queues = vec![ring_queue(0, flags & 7), ring_queue(1, (flags >> 3) & 7)];
    // Activation prints what the image already made available.
    console
        .lock()
        .unwrap()
        .activate(mem.clone(), 0, queues)
        .expect("activate");
    run_ready(&mut em);
    kick_queues(&mem, kicks, &notify, &mut em);
    drop(writer);
});
