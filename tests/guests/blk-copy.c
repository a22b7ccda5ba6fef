/*
 * blk-copy: copies virtio-blk disk 0 to disk 1 in chunks, then flushes
 * disk 1.  With op=read or op=write it is a benchmark instead: count
 * requests of chunk KiB on disk 0, depth of them in flight.
 *
 *   chunk=<KiB>   request size, 1-1024 (default 64)
 *   op=read|write benchmark mode; count=<n> (default 1000), depth=<n>
 *                 (requests in flight, default 1)
 *   timeout=<ms>  wait for one request (default 10000)
 */
#include "virtio.h"

#define MAX_CHUNK (1024 * 1024)

static uint8_t buf[MAX_CHUNK] __attribute__((aligned(4096)));
static struct blk disk0, disk1;

static void print_error(const char *who, int st, uint64_t sector)
{
    if (st == BLK_TIMEOUT)
        print("%s: error timeout at sector %lu\n", who, sector);
    else if (st == BLK_BAD_ID)
        print("%s: error bad-id at sector %lu\n", who, sector);
    else
        print("%s: error %d at sector %lu\n", who, st, sector);
}

static void bench(struct vdev *d, uint32_t chunk, bool write)
{
    uint64_t count = arg_u64("count", 1000);
    uint64_t depth = arg_u64("depth", 1);
    uint32_t spc = chunk / 512;
    uint64_t slot_sector[BLK_MAX_SLOTS];

    if (blk_open(&disk0, d, chunk, "blk-bench"))
        return;
    if (disk0.capacity < spc) {
        print("blk-bench: disk of %lu sectors is smaller than one chunk\n",
              disk0.capacity);
        return;
    }
    if (depth < 1)
        depth = 1;
    if (depth > disk0.nslots)
        depth = disk0.nslots;
    uint32_t type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
    uint64_t sector = 0, posted = 0, done = 0;
    uint64_t timeout = io_timeout_ms();

    for (uint64_t s = 0; s < depth && posted < count; s++, posted++) {
        slot_sector[s] = sector;
        blk_post(&disk0, s, type, sector, buf, chunk);
        sector += spc;
        if (sector + spc > disk0.capacity)
            sector = 0;
    }
    virtq_notify(&disk0.q);
    while (done < count) {
        /* One blocking wait, then whatever else has completed. */
        uint64_t dl = deadline_ms(timeout);
        bool reposted = false;
        int s;
        while ((s = blk_complete(&disk0, dl)) >= 0) {
            int st = READ_ONCE(disk0.slots[s].status);
            if (st) {
                print_error("blk-bench", st, slot_sector[s]);
                return;
            }
            done++;
            if (posted < count) {
                slot_sector[s] = sector;
                blk_post(&disk0, s, type, sector, buf, chunk);
                sector += spc;
                if (sector + spc > disk0.capacity)
                    sector = 0;
                posted++;
                reposted = true;
            }
            dl = 0;                 /* no more waiting in this round */
        }
        if (s == BLK_BAD_ID || (s == BLK_TIMEOUT && dl)) {
            print("blk-bench: %s after %lu requests\n",
                  s == BLK_BAD_ID ? "bad used id" : "timeout", done);
            return;
        }
        if (reposted)
            virtq_notify(&disk0.q);
    }
    print("blk-bench: %lu requests done\n", done);
}

void guest_main(void)
{
    virtio_discover();
    uint64_t kib = arg_u64("chunk", 64);
    if (kib < 1 || kib > MAX_CHUNK / 1024) {
        print("blk-copy: chunk must be 1-%d KiB\n", MAX_CHUNK / 1024);
        return;
    }
    uint32_t chunk = kib * 1024;
    struct vdev *d0 = virtio_find(VIRTIO_ID_BLOCK, 0);
    if (!d0) {
        print("blk-copy: no block device\n");
        return;
    }
    if (arg_eq("op", "read") || arg_eq("op", "write")) {
        bench(d0, chunk, arg_eq("op", "write"));
        return;
    }
    struct vdev *d1 = virtio_find(VIRTIO_ID_BLOCK, 1);
    if (!d1) {
        print("blk-copy: need two block devices\n");
        return;
    }
    if (blk_open(&disk0, d0, chunk, "blk-copy") ||
        blk_open(&disk1, d1, chunk, "blk-copy"))
        return;
    uint64_t cap = disk0.capacity;
    if (disk1.capacity < cap) {
        print("blk-copy: disk 1 has %lu sectors, disk 0 %lu\n",
              disk1.capacity, cap);
        return;
    }
    uint32_t spc = chunk / 512;
    for (uint64_t s = 0; s < cap; s += spc) {
        uint32_t len = MIN(cap - s, spc) * 512;
        int st = blk_io(&disk0, VIRTIO_BLK_T_IN, s, buf, len);
        if (st == 0)
            st = blk_io(&disk1, VIRTIO_BLK_T_OUT, s, buf, len);
        if (st) {
            print_error("blk-copy", st, s);
            return;
        }
    }
    print("blk-copy: %lu sectors copied\n", cap);
    if (!(disk1.dev->features & (1ULL << VIRTIO_BLK_F_FLUSH))) {
        print("blk-copy: flush not offered\n");
        return;
    }
    int st = blk_io(&disk1, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
    if (st == 0)
        print("blk-copy: flush ok\n");
    else
        print_error("blk-copy", st, 0);
}
