//! The virtio-mmio register interface: a driver's sequence of register
//! reads and writes against the transport of a real device, with queue
//! notifications delivered as KVM's ioeventfds deliver them.
//!
//! Input: `device` (0: block, 1: net, 2: console, 3: rng), then operations until
//! the input ends, each a byte `op` and its operands:
//! - op & 3 == 0: read `u16` offset (within the 4 KiB window), size
//!   1 << ((op >> 2) & 3);
//! - op & 3 == 1: write `u16` offset, size as for reads, then that many
//!   bytes of value;
//! - op & 3 == 2: write `u32` value to QueueNotify: values naming a queue
//!   kick its ioeventfd (the bus never sees them, as with KVM), the rest
//!   reach the transport; then the event loop runs;
//! - op & 3 == 3: the driver writes 8 bytes into guest memory at `u16`
//!   address (rings, requests, buffers).
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::console::Console;
use devices::virtio::mmio::{MmioTransport, MMIO_WINDOW, NOTIFY_OFFSET};
use devices::virtio::net::{Net, Tap};
use devices::virtio::rng::Rng;
use devices::virtio::{DeviceSignals, VirtioDevice};
use devices::BusDevice;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use strato_fuzz::{guest_memory, packet_pair, queue_eventfds, run_ready, signals, Input, MemFile};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The event loop's view of a device, as the VMM holds it.
type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A device for the transport, the same for the event loop, its queue
/// ioeventfds, and what must stay open beside it (the host ends of its
/// socket or pipe).
struct Rig {
    device: Arc<Mutex<dyn VirtioDevice>>,
    subscriber: Subscriber,
    kicks: Vec<EventFd>,
    _host: Option<Box<dyn Send>>,
}

impl Rig {
    fn new<D>(device: D, kicks: Vec<EventFd>, host: Option<Box<dyn Send>>) -> Rig
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let device = Arc::new(Mutex::new(device));
        Rig {
            device: device.clone(),
            subscriber: device,
            kicks,
            _host: host,
        }
    }
}

fn disk() -> &'static MemFile {
    static DISK: OnceLock<MemFile> = OnceLock::new();
    DISK.get_or_init(|| {
        let mut f = MemFile::new("fuzz-disk");
        f.set(&[0x5a; 16 * 1024]);
        f
    })
}

/// The device `which` on fresh eventfds.
fn rig(which: u8, signals: Arc<DeviceSignals>) -> Rig {
    let (evts, kicks) = queue_eventfds();
    match which % 4 {
        0 => {
            let cfg = BlockConfig {
                path: disk().path(),
                read_only: false,
                serial: None,
                rate_limiter: Default::default(),
            };
            let [evt, _] = evts;
            let block = Block::new(&cfg, evt, signals).expect("block device");
            Rig::new(block, kicks.into_iter().take(1).collect(), None)
        }
        1 => {
            let (ours, host) = packet_pair();
            let net = Net::with_tap(
                Tap::from_fd(ours, "fuzz0"),
                [6, 0, 0, 0, 0, 2],
                evts,
                signals,
            );
            Rig::new(net, kicks.into(), Some(Box::new(host)))
        }
        3 => {
            let [evt, _] = evts;
            let rng = Rng::new(evt, signals, &Default::default()).expect("rng device");
            Rig::new(rng, kicks.into_iter().take(1).collect(), None)
        }
        _ => {
            let (reader, mut writer) = std::io::pipe().expect("pipe");
            writer.write_all(b"host input\n").expect("host input");
            let console = Console::new(
                Box::new(std::io::sink()),
                Some(reader.into()),
                evts,
                signals,
            );
            Rig::new(console, kicks.into(), Some(Box::new(writer)))
        }
    }
}

fn poke(mem: &GuestMemoryMmap, addr: u16, bytes: &[u8]) {
    // Writes that straddle the end of RAM are cut short, as a driver's
    // stores would fault: fine either way.
    let _ = mem.write_slice(bytes, GuestAddress(u64::from(addr)));
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let which = input.u8();
    let mem = guest_memory(&[]);
    let signals = signals();
    let rig = rig(which, signals.clone());
    let mut em: EventManager<Subscriber> = EventManager::new().expect("epoll");
    em.add_subscriber(rig.subscriber.clone());
    let mut transport =
        MmioTransport::new(rig.device.clone(), signals, mem.clone()).expect("transport");

    while !input.is_empty() {
        let op = input.u8();
        let size = 1usize << ((op >> 2) & 3);
        match op & 3 {
            0 => {
                let offset = u64::from(input.u16()) % MMIO_WINDOW;
                let mut buf = [0u8; 8];
                transport.read(offset, &mut buf[..size]);
            }
            1 => {
                let offset = u64::from(input.u16()) % MMIO_WINDOW;
                let mut buf = [0u8; 8];
                let value = input.bytes(size);
                buf[..value.len()].copy_from_slice(value);
                transport.write(offset, &buf[..size]);
            }
            2 => {
                let value = input.u32();
                match rig.kicks.get(value as usize) {
                    Some(kick) => kick.write(1).expect("kick"),
                    None => transport.write(NOTIFY_OFFSET, &value.to_le_bytes()),
                }
                run_ready(&mut em);
            }
            _ => {
                let addr = input.u16();
                poke(&mem, addr, input.bytes(8));
            }
        }
    }
});
