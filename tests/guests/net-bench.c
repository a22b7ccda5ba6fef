/*
 * net-bench: virtio-net throughput benchmark.
 *
 *   mode=tx count=<n> size=<bytes>  sends n frames of size bytes (60-1514,
 *       default 60; broadcast, ethertype 0x88b5, from the device's MAC) as
 *       fast as the transmit ring allows: every descriptor points at the
 *       same frame and the whole ring is kept in flight.  Prints
 *       "net-bench: tx start" before the first and "net-bench: tx <n>
 *       done" after the last.
 *   mode=rx count=<n>  posts the whole receive ring (2 KiB buffers),
 *       prints "net-bench: rx ready", and counts received frames of
 *       ethertype 0x88b5 until n.  Prints "net-bench: rx <got> done" (got >= n: the rest of the last batch
 *       counts too).
 *   batch=<k>     repost (and notify) once at least k descriptors have
 *       been used (default 1: as soon as any has).
 *   timeout=<ms>  longest wait for progress (default 10000): then
 *       "net-bench: tx timeout after <k> frames, status <hex>" or
 *       "net-bench: rx timeout after <k> frames (<m> others), status <hex>".
 *
 * Only VIRTIO_NET_F_MAC is negotiated (no offloads, no mergeable buffers).
 * The guest is slow (emulated), so its per-frame work is kept to a few
 * instructions: descriptor i sits in avail slot i for good, and reposting
 * k used descriptors is one store of the avail idx, followed by one
 * QueueNotify unless the device set VRING_USED_F_NO_NOTIFY; the avail rings
 * carry VRING_AVAIL_F_NO_INTERRUPT (the guest polls).  That needs the
 * device to use descriptors in the order they were made available (every
 * VMM does here); the last id of each batch is checked.  RX looks at two
 * bytes of each frame (its ethertype).
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC        5
#define NET_HDR_LEN             12      /* struct virtio_net_hdr_v1 */
#define ETHERTYPE_TEST          0x88b5
#define QCAP                    256
#define RX_BUF                  2048
#define MIN_FRAME               60
#define MAX_FRAME               1514
#define VRING_USED_F_NO_NOTIFY  1
#define VRING_AVAIL_F_NO_INTERRUPT 1

static struct virtq rxq, txq;
static uint8_t rxbuf[QCAP][RX_BUF] __attribute__((aligned(4096)));
static uint8_t txbuf[NET_HDR_LEN + MAX_FRAME] __attribute__((aligned(64)));

/* Full barrier: our avail idx store must be visible before we read the
 * device's used flags (the device does the mirror image). */
static inline void mb(void)
{
    __asm__ volatile("lock; orq $0, (%%rsp)" ::: "memory", "cc");
}

static void kick(struct virtq *q)
{
    mb();
    if (!(READ_ONCE(q->used->flags) & VRING_USED_F_NO_NOTIFY))
        virtq_notify(q);
}

/*
 * Wait until the used idx moves past q->last_used (or the deadline), and at
 * least `batch` entries or `left` of them have been used.  Returns how many
 * are new, 0 on timeout.  The device must use descriptors in the order they
 * were made available (every VMM does for these queues); the id of the last
 * new entry is checked against that.
 */
static int wait_used(struct virtq *q, uint16_t batch, uint64_t left, uint64_t timeout)
{
    uint64_t dl = deadline_ms(timeout);
    uint16_t want = left < batch ? (uint16_t)left : batch, k;
    while ((k = (uint16_t)(READ_ONCE(q->used->idx) - q->last_used)) < want || k == 0)
        if (expired(dl))
            return k ? k : 0;
    barrier();
    uint16_t last = q->last_used + k - 1;
    uint32_t id = ((volatile struct vring_used *)q->used)->ring[last & (q->size - 1)].id;
    if (id != (uint32_t)(last & (q->size - 1))) {
        print("net-bench: used id %u at position %u: not in order\n", id, last);
        return -1;
    }
    return k;
}

/* Make the next k entries of the (static, ring[i] = i) avail ring
 * available again. */
static void repost(struct virtq *q, uint16_t k)
{
    barrier();
    q->avail_idx += k;
    WRITE_ONCE(q->avail->idx, q->avail_idx);
}

static uint16_t batch_arg(uint16_t n)
{
    uint64_t b = arg_u64("batch", 1);
    return b < 1 ? 1 : b > n ? n : (uint16_t)b;
}

static void tx(struct vdev *d, uint64_t count)
{
    uint64_t size = arg_u64("size", MIN_FRAME);
    if (size < MIN_FRAME || size > MAX_FRAME) {
        print("net-bench: size must be %d-%d\n", MIN_FRAME, MAX_FRAME);
        return;
    }
    uint8_t *f = txbuf + NET_HDR_LEN;
    memset(f, 0xff, 6);
    for (int i = 0; i < 6; i++)
        f[6 + i] = vcfg8(d, i);
    f[12] = ETHERTYPE_TEST >> 8;
    f[13] = ETHERTYPE_TEST & 0xff;
    memcpy(f + 14, "strato-net-bench", 16);

    /* Descriptor i and avail slot i are frame i mod n, for good. */
    uint16_t n = txq.size, batch = batch_arg(n);
    for (uint16_t i = 0; i < n; i++) {
        virtq_desc(&txq, i, txbuf, NET_HDR_LEN + size, 0, 0);
        txq.avail->ring[i] = i;
    }
    uint64_t posted = MIN(count, n), done = 0, timeout = io_timeout_ms();
    print("net-bench: tx start\n");
    repost(&txq, posted);
    if (posted)
        kick(&txq);
    while (done < count) {
        int k = wait_used(&txq, batch, posted - done, timeout);
        if (k <= 0) {
            if (k == 0)
                print("net-bench: tx timeout after %lu frames, status %02x\n", done,
                      vstatus(d));
            return;
        }
        txq.last_used += k;
        done += k;
        uint64_t more = MIN((uint64_t)k, count - posted);
        if (more) {
            repost(&txq, more);
            posted += more;
            kick(&txq);
        }
    }
    print("net-bench: tx %lu done\n", done);
}

static void rx(struct vdev *d, uint64_t count)
{
    uint16_t n = rxq.size, mask = n - 1, batch = batch_arg(n);
    for (uint16_t i = 0; i < n; i++) {
        virtq_desc(&rxq, i, rxbuf[i], RX_BUF, VRING_DESC_F_WRITE, 0);
        rxq.avail->ring[i] = i;
    }
    repost(&rxq, n);
    kick(&rxq);
    print("net-bench: rx ready\n");
    uint64_t got = 0, seen = 0, timeout = io_timeout_ms();
    while (got < count) {
        int k = wait_used(&rxq, batch, (uint64_t)-1, timeout);
        if (k <= 0) {
            if (k == 0)
                print("net-bench: rx timeout after %lu frames (%lu others), status %02x\n",
                      got, seen - got, vstatus(d));
            return;
        }
        /* Count ours: ethertype at offset 12 of the frame, after the header. */
        for (uint16_t p = rxq.last_used, e = rxq.last_used + k; p != e; p++) {
            const uint8_t *b = rxbuf[p & mask] + NET_HDR_LEN + 12;
            got += *(const uint16_t *)b == ((ETHERTYPE_TEST & 0xff) << 8 | ETHERTYPE_TEST >> 8);
        }
        seen += k;
        rxq.last_used += k;
        repost(&rxq, k);
        kick(&rxq);
    }
    print("net-bench: rx %lu done\n", got);
}

void guest_main(void)
{
    bool is_tx = arg_eq("mode", "tx");
    if (!is_tx && !arg_eq("mode", "rx")) {
        print("net-bench: mode=tx or mode=rx\n");
        return;
    }
    uint64_t count = arg_u64("count", 1000);
    virtio_discover();
    struct vdev *d = virtio_find(VIRTIO_ID_NET, 0);
    if (!d) {
        print("net-bench: no network device\n");
        return;
    }
    if (virtio_start(d, 1ULL << VIRTIO_NET_F_MAC, "net-bench"))
        return;
    virtq_alloc(&rxq, d, 0, QCAP);
    virtq_alloc(&txq, d, 1, QCAP);
    if (virtq_setup(&rxq, 0, "net-bench") < 1 || virtq_setup(&txq, 0, "net-bench") < 1)
        return;
    /* Polling driver: no used-buffer interrupts wanted. */
    rxq.avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
    txq.avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
    virtio_driver_ok(d);
    if (is_tx)
        tx(d, count);
    else
        rx(d, count);
}
