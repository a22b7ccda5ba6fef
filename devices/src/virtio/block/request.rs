//! One virtio-block request: parsing a descriptor chain and doing the I/O.
//!
//! Every guest-controlled value (addresses, lengths, sector numbers, flags)
//! is checked here; guest memory is only reached through vm-memory.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::BlockMetrics;

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    kind: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: RequestHeader is plain data of integers, any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// How a request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A status byte was written; `used_len` bytes went to the guest.
    Done {
        /// Bytes written into device-writable buffers, status included.
        used_len: u32,
    },
    /// No status could be written: the device needs a reset.
    Malformed(&'static str),
}

/// Executes the request made of `descs` (the whole chain, in order)
/// against `file` of `capacity` sectors, counting it in `stats`.
pub fn execute(
    mem: &GuestMemoryMmap,
    file: &File,
    read_only: bool,
    capacity: u64,
    id: &[u8],
    descs: &[Descriptor],
    stats: &BlockMetrics,
) -> Outcome {
    let Some((status_desc, body)) = descs.split_last() else {
        stats.invalid_reqs_count.inc();
        return Outcome::Malformed("empty descriptor chain");
    };
    if status_desc.has_next() {
        // The chain was cut short: it loops or is longer than the queue.
        stats.invalid_reqs_count.inc();
        return Outcome::Malformed("descriptor chain loops or exceeds the queue size");
    }
    if !status_desc.is_write_only() || status_desc.len() < 1 {
        stats.invalid_reqs_count.inc();
        return Outcome::Malformed("no writable status byte at the end of the chain");
    }
    let host_failures = stats.execute_fails.get();
    let (status, data_len) = match run(mem, file, read_only, capacity, id, body, stats) {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(status) => {
            if stats.execute_fails.get() == host_failures {
                stats.invalid_reqs_count.inc();
            }
            (status, 0)
        }
    };
    if mem.write_obj(status as u8, status_desc.addr()).is_err() {
        return Outcome::Malformed("status byte outside guest memory");
    }
    Outcome::Done {
        used_len: data_len.saturating_add(1),
    }
}

/// Runs the request; Ok(bytes written to the guest) or Err(status). Data
/// moved, flushes and host I/O failures are counted in `stats`.
fn run(
    mem: &GuestMemoryMmap,
    file: &File,
    read_only: bool,
    capacity: u64,
    id: &[u8],
    body: &[Descriptor],
    stats: &BlockMetrics,
) -> Result<u32, u32> {
    let (hdr_desc, data) = body.split_first().ok_or(VIRTIO_BLK_S_IOERR)?;
    if hdr_desc.is_write_only() || (hdr_desc.len() as usize) < std::mem::size_of::<RequestHeader>()
    {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    let hdr: RequestHeader = mem
        .read_obj(hdr_desc.addr())
        .map_err(|_| VIRTIO_BLK_S_IOERR)?;
    match hdr.kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let write = hdr.kind == VIRTIO_BLK_T_OUT;
            if write && read_only {
                return Err(VIRTIO_BLK_S_IOERR);
            }
            // Data buffers must be device-writable for reads and
            // device-readable for writes.
            if data.iter().any(|d| d.is_write_only() == write) {
                return Err(VIRTIO_BLK_S_IOERR);
            }
            let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
            // The driver learns how much was read from a u32 used length;
            // no driver sends 4 GiB in one request.
            let total_u32 = u32::try_from(total).map_err(|_| VIRTIO_BLK_S_IOERR)?;
            let start = hdr
                .sector
                .checked_mul(SECTOR_SIZE)
                .ok_or(VIRTIO_BLK_S_IOERR)?;
            let end = start.checked_add(total).ok_or(VIRTIO_BLK_S_IOERR)?;
            if end > capacity * SECTOR_SIZE {
                return Err(VIRTIO_BLK_S_IOERR);
            }
            transfer(mem, file, data, start, write).map_err(|_| {
                stats.execute_fails.inc();
                VIRTIO_BLK_S_IOERR
            })?;
            if write {
                stats.write_count.inc();
                stats.write_bytes.add(total);
                Ok(0)
            } else {
                stats.read_count.inc();
                stats.read_bytes.add(total);
                Ok(total_u32)
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            if !read_only {
                file.sync_data().map_err(|_| {
                    stats.execute_fails.inc();
                    VIRTIO_BLK_S_IOERR
                })?;
            }
            stats.flush_count.inc();
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let d = data.first().ok_or(VIRTIO_BLK_S_IOERR)?;
            if !d.is_write_only() {
                return Err(VIRTIO_BLK_S_IOERR);
            }
            let n = id.len().min(d.len() as usize);
            mem.write_slice(&id[..n], d.addr())
                .map_err(|_| VIRTIO_BLK_S_IOERR)?;
            Ok(n as u32)
        }
        _ => Err(VIRTIO_BLK_S_UNSUPP),
    }
}

/// Drops `moved` bytes off the front of `iovs`: whole buffers, then part
/// of the next.
fn advance(iovs: &mut &mut [libc::iovec], mut moved: usize) {
    while moved > 0 {
        let Some(first) = iovs.first_mut() else {
            return;
        };
        if first.iov_len <= moved {
            moved -= first.iov_len;
            *iovs = &mut std::mem::take(iovs)[1..];
        } else {
            // SAFETY: `moved` < iov_len, so the pointer stays inside the
            // same buffer.
            first.iov_base = unsafe { first.iov_base.cast::<u8>().add(moved).cast() };
            first.iov_len -= moved;
            return;
        }
    }
}

/// Buffers handed to one vectored system call. A request has at most
/// the queue size of them (256: Linux sends one per page of a scattered
/// user buffer), so one call moves a whole request; the arrays live on the
/// stack, so serving a request allocates nothing.
const IOV_CHUNK: usize = 256;

/// Moves the request's data between the file at `offset` and the guest
/// buffers of `data`, in order, without an intermediate buffer: one
/// `preadv`/`pwritev` per [`IOV_CHUNK`] buffers, more only if the kernel
/// moves less.
fn transfer(
    mem: &GuestMemoryMmap,
    file: &File,
    data: &[Descriptor],
    offset: u64,
    to_file: bool,
) -> io::Result<()> {
    let mut offset = offset;
    for chunk in data.chunks(IOV_CHUNK) {
        let mut iovs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOV_CHUNK];
        let mut count = 0;
        for d in chunk.iter().filter(|d| d.len() > 0) {
            // Fails unless the buffer lies inside one guest RAM region.
            let slice = mem
                .get_slice(d.addr(), d.len() as usize)
                .map_err(|e| io::Error::other(e.to_string()))?;
            iovs[count] = libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: d.len() as usize,
            };
            count += 1;
        }
        let mut left = &mut iovs[..count];
        while !left.is_empty() {
            let off = libc::off64_t::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // At most IOV_CHUNK buffers: within Linux's UIO_MAXIOV (1024).
            let n_iovs = left.len() as libc::c_int;
            // SAFETY: each iovec points into guest RAM for at least its
            // length (checked by get_slice); the mapping belongs to `mem`,
            // borrowed for this whole call, so it stays mapped. The kernel
            // reads or writes only within the iovecs.
            let n = unsafe {
                if to_file {
                    libc::pwritev64(file.as_raw_fd(), left.as_ptr(), n_iovs, off)
                } else {
                    libc::preadv64(file.as_raw_fd(), left.as_ptr(), n_iovs, off)
                }
            };
            let moved = match n {
                n if n > 0 => n as usize,
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            offset += moved as u64;
            advance(&mut left, moved);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::mem;
    use std::io::{Read, Seek, Write};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestAddress;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x3000;

    fn image(sectors: u64) -> File {
        let mut f = tempfile();
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        f.write_all(&data).unwrap();
        f
    }

    fn tempfile() -> File {
        let p = std::env::temp_dir().join(format!(
            "strato-blk-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        m.write_obj(
            RequestHeader {
                kind,
                _reserved: 0,
                sector,
            },
            GuestAddress(HDR),
        )
        .unwrap();
    }

    fn chain(data: Descriptor) -> Vec<Descriptor> {
        vec![
            Descriptor::new(HDR, 16, NEXT, 1),
            data,
            Descriptor::new(STATUS, 1, WRITE, 0),
        ]
    }

    fn status(m: &GuestMemoryMmap) -> u32 {
        u32::from(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
    }

    fn exec(m: &GuestMemoryMmap, f: &File, ro: bool, descs: &[Descriptor]) -> Outcome {
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        execute(m, f, ro, 8, b"serial-1", descs, &BlockMetrics::default())
    }

    #[test]
    fn a_short_transfer_resumes_where_it_stopped() {
        let mut buf = [0u8; 30];
        let base = buf.as_mut_ptr();
        let at = |o: usize| {
            // SAFETY: every offset used is within `buf`.
            unsafe { base.add(o) }.cast::<libc::c_void>()
        };
        let mut v = [
            libc::iovec {
                iov_base: at(0),
                iov_len: 10,
            },
            libc::iovec {
                iov_base: at(10),
                iov_len: 5,
            },
            libc::iovec {
                iov_base: at(15),
                iov_len: 15,
            },
        ];
        let mut iovs = &mut v[..];
        advance(&mut iovs, 12);
        assert_eq!(iovs.len(), 2);
        assert_eq!((iovs[0].iov_base, iovs[0].iov_len), (at(12), 3));
        advance(&mut iovs, 3);
        assert_eq!(
            (iovs.len(), iovs[0].iov_base, iovs[0].iov_len),
            (1, at(15), 15)
        );
        advance(&mut iovs, 15);
        assert!(iovs.is_empty());
        advance(&mut iovs, 1);
    }

    /// A request scattered over several buffers, out of address order and
    /// of odd lengths (and an empty one), as a guest's page list makes
    /// it: the bytes land in order, and a write puts them back in order.
    #[test]
    fn scattered_buffers_move_in_chain_order() {
        let m = mem();
        let mut f = image(8);
        let bufs = [
            (DATA + 0x800, 700u32),
            (DATA, 0),
            (DATA + 0x100, 900),
            (DATA + 0x1800, 960),
        ];
        let mut descs = vec![Descriptor::new(HDR, 16, NEXT, 1)];
        for (i, (addr, len)) in bufs.iter().enumerate() {
            descs.push(Descriptor::new(*addr, *len, NEXT | WRITE, i as u16 + 2));
        }
        descs.push(Descriptor::new(STATUS, 1, WRITE, 0));
        header(&m, VIRTIO_BLK_T_IN, 2);
        assert_eq!(
            exec(&m, &f, false, &descs),
            Outcome::Done { used_len: 2561 }
        );
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);
        let mut pos = 2 * SECTOR_SIZE;
        for (addr, len) in bufs {
            let mut got = vec![0u8; len as usize];
            m.read_slice(&mut got, GuestAddress(addr)).unwrap();
            let want: Vec<u8> = (pos..pos + u64::from(len))
                .map(|i| (i % 251) as u8)
                .collect();
            assert_eq!(got, want, "buffer at {addr:#x}");
            pos += u64::from(len);
        }

        for (i, (addr, len)) in bufs.iter().enumerate() {
            m.write_slice(&vec![i as u8 + 1; *len as usize], GuestAddress(*addr))
                .unwrap();
            descs[i + 1] = Descriptor::new(*addr, *len, NEXT, i as u16 + 2);
        }
        header(&m, VIRTIO_BLK_T_OUT, 1);
        assert_eq!(exec(&m, &f, false, &descs), Outcome::Done { used_len: 1 });
        let mut back = vec![0u8; 2560];
        f.seek(std::io::SeekFrom::Start(SECTOR_SIZE)).unwrap();
        f.read_exact(&mut back).unwrap();
        let want: Vec<u8> = bufs
            .iter()
            .enumerate()
            .flat_map(|(i, (_, len))| vec![i as u8 + 1; *len as usize])
            .collect();
        assert_eq!(back, want);
    }

    #[test]
    fn requests_are_counted_for_the_metrics() {
        let m = mem();
        let f = image(8);
        let stats = BlockMetrics::default();
        let run = |kind, sector, desc| {
            header(&m, kind, sector);
            execute(&m, &f, false, 8, b"", &chain(desc), &stats)
        };
        run(
            VIRTIO_BLK_T_IN,
            1,
            Descriptor::new(DATA, 512, NEXT | WRITE, 2),
        );
        run(VIRTIO_BLK_T_OUT, 2, Descriptor::new(DATA, 1024, NEXT, 2));
        run(VIRTIO_BLK_T_FLUSH, 0, Descriptor::new(DATA, 0, NEXT, 2));
        // Unknown type; a read past the end of the image.
        run(99, 0, Descriptor::new(DATA, 512, NEXT | WRITE, 2));
        run(
            VIRTIO_BLK_T_IN,
            8,
            Descriptor::new(DATA, 512, NEXT | WRITE, 2),
        );
        use crate::metrics::Counters;
        let got: std::collections::HashMap<_, _> = stats.counters().into_iter().collect();
        assert_eq!(got["read_count"], 1);
        assert_eq!(got["read_bytes"], 512);
        assert_eq!(got["write_count"], 1);
        assert_eq!(got["write_bytes"], 1024);
        assert_eq!(got["flush_count"], 1);
        assert_eq!(got["invalid_reqs_count"], 2);
        assert_eq!(got["execute_fails"], 0);
    }

    #[test]
    fn read_write_flush_get_id() {
        let m = mem();
        let mut f = image(8);
        header(&m, VIRTIO_BLK_T_IN, 1);
        let out = exec(
            &m,
            &f,
            false,
            &chain(Descriptor::new(DATA, 512, NEXT | WRITE, 2)),
        );
        assert_eq!(out, Outcome::Done { used_len: 513 });
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(DATA)).unwrap(),
            (512 % 251) as u8
        );

        m.write_slice(&[7u8; 1024], GuestAddress(DATA)).unwrap();
        header(&m, VIRTIO_BLK_T_OUT, 6);
        let out = exec(&m, &f, false, &chain(Descriptor::new(DATA, 1024, NEXT, 2)));
        assert_eq!(out, Outcome::Done { used_len: 1 });
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);
        let mut back = [0u8; 1024];
        f.seek(std::io::SeekFrom::Start(6 * 512)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert_eq!(back, [7u8; 1024]);

        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let flush = vec![
            Descriptor::new(HDR, 16, NEXT, 1),
            Descriptor::new(STATUS, 1, WRITE, 0),
        ];
        assert_eq!(exec(&m, &f, false, &flush), Outcome::Done { used_len: 1 });
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);

        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        exec(
            &m,
            &f,
            false,
            &chain(Descriptor::new(DATA, 20, NEXT | WRITE, 2)),
        );
        let mut id = [0u8; 8];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"serial-1");

        header(&m, 99, 0);
        exec(&m, &f, false, &flush);
        assert_eq!(status(&m), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn bad_requests_fail_with_ioerr() {
        let m = mem();
        let f = image(8);
        let cases: Vec<(u32, u64, Descriptor, bool)> = vec![
            // Past the end, and a sector number whose byte offset overflows.
            (
                VIRTIO_BLK_T_IN,
                8,
                Descriptor::new(DATA, 512, NEXT | WRITE, 2),
                false,
            ),
            (
                VIRTIO_BLK_T_IN,
                7,
                Descriptor::new(DATA, 1024, NEXT | WRITE, 2),
                false,
            ),
            (
                VIRTIO_BLK_T_IN,
                u64::MAX / 2,
                Descriptor::new(DATA, 512, NEXT | WRITE, 2),
                false,
            ),
            // A read into a device-readable buffer.
            (
                VIRTIO_BLK_T_IN,
                0,
                Descriptor::new(DATA, 512, NEXT, 2),
                false,
            ),
            // A write from a device-writable buffer; a write to a RO disk.
            (
                VIRTIO_BLK_T_OUT,
                0,
                Descriptor::new(DATA, 512, NEXT | WRITE, 2),
                false,
            ),
            (
                VIRTIO_BLK_T_OUT,
                0,
                Descriptor::new(DATA, 512, NEXT, 2),
                true,
            ),
            // Buffers outside guest memory or wrapping the address space.
            (
                VIRTIO_BLK_T_IN,
                0,
                Descriptor::new(0x7f00_0000_0000, 512, NEXT | WRITE, 2),
                false,
            ),
            (
                VIRTIO_BLK_T_IN,
                0,
                Descriptor::new(u64::MAX - 100, 512, NEXT | WRITE, 2),
                false,
            ),
            (
                VIRTIO_BLK_T_OUT,
                0,
                Descriptor::new((16 << 20) - 256, 512, NEXT, 2),
                false,
            ),
        ];
        for (i, (kind, sector, data, ro)) in cases.into_iter().enumerate() {
            header(&m, kind, sector);
            assert_eq!(
                exec(&m, &f, ro, &chain(data)),
                Outcome::Done { used_len: 1 },
                "case {i}"
            );
            assert_eq!(status(&m), VIRTIO_BLK_S_IOERR, "case {i}");
        }
        // A header that is too short or device-writable.
        let short = vec![
            Descriptor::new(HDR, 8, NEXT, 1),
            Descriptor::new(STATUS, 1, WRITE, 0),
        ];
        exec(&m, &f, false, &short);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn chains_without_status_are_malformed() {
        let m = mem();
        let f = image(8);
        header(&m, VIRTIO_BLK_T_IN, 0);
        assert!(matches!(exec(&m, &f, false, &[]), Outcome::Malformed(_)));
        // Cut short by the iterator (a loop): the last descriptor has NEXT.
        let looped = vec![
            Descriptor::new(HDR, 16, NEXT, 0),
            Descriptor::new(STATUS, 1, WRITE | NEXT, 0),
        ];
        assert!(matches!(
            exec(&m, &f, false, &looped),
            Outcome::Malformed(_)
        ));
        // Status not writable, or outside memory.
        let ro_status = vec![
            Descriptor::new(HDR, 16, NEXT, 1),
            Descriptor::new(STATUS, 1, 0, 0),
        ];
        assert!(matches!(
            exec(&m, &f, false, &ro_status),
            Outcome::Malformed(_)
        ));
        let far_status = vec![
            Descriptor::new(HDR, 16, NEXT, 1),
            Descriptor::new(1 << 40, 1, WRITE, 0),
        ];
        assert!(matches!(
            exec(&m, &f, false, &far_status),
            Outcome::Malformed(_)
        ));
    }

    #[test]
    fn host_io_errors_become_ioerr() {
        let m = mem();
        // A file opened read-only makes pwrite fail with EBADF.
        let p = std::env::temp_dir().join(format!("strato-blk-ro-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let f = File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        header(&m, VIRTIO_BLK_T_OUT, 0);
        exec(&m, &f, false, &chain(Descriptor::new(DATA, 512, NEXT, 2)));
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn reads_over_4_gib_are_refused() {
        // Five 1 GiB buffers (the same guest RAM each time, which a
        // driver may do) over a sparse 6 GiB image: the used length could
        // not say how much was read.
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 30)]).unwrap();
        let f = tempfile();
        f.set_len(6 << 30).unwrap();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let mut descs = vec![Descriptor::new(HDR, 16, NEXT, 1)];
        for i in 1..=5 {
            descs.push(Descriptor::new(
                DATA,
                (1 << 30) - 0x4000,
                NEXT | WRITE,
                i + 1,
            ));
        }
        descs.push(Descriptor::new(STATUS, 1, WRITE, 0));
        let out = execute(
            &m,
            &f,
            false,
            (6 << 30) / SECTOR_SIZE,
            b"",
            &descs,
            &BlockMetrics::default(),
        );
        assert_eq!(out, Outcome::Done { used_len: 1 });
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    }
}
