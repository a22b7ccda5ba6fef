//! virtio-block request processing over a guest memory the input fills.
//!
//! Input: `flags` (bits 0-2: queue size 2^n up to 16; bit 3: read-only;
//! bit 4: EVENT_IDX), `kicks` (count, then that many bytes: entries made
//! available before each further kick), then the guest memory image from
//! address 0: queue 0's rings at 0x0, 0x100 and 0x200 (see `ring_addrs`),
//! requests and buffers anywhere. The backing image is 64 KiB in memory.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::{VirtioDevice, VIRTIO_RING_F_EVENT_IDX};
use libfuzzer_sys::fuzz_target;
use strato_fuzz::{event_loop, eventfd, guest_memory, post, ring_queue, run_ready, signals};
use strato_fuzz::{Input, MemFile};

/// The disk image: 128 sectors, made once per process.
fn disk() -> &'static MemFile {
    static DISK: OnceLock<MemFile> = OnceLock::new();
    DISK.get_or_init(|| {
        let mut f = MemFile::new("fuzz-disk");
        f.set(&[0xa5; 64 * 1024]);
        f
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let n_kicks = input.u8() % 8;
    let kicks = input.bytes(usize::from(n_kicks));
    let mem = guest_memory(input.rest());

    let cfg = BlockConfig {
        path: disk().path(),
        read_only: flags & 0x08 != 0,
        serial: Some("fuzz-serial".into()),
        rate_limiter: Default::default(),
    };
    let evt = eventfd();
    let notify = evt.try_clone().expect("eventfd");
    let block = Block::new(&cfg, evt, signals()).expect("block device");
    let block = Arc::new(Mutex::new(block));
    let mut em = event_loop(block.clone());
    let features = if flags & 0x10 != 0 {
        VIRTIO_RING_F_EVENT_IDX
    } else {
        0
    };
    // Activation kicks the queue: the event loop serves what the image
    // already made available.
    block
        .lock()
        .unwrap()
        .activate(mem.clone(), features, vec![ring_queue(0, flags & 7)])
        .expect("activate");
    run_ready(&mut em);
    for &more in kicks {
        post(&mem, 0, more);
        notify.write(1).expect("kick");
        run_ready(&mut em);
    }
});
