/*
 * many: uses every virtio device on the command line.  Each block device
 * reads its sector 0; each network device sends one broadcast frame of
 * ethertype 0x88b5 carrying "strato-many-<n>".  One line per device:
 *   many: blk <n> capacity <sectors> first-bytes <16 hex digits>
 *   many: net <n> mac <mac> sent
 * then "many: <blk count> blk <net count> net".
 */
#include "virtio.h"

#define MAX_BLK 8
#define MAX_NET 4
#define VIRTIO_NET_F_MAC 5
#define NET_HDR_LEN 12

static struct blk disks[MAX_BLK];
static uint8_t sector[512] __attribute__((aligned(512)));
static struct virtq rxq[MAX_NET], txq[MAX_NET];
static uint8_t rxbuf[MAX_NET][2048] __attribute__((aligned(64)));
static uint8_t txbuf[MAX_NET][NET_HDR_LEN + 60] __attribute__((aligned(64)));

static bool use_blk(int n, struct vdev *d)
{
    if (blk_open(&disks[n], d, 512, "many"))
        return false;
    int st = blk_io(&disks[n], VIRTIO_BLK_T_IN, 0, sector, 512);
    if (st != 0) {
        print("many: blk %d read status %d\n", n, st);
        return false;
    }
    print("many: blk %d capacity %lu first-bytes ", n, disks[n].capacity);
    for (int i = 0; i < 8; i++)
        print("%02x", sector[i]);
    print("\n");
    return true;
}

static bool use_net(int n, struct vdev *d)
{
    if (virtio_start(d, 1ULL << VIRTIO_NET_F_MAC, "many"))
        return false;
    virtq_alloc(&rxq[n], d, 0, 16);
    virtq_alloc(&txq[n], d, 1, 16);
    if (virtq_setup(&rxq[n], 0, "many") < 1 || virtq_setup(&txq[n], 0, "many") < 1)
        return false;
    uint8_t mac[6];
    for (int i = 0; i < 6; i++)
        mac[i] = vcfg8(d, i);
    virtio_driver_ok(d);
    virtq_desc(&rxq[n], 0, rxbuf[n], sizeof(rxbuf[n]), VRING_DESC_F_WRITE, 0);
    virtq_push(&rxq[n], 0);
    virtq_notify(&rxq[n]);

    uint8_t *f = txbuf[n] + NET_HDR_LEN;
    memset(f, 0xff, 6);
    memcpy(f + 6, mac, 6);
    f[12] = 0x88;
    f[13] = 0xb5;
    memcpy(f + 14, "strato-many-", 12);
    f[26] = '0' + n;
    virtq_desc(&txq[n], 0, txbuf[n], sizeof(txbuf[n]), 0, 0);
    virtq_push(&txq[n], 0);
    virtq_notify(&txq[n]);
    struct vring_used_elem e;
    if (!virtq_wait(&txq[n], &e, deadline_ms(io_timeout_ms()))) {
        print("many: net %d tx timeout\n", n);
        return false;
    }
    print("many: net %d mac %02x:%02x:%02x:%02x:%02x:%02x sent\n", n,
          mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    return true;
}

void guest_main(void)
{
    virtio_discover();
    int blks = 0, nets = 0;
    struct vdev *d;
    for (int n = 0; n < MAX_BLK && (d = virtio_find(VIRTIO_ID_BLOCK, n)); n++)
        blks += use_blk(n, d);
    for (int n = 0; n < MAX_NET && (d = virtio_find(VIRTIO_ID_NET, n)); n++)
        nets += use_net(n, d);
    print("many: %d blk %d net\n", blks, nets);
}
