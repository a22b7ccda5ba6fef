/*
 * console: virtio-console smoke test (port 0 only, no features).  Sends a
 * greeting through transmitq0, reads one line from receiveq0 and sends it
 * back.  Progress goes to COM1.  timeout=<ms> bounds each wait (default
 * 10000).
 */
#include "virtio.h"

#define NRX     4
#define RX_BUF  128
#define MAXLINE 128

static struct virtq rxq, txq;
static uint8_t rxbuf[NRX][RX_BUF] __attribute__((aligned(64)));
static char txbuf[MAXLINE + 16] __attribute__((aligned(64)));

static void post_rx(uint16_t i)
{
    virtq_desc(&rxq, i, rxbuf[i], RX_BUF, VRING_DESC_F_WRITE, 0);
    virtq_push(&rxq, i);
}

static int send(const char *s, size_t len)
{
    struct vring_used_elem e;
    memcpy(txbuf, s, len);
    virtq_desc(&txq, 0, txbuf, len, 0, 0);
    virtq_push(&txq, 0);
    virtq_notify(&txq);
    if (!virtq_wait(&txq, &e, deadline_ms(io_timeout_ms()))) {
        print("console: tx timeout, status %02x\n", vstatus(txq.dev));
        return -1;
    }
    return 0;
}

void guest_main(void)
{
    virtio_discover();
    struct vdev *d = virtio_find(VIRTIO_ID_CONSOLE, 0);
    if (!d) {
        print("console: no console device\n");
        return;
    }
    if (virtio_start(d, 0, "console"))
        return;
    virtq_alloc(&rxq, d, 0, 16);
    virtq_alloc(&txq, d, 1, 16);
    if (virtq_setup(&rxq, 0, "console") < NRX ||
        virtq_setup(&txq, 0, "console") < 1) {
        print("console: queues too small\n");
        return;
    }
    virtio_driver_ok(d);
    /* Receive buffers go in first so input sent right after the greeting
     * has somewhere to land. */
    for (uint16_t i = 0; i < NRX; i++)
        post_rx(i);
    virtq_notify(&rxq);

    print("console: ready\n");
    static const char hello[] = "hvc: hello from the guest\n";
    if (send(hello, sizeof(hello) - 1))
        return;

    char line[MAXLINE];
    size_t n = 0;
    bool eol = false;
    struct vring_used_elem e;
    while (!eol) {
        if (!virtq_wait(&rxq, &e, deadline_ms(io_timeout_ms()))) {
            print("console: rx timeout after %u bytes\n", (unsigned)n);
            return;
        }
        if (e.id >= NRX) {
            print("console: bad rx used id %u\n", e.id);
            return;
        }
        uint32_t len = MIN(e.len, RX_BUF);
        for (uint32_t i = 0; i < len && !eol; i++) {
            char c = rxbuf[e.id][i];
            if (c == '\n')
                eol = true;
            else if (c != '\r' && n < MAXLINE)
                line[n++] = c;
        }
        post_rx(e.id);
        virtq_notify(&rxq);
    }
    char out[MAXLINE + 16];
    memcpy(out, "hvc: got ", 9);
    memcpy(out + 9, line, n);
    out[9 + n] = '\n';
    if (send(out, n + 10))
        return;
    print("console: done\n");
}
