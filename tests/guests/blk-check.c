/*
 * blk-check: reports what virtio-blk disk 0 offers and how it answers a
 * few requests.  NOTE: the write test stores a pattern ("strato-blk-check"
 * repeated) in sector 0 when the device accepts writes.
 */
#include "virtio.h"

static struct blk disk;
static uint8_t sector[512] __attribute__((aligned(512)));
static uint8_t id[20] __attribute__((aligned(64)));

static void print_status(const char *what, int st)
{
    if (st == BLK_TIMEOUT)
        print("blk: %s timeout\n", what);
    else if (st == BLK_BAD_ID)
        print("blk: %s bad-id\n", what);
    else
        print("blk: %s status %d\n", what, st);
}

void guest_main(void)
{
    virtio_discover();
    struct vdev *d = virtio_find(VIRTIO_ID_BLOCK, 0);
    if (!d) {
        print("blk: no block device\n");
        return;
    }
    if (blk_open(&disk, d, 512, "blk"))
        return;
    print("blk: capacity %lu\n", disk.capacity);
    print("blk: features ro=%d flush=%d\n",
          (int)(d->offered >> VIRTIO_BLK_F_RO) & 1,
          (int)(d->offered >> VIRTIO_BLK_F_FLUSH) & 1);

    int st = blk_io(&disk, VIRTIO_BLK_T_GET_ID, 0, id, sizeof(id));
    if (st == 0) {
        char s[21];
        int n = 0;
        while (n < 20 && id[n]) {
            uint8_t c = id[n];
            s[n++] = (c >= 0x20 && c < 0x7f) ? c : '.';
        }
        s[n] = 0;
        print("blk: id %s\n", s);
    } else {
        print_status("id", st);
    }

    static const char pat[] = "strato-blk-check";
    for (int i = 0; i < 512; i++)
        sector[i] = pat[i & 15];
    print_status("write", blk_io(&disk, VIRTIO_BLK_T_OUT, 0, sector, 512));

    print_status("read-past-end",
                 blk_io(&disk, VIRTIO_BLK_T_IN, disk.capacity, sector, 512));

    memset(sector, 0, 512);
    st = blk_io(&disk, VIRTIO_BLK_T_IN, 0, sector, 512);
    if (st < 0) {
        print_status("read", st);
        return;
    }
    print("blk: read status %d first-bytes ", st);
    for (int i = 0; i < 8; i++)
        print("%02x", sector[i]);
    print("\n");
}
