/*
 * net: virtio-net smoke test.  Prints the MAC, sends one broadcast frame of
 * ethertype 0x88b5 carrying "strato-net-tx", then waits for a frame of that
 * ethertype and prints its payload.  timeout=<ms> bounds each wait
 * (default 10000).
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC  5
#define NET_HDR_LEN       12        /* struct virtio_net_hdr_v1 */
#define ETHERTYPE_TEST    0x88b5
#define NRX               8
#define RX_BUF            2048

static struct virtq rxq, txq;
static uint8_t rxbuf[NRX][RX_BUF] __attribute__((aligned(64)));
static uint8_t txbuf[NET_HDR_LEN + 60] __attribute__((aligned(64)));

static void post_rx(uint16_t i)
{
    virtq_desc(&rxq, i, rxbuf[i], RX_BUF, VRING_DESC_F_WRITE, 0);
    virtq_push(&rxq, i);
}

void guest_main(void)
{
    virtio_discover();
    struct vdev *d = virtio_find(VIRTIO_ID_NET, 0);
    if (!d) {
        print("net: no network device\n");
        return;
    }
    if (virtio_start(d, 1ULL << VIRTIO_NET_F_MAC, "net"))
        return;
    virtq_alloc(&rxq, d, 0, 16);
    virtq_alloc(&txq, d, 1, 16);
    if (virtq_setup(&rxq, 0, "net") < NRX || virtq_setup(&txq, 0, "net") < 1) {
        print("net: queues too small\n");
        return;
    }
    uint8_t mac[6] = {0x02, 0, 0, 0, 0, 0x01};
    if (d->features & (1ULL << VIRTIO_NET_F_MAC))
        for (int i = 0; i < 6; i++)
            mac[i] = vcfg8(d, i);
    else
        print("net: MAC not offered, using 02:00:00:00:00:01\n");
    print("net: mac %02x:%02x:%02x:%02x:%02x:%02x\n",
          mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    virtio_driver_ok(d);

    for (uint16_t i = 0; i < NRX; i++)
        post_rx(i);
    virtq_notify(&rxq);

    /* TX: header (all zero) and the frame in one descriptor. */
    uint8_t *f = txbuf + NET_HDR_LEN;
    memset(f, 0xff, 6);
    memcpy(f + 6, mac, 6);
    f[12] = ETHERTYPE_TEST >> 8;
    f[13] = ETHERTYPE_TEST & 0xff;
    memcpy(f + 14, "strato-net-tx", 13);
    virtq_desc(&txq, 0, txbuf, sizeof(txbuf), 0, 0);
    virtq_push(&txq, 0);
    virtq_notify(&txq);
    struct vring_used_elem e;
    if (!virtq_wait(&txq, &e, deadline_ms(io_timeout_ms()))) {
        print("net: tx timeout, status %02x\n", vstatus(d));
        return;
    }
    print("net: sent\n");

    uint64_t dl = deadline_ms(io_timeout_ms());
    while (virtq_wait(&rxq, &e, dl)) {
        if (e.id >= NRX) {
            print("net: bad rx used id %u\n", e.id);
            return;
        }
        uint8_t *b = rxbuf[e.id];
        uint32_t len = MIN(e.len, RX_BUF);
        if (len >= NET_HDR_LEN + 14 &&
            b[NET_HDR_LEN + 12] == ETHERTYPE_TEST >> 8 &&
            b[NET_HDR_LEN + 13] == (ETHERTYPE_TEST & 0xff)) {
            char s[33];
            uint32_t n = 0, max = MIN(len - NET_HDR_LEN - 14, 32);
            const uint8_t *p = b + NET_HDR_LEN + 14;
            while (n < max && p[n]) {
                s[n] = (p[n] >= 0x20 && p[n] < 0x7f) ? p[n] : '.';
                n++;
            }
            s[n] = 0;
            print("net: rx %s\n", s);
            return;
        }
        post_rx(e.id);              /* not ours: give the buffer back */
        virtq_notify(&rxq);
    }
    print("net: rx timeout\n");
}
