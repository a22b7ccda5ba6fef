use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{make_available, mem, ring_queue, used_idx, write_desc};

const WRITE: u16 = 2;

fn signals() -> Arc<DeviceSignals> {
    Arc::new(DeviceSignals::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ))
}

fn balloon(cfg: BalloonConfig) -> Balloon {
    let evts = (0..Balloon::MAX_QUEUES)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    Balloon::new(&cfg, 16, evts, signals()).unwrap()
}

fn activate(b: &mut Balloon, features: u64) -> GuestMemoryMmap {
    let m = mem();
    let n = QueueMap::new(features).count() as u64;
    let queues = (0..n).map(|q| ring_queue(q, 16)).collect();
    b.activate(m.clone(), features, queues).unwrap();
    m
}

/// Puts a buffer of `pfns` at `at` on queue `q` as chain `head`.
fn pfn_buffer(m: &GuestMemoryMmap, q: u64, head: u16, at: u64, pfns: &[u32]) {
    for (i, p) in pfns.iter().enumerate() {
        m.write_obj(*p, GuestAddress(at + 4 * i as u64)).unwrap();
    }
    write_desc(m, q, head, (at, 4 * pfns.len() as u32, 0, 0));
    make_available(m, q, &[head]);
}

#[test]
fn inflated_pages_in_any_order_are_released_in_ranges() {
    let mut b = balloon(BalloonConfig::default());
    let m = activate(&mut b, 0);
    // 16 pages, as Linux lists them (mostly descending, a repeat), then a
    // gap and one page more: two ranges, two madvise calls.
    let mut pfns: Vec<u32> = (0x400..0x410).rev().collect();
    pfns.insert(3, 0x405);
    pfns.push(0x420);
    for p in &pfns {
        m.write_obj(0x5a5a_5a5au32, GuestAddress(u64::from(*p) * PAGE_SIZE))
            .unwrap();
    }
    pfn_buffer(&m, 0, 0, 0x8000, &pfns);
    b.process_pages(INFLATE);
    assert_eq!(used_idx(&m, 0), 1);
    assert_eq!(b.released_ranges, 2);
    for p in &pfns {
        let v: u32 = m.read_obj(GuestAddress(u64::from(*p) * PAGE_SIZE)).unwrap();
        assert_eq!(v, 0, "page {p:#x}");
    }
}

#[test]
fn inflated_pages_are_released_and_read_as_zeros() {
    let mut b = balloon(BalloonConfig::default());
    let m = activate(&mut b, 0);
    // Pages 0x400-0x403 (4-5 MiB region) hold data.
    for pfn in 0x400u64..0x404 {
        m.write_obj(0xdead_beefu32, GuestAddress(pfn * PAGE_SIZE + 8))
            .unwrap();
    }
    // Contiguous, then a gap, then one outside guest memory (skipped).
    pfn_buffer(&m, 0, 0, 0x8000, &[0x400, 0x401, 0x403, 0xffff_ffff]);
    b.process_pages(INFLATE);
    assert_eq!(used_idx(&m, 0), 1);
    for (pfn, want) in [(0x400u64, 0), (0x401, 0), (0x402, 0xdead_beef), (0x403, 0)] {
        let v: u32 = m.read_obj(GuestAddress(pfn * PAGE_SIZE + 8)).unwrap();
        assert_eq!(v, want, "page {pfn:#x}");
    }
    // Deflate only returns the buffer.
    m.write_obj(7u32, GuestAddress(0x402 * PAGE_SIZE)).unwrap();
    pfn_buffer(&m, 1, 0, 0x9000, &[0x402]);
    b.process_pages(DEFLATE);
    assert_eq!(used_idx(&m, 1), 1);
    assert_eq!(
        m.read_obj::<u32>(GuestAddress(0x402 * PAGE_SIZE)).unwrap(),
        7
    );
}

#[test]
fn target_actual_and_config_space() {
    let mut b = balloon(BalloonConfig {
        amount_mib: 2,
        ..Default::default()
    });
    let shared = b.shared();
    let mut c = [0u8; 8];
    b.read_config(0, &mut c);
    assert_eq!(c, [0, 2, 0, 0, 0, 0, 0, 0]);
    shared.set_target_mib(8).unwrap();
    assert_eq!(shared.target_pages(), 8 * 256);
    assert_eq!(shared.set_target_mib(17), Err(Error::TooLarge(17, 16)));
    b.write_config(4, &100u32.to_le_bytes());
    assert_eq!(shared.actual_pages(), 100);
    // Only `actual` is writable.
    b.write_config(0, &5u32.to_le_bytes());
    b.write_config(4, &[1]);
    assert_eq!(
        (shared.target_pages(), shared.actual_pages()),
        (8 * 256, 100)
    );
    b.reset();
    assert_eq!(shared.actual_pages(), 0);
    assert!(Balloon::new(
        &BalloonConfig {
            amount_mib: 17,
            ..Default::default()
        },
        16,
        Vec::new(),
        signals()
    )
    .is_err());
}

#[test]
fn features_decide_the_queues() {
    let stats = 1u64 << F_STATS_VQ;
    let reporting = 1u64 << F_REPORTING;
    let map = QueueMap::new(stats | reporting);
    assert_eq!(
        (map.stats, map.reporting, map.count()),
        (Some(2), Some(3), 4)
    );
    let map = QueueMap::new(reporting);
    assert_eq!((map.stats, map.reporting, map.count()), (None, Some(2), 3));
    assert_eq!(QueueMap::new(0).count(), 2);
    let b = balloon(BalloonConfig {
        stats_polling_interval_s: 1,
        deflate_on_oom: true,
        ..Default::default()
    });
    assert_ne!(b.features() & stats, 0);
    assert_ne!(b.features() & (1 << F_DEFLATE_ON_OOM), 0);
    assert_eq!(b.features() & reporting, 0);
    assert_eq!(b.queues_needed(stats), 3);
    let mut b = balloon(BalloonConfig::default());
    let m = mem();
    assert!(b
        .activate(m, stats, vec![ring_queue(0, 16), ring_queue(1, 16)])
        .is_err());
}

#[test]
fn statistics_are_read_and_the_buffer_held_until_the_poll() {
    let mut b = balloon(BalloonConfig {
        stats_polling_interval_s: 1,
        ..Default::default()
    });
    let shared = b.shared();
    let m = activate(&mut b, 1 << F_STATS_VQ);
    let mut raw = Vec::new();
    for (tag, v) in [(4u16, 1000u64), (5, 4000), (99, 1), (6, 3000)] {
        raw.extend_from_slice(&tag.to_le_bytes());
        raw.extend_from_slice(&v.to_le_bytes());
    }
    m.write_slice(&raw, GuestAddress(0x8000)).unwrap();
    write_desc(&m, 2, 0, (0x8000, raw.len() as u32, 0, 0));
    make_available(&m, 2, &[0]);
    b.process_stats();
    let s = shared.stats().unwrap().unwrap();
    assert_eq!(
        (s.free_memory, s.total_memory, s.available_memory, s.swap_in),
        (Some(1000), Some(4000), Some(3000), None)
    );
    assert_eq!(used_idx(&m, 2), 0, "held until the poll");
    b.timer.reset(Duration::from_millis(1), None).unwrap();
    b.poll_stats();
    assert_eq!(used_idx(&m, 2), 1);
    assert_eq!(shared.set_stats_interval(0), Err(Error::StatsOff));
    shared.set_stats_interval(5).unwrap();
    let none = balloon(BalloonConfig::default()).shared();
    assert_eq!(none.stats(), Err(Error::NoStats));
    assert_eq!(none.set_stats_interval(1), Err(Error::NoStats));
}

#[test]
fn reported_free_pages_are_released() {
    let mut b = balloon(BalloonConfig {
        free_page_reporting: true,
        ..Default::default()
    });
    let m = activate(&mut b, 1 << F_REPORTING);
    m.write_obj(0x1234u32, GuestAddress(0x60_0000)).unwrap();
    m.write_obj(0x1234u32, GuestAddress(0x70_0000)).unwrap();
    // One 1 MiB range, and one outside guest memory.
    write_desc(&m, 2, 0, (0x60_0000, 1 << 20, WRITE | 1, 1));
    write_desc(&m, 2, 1, (0x4000_0000, 1 << 20, WRITE, 0));
    make_available(&m, 2, &[0]);
    b.process_reporting();
    assert_eq!(used_idx(&m, 2), 1);
    assert_eq!(m.read_obj::<u32>(GuestAddress(0x60_0000)).unwrap(), 0);
    assert_eq!(m.read_obj::<u32>(GuestAddress(0x70_0000)).unwrap(), 0x1234);
}

#[test]
fn hostile_page_lists_are_survived() {
    let mut b = balloon(BalloonConfig::default());
    let m = activate(&mut b, 0);
    // A page list that is itself outside memory, an odd length, a huge
    // length ending past memory, and a loop of the same page.
    write_desc(&m, 0, 0, (0x4000_0000, 64, 0, 0));
    write_desc(&m, 0, 1, (0x8000, 7, 0, 0));
    write_desc(&m, 0, 2, (0xff_0000, 1 << 30, 0, 0));
    make_available(&m, 0, &[0, 1, 2]);
    pfn_buffer(&m, 0, 3, 0x9000, &[5; 64]);
    b.process_pages(INFLATE);
    assert_eq!(used_idx(&m, 0), 4);
}
