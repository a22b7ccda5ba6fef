use super::*;
use crate::virtio::test_utils::{make_available, ring_queue, used_entry, write_desc};

/// Where the tests' region starts: above the 16 MiB the rings use.
const REGION: u64 = 64 << 20;
/// The tests' blocks (1 MiB) and slots (4 MiB); 8 MiB in all.
const BLOCK: u64 = 1 << 20;
const SLOT: u64 = 4 << 20;

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(u64, bool)>>>, Arc<Mutex<bool>>);

impl Slots for Recorder {
    fn set(&mut self, index: u64, present: bool) -> std::io::Result<()> {
        if present && *self.1.lock().unwrap() {
            return Err(std::io::Error::other("no more memory slots"));
        }
        self.0.lock().unwrap().push((index, present));
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    dev: Mem,
    slots: Recorder,
    /// Requests made so far (each uses descriptors 2n, 2n + 1).
    n: u16,
}

impl Rig {
    fn new() -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 16 << 20),
            (GuestAddress(REGION), 8 << 20),
        ])
        .unwrap();
        let slots = Recorder::default();
        let signals = Arc::new(DeviceSignals::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        let mut dev = Mem::with_sizes(
            MemConfig {
                total_size_mib: 8,
                slot_size_mib: 4,
                block_size_mib: 1,
            },
            REGION,
            BLOCK,
            SLOT,
            Box::new(slots.clone()),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            signals,
        );
        dev.activate(mem.clone(), 0, vec![ring_queue(0, 64)])
            .unwrap();
        Rig {
            mem,
            dev,
            slots,
            n: 0,
        }
    }

    /// Sends one request; returns the answer's type and state.
    fn request(&mut self, kind: u16, addr: u64, nb_blocks: u16) -> (u16, u16) {
        let i = self.n;
        self.n += 1;
        let (req, resp) = (0x4000 + 0x100 * u64::from(i), 0x8000 + 0x100 * u64::from(i));
        let mut b = [0u8; REQ_LEN];
        b[..2].copy_from_slice(&kind.to_le_bytes());
        b[8..16].copy_from_slice(&addr.to_le_bytes());
        b[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
        self.mem.write_slice(&b, GuestAddress(req)).unwrap();
        write_desc(&self.mem, 0, 2 * i, (req, REQ_LEN as u32, 1, 2 * i + 1));
        write_desc(&self.mem, 0, 2 * i + 1, (resp, RESP_LEN as u32, 2, 0));
        make_available(&self.mem, 0, &[2 * i]);
        self.dev.process_queue();
        assert_eq!(
            used_entry(&self.mem, 0, i),
            (u32::from(2 * i), RESP_LEN as u32)
        );
        let kind: u16 = self.mem.read_obj(GuestAddress(resp)).unwrap();
        let state: u16 = self.mem.read_obj(GuestAddress(resp + 8)).unwrap();
        (kind, state)
    }

    fn config_u64(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_config(at, &mut b);
        u64::from_le_bytes(b)
    }
}

const ACK: (u16, u16) = (0, 0);
const NACK: (u16, u16) = (1, 0);
const ERROR: (u16, u16) = (3, 0);

#[test]
fn sizes_are_checked_as_firecracker_does() {
    assert_eq!(MemConfig::new(1024).validate(), Ok(()));
    let c = |total, slot, block| MemConfig {
        total_size_mib: total,
        slot_size_mib: slot,
        block_size_mib: block,
    };
    assert_eq!(c(1024, 128, 3).validate(), Err(Error::BlockSize(3)));
    assert_eq!(c(1024, 128, 1).validate(), Err(Error::BlockSize(1)));
    assert_eq!(c(1024, 64, 2).validate(), Err(Error::SlotSize(64, 2)));
    assert_eq!(c(1024, 130, 4).validate(), Err(Error::SlotSize(130, 4)));
    assert_eq!(
        c(1000, 128, 2).validate(),
        Err(Error::TotalNotSlots(1000, 128))
    );
    assert_eq!(c(0, 128, 2).validate(), Err(Error::TotalSize(0)));
    assert_eq!(
        c(MAX_TOTAL_MIB + 128, 128, 2).validate(),
        Err(Error::TotalSize(MAX_TOTAL_MIB + 128))
    );
    assert_eq!(c(256, 256, 256).validate(), Ok(()));
}

#[test]
fn the_block_map_counts_per_slot_and_finds_runs() {
    let mut m = BlockMap::new(130, 64);
    assert_eq!(m.state(0, 130), State::Unplugged);
    assert_eq!(m.slots_to_show(60, 10), vec![0, 1]);
    assert!(m.set(60, 10, true).is_empty());
    assert_eq!(m.count, 10);
    assert_eq!(m.state(60, 10), State::Plugged);
    assert_eq!(m.state(59, 2), State::Mixed);
    assert_eq!(m.slots_to_show(0, 130), vec![2]);
    assert!(m.set(129, 1, true).is_empty());
    assert_eq!(m.runs(), vec![(60, 10), (129, 1)]);
    assert_eq!(m.set(60, 4, false), vec![0]);
    assert_eq!(m.set(129, 1, false), vec![2]);
    assert_eq!(m.set(64, 6, false), vec![1]);
    assert_eq!(m.count, 0);
    assert!(m.runs().is_empty());
}

#[test]
fn nothing_is_plugged_beyond_the_requested_size() {
    let mut r = Rig::new();
    assert_eq!(r.request(REQ_PLUG, REGION, 1), NACK);
    assert!(r.slots.take().is_empty());
    r.dev.shared().set_requested_mib(2).unwrap();
    assert_eq!(r.config_u64(48), 2 << 20);
    assert_eq!(r.request(REQ_PLUG, REGION, 3), NACK);
    assert_eq!(r.request(REQ_PLUG, REGION, 2), ACK);
    assert_eq!(r.request(REQ_PLUG, REGION + 2 * BLOCK, 1), NACK);
    assert_eq!(r.dev.shared().status().plugged_size_mib, 2);
    assert_eq!(r.config_u64(40), 2 << 20);
}

#[test]
fn plugging_maps_each_slot_once_and_unplugging_the_last_block_hides_it() {
    let mut r = Rig::new();
    r.dev.shared().set_requested_mib(8).unwrap();
    // Blocks 3-4 straddle slots 0 and 1.
    assert_eq!(r.request(REQ_PLUG, REGION + 3 * BLOCK, 2), ACK);
    assert_eq!(r.slots.take(), vec![(0, true), (1, true)]);
    assert_eq!(r.request(REQ_PLUG, REGION, 3), ACK);
    assert!(r.slots.take().is_empty(), "slot 0 was already mapped");
    assert_eq!(r.request(REQ_STATE, REGION, 4), (0, 0));
    assert_eq!(r.request(REQ_STATE, REGION + 4 * BLOCK, 2), (0, 2));
    assert_eq!(r.request(REQ_STATE, REGION + 6 * BLOCK, 2), (0, 1));

    // The guest's data in block 4, then an unplug of it: slot 1 goes, and
    // the block reads as zeros again.
    let at = GuestAddress(REGION + 4 * BLOCK + 0x10);
    r.mem.write_obj(0x5eed_u64, at).unwrap();
    assert_eq!(r.request(REQ_UNPLUG, REGION + 4 * BLOCK, 1), ACK);
    assert_eq!(r.slots.take(), vec![(1, false)]);
    assert_eq!(r.mem.read_obj::<u64>(at).unwrap(), 0);
    assert_eq!(r.dev.shared().status().plugged_size_mib, 4);

    // Unplugging what is not plugged, or a mix, is an error and changes
    // nothing.
    assert_eq!(r.request(REQ_UNPLUG, REGION + 3 * BLOCK, 2), ERROR);
    assert_eq!(r.request(REQ_PLUG, REGION + 3 * BLOCK, 2), ERROR);
    assert_eq!(r.dev.shared().status().plugged_size_mib, 4);

    assert_eq!(r.request(REQ_UNPLUG_ALL, 0, 0), ACK);
    assert_eq!(r.slots.take(), vec![(0, false)]);
    assert_eq!(r.dev.shared().status().plugged_size_mib, 0);
    assert_eq!(r.request(REQ_STATE, REGION, 8), (0, 1));
}

#[test]
fn requests_outside_the_region_or_between_blocks_are_errors() {
    let mut r = Rig::new();
    r.dev.shared().set_requested_mib(8).unwrap();
    assert_eq!(r.request(REQ_PLUG, REGION + 0x1000, 1), ERROR);
    assert_eq!(r.request(REQ_PLUG, REGION - BLOCK, 1), ERROR);
    assert_eq!(r.request(REQ_PLUG, REGION + 7 * BLOCK, 2), ERROR);
    assert_eq!(r.request(REQ_PLUG, REGION, 0), ERROR);
    assert_eq!(r.request(REQ_PLUG, u64::MAX - 10, u16::MAX), ERROR);
    assert_eq!(r.request(REQ_STATE, REGION + 8 * BLOCK, 1), ERROR);
    assert_eq!(r.request(9, REGION, 1), ERROR);
    assert!(r.slots.take().is_empty());
    assert_eq!(r.dev.shared().status().plugged_size_mib, 0);
}

#[test]
fn a_slot_the_host_cannot_map_fails_the_plug() {
    let mut r = Rig::new();
    r.dev.shared().set_requested_mib(8).unwrap();
    assert_eq!(r.request(REQ_PLUG, REGION, 1), ACK);
    assert_eq!(r.slots.take(), vec![(0, true)]);
    *r.slots.1.lock().unwrap() = true;
    assert_eq!(r.request(REQ_PLUG, REGION + 3 * BLOCK, 2), ERROR);
    assert!(r.slots.take().is_empty());
    assert_eq!(r.request(REQ_STATE, REGION + 3 * BLOCK, 2), (0, 1));
    assert_eq!(r.dev.shared().status().plugged_size_mib, 1);
}

#[test]
fn the_requested_size_is_whole_blocks_within_the_region() {
    let r = Rig::new();
    let s = r.dev.shared();
    assert_eq!(s.set_requested_mib(9), Err(Error::TooLarge(9, 8)));
    assert_eq!(s.set_requested_mib(8), Ok(()));
    let block2 = Mem::new(
        MemConfig::new(256),
        1 << 32,
        Box::new(Recorder::default()),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        Arc::new(DeviceSignals::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        )),
    )
    .unwrap();
    assert_eq!(
        block2.shared().set_requested_mib(3),
        Err(Error::NotBlocks(3, 2))
    );
    assert_eq!(
        block2.shared().status(),
        MemStatus {
            total_size_mib: 256,
            slot_size_mib: 128,
            block_size_mib: 2,
            plugged_size_mib: 0,
            requested_size_mib: 0,
        }
    );
}

#[test]
fn a_short_request_is_answered_with_nothing() {
    let mut r = Rig::new();
    write_desc(&r.mem, 0, 0, (0x4000, 8, 1, 1));
    write_desc(&r.mem, 0, 1, (0x8000, RESP_LEN as u32, 2, 0));
    make_available(&r.mem, 0, &[0]);
    r.dev.process_queue();
    assert_eq!(used_entry(&r.mem, 0, 0), (0, 0));
}
