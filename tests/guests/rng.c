/*
 * rng: virtio-rng (entropy) smoke test.  Posts three device-writable
 * buffers (64, 64 and 16 bytes), notifies once, waits for all three and
 * reports how many bytes came back and how many distinct byte values they
 * hold.  Progress goes to COM1.  timeout=<ms> bounds each wait (default
 * 10000).
 */
#include "virtio.h"

static struct virtq q;
static uint8_t buf[3][64] __attribute__((aligned(64)));
static const uint32_t want[3] = {64, 64, 16};

void guest_main(void)
{
    virtio_discover();
    struct vdev *d = virtio_find(VIRTIO_ID_RNG, 0);
    if (!d) {
        print("rng: no entropy device\n");
        return;
    }
    if (virtio_start(d, 0, "rng"))
        return;
    virtq_alloc(&q, d, 0, 16);
    if (virtq_setup(&q, 0, "rng") < 3) {
        print("rng: queue too small\n");
        return;
    }
    virtio_driver_ok(d);
    for (uint16_t i = 0; i < 3; i++) {
        virtq_desc(&q, i, buf[i], want[i], VRING_DESC_F_WRITE, 0);
        virtq_push(&q, i);
    }
    virtq_notify(&q);
    uint32_t total = 0;
    for (int n = 0; n < 3; n++) {
        struct vring_used_elem e;
        if (!virtq_wait(&q, &e, deadline_ms(io_timeout_ms()))) {
            print("rng: timeout, status %02x\n", vstatus(d));
            return;
        }
        if (e.id > 2 || e.len > want[e.id]) {
            print("rng: bad used element id %u len %u\n", e.id, e.len);
            return;
        }
        total += e.len;
    }
    static uint8_t seen[256];
    int distinct = 0;
    for (int i = 0; i < 3; i++)
        for (uint32_t j = 0; j < want[i]; j++)
            if (!seen[buf[i][j]]++)
                distinct++;
    print("rng: got %u bytes, %d distinct\n", total, distinct);
}
