/*
 * hostile: feeds virtio-blk disk 0 malformed requests and checks that the
 * device survives them.  case=<name>[,<name>...] or case=all; for each case
 * it prints
 *
 *   hostile: <case> status <Status register> used <used idx> req <status byte>
 *
 * (hex, "req ff" = the device never wrote the request's status byte; some
 * cases append more fields), then resets the device, initialises it again,
 * reads sector 0 ("hostile: recovered read status <n>") and, if there is a
 * second block device, reads its sector 0 too ("hostile: other device
 * status <n>").  wait=<ms> (default 1000) bounds the wait for the device's
 * reaction to a malformed request; timeout=<ms> that of valid requests.
 */
#include "virtio.h"

static struct blk disk0, disk1;
static struct virtq rawq;           /* queue for the queue-size cases */
static struct vdev *d0;
static uint8_t data[4096] __attribute__((aligned(4096)));

static const char *const cases[] = {
    "desc-oob", "len-overflow", "loop", "too-long", "write-to-readonly",
    "bad-queue-size", "queue-too-big", "notify-early", "config-oob",
    "huge-index",
};

/* Valid IN of sector 0 into data: descriptors 0-2 of q, avail slot 0,
 * avail idx = idx.  Does not notify. */
static void raw_read(struct virtq *q, uint16_t idx)
{
    struct blk_slot *sl = &disk0.slots[0];
    sl->hdr.type = VIRTIO_BLK_T_IN;
    sl->hdr.reserved = 0;
    sl->hdr.sector = 0;
    sl->status = 0xff;
    virtq_desc(q, 0, &sl->hdr, sizeof(sl->hdr), VRING_DESC_F_NEXT, 1);
    virtq_desc(q, 1, data, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2);
    virtq_desc(q, 2, &sl->status, 1, VRING_DESC_F_WRITE, 0);
    q->avail->ring[0] = 0;
    barrier();
    WRITE_ONCE(q->avail->idx, idx);
}

/*
 * Waits up to wait=<ms> for the device to react: a used entry, or
 * NEEDS_RESET/FAILED in Status (read every 64 polls: each read is a VM
 * exit).  Then gives stragglers 20 ms.
 */
static void await_reaction(struct virtq *q)
{
    uint64_t dl = deadline_ms(arg_u64("wait", 1000));
    for (unsigned i = 1;; i++) {
        if (READ_ONCE(q->used->idx) != 0)
            break;
        if (!(i & 63) && (vstatus(d0) & (VIRTIO_NEEDS_RESET | VIRTIO_FAILED)))
            break;
        if (expired(dl))
            return;
    }
    dl = deadline_ms(20);
    while (!expired(dl))
        ;
}

static void run_case(const char *name)
{
    struct virtq *q = &disk0.q;
    struct blk_slot *sl = &disk0.slots[0];
    char extra[64] = "";

    if (word_eq(name, "bad-queue-size") || word_eq(name, "queue-too-big")) {
        if (virtio_start(d0, 0, "hostile"))
            goto recover;
        q = &rawq;
        vw32(d0, VIRTIO_MMIO_QUEUE_SEL, 0);
        uint32_t max = vr32(d0, VIRTIO_MMIO_QUEUE_NUM_MAX);
        uint32_t num = word_eq(name, "bad-queue-size") ? 3 : max * 2;
        /* Rings for the whole queue (capped: a device that accepts the
         * size only touches the first entries here). */
        virtq_alloc(q, d0, 0, MIN(num > 4 ? num : 4, 1024));
        virtq_program(q, num);
        vw32(d0, VIRTIO_MMIO_QUEUE_READY, 1);
        uint32_t ready = vr32(d0, VIRTIO_MMIO_QUEUE_READY);
        format(extra, sizeof(extra), " ready %u num %u", ready, num);
        virtio_driver_ok(d0);
        raw_read(q, 1);
        virtq_notify(q);
    } else if (word_eq(name, "notify-early")) {
        if (virtio_start(d0, 0, "hostile") || virtq_setup(q, 0, "hostile") < 0)
            goto recover;
        raw_read(q, 1);
        virtq_notify(q);            /* before DRIVER_OK */
        virtio_driver_ok(d0);
        virtq_notify(q);
    } else {
        if (blk_open(&disk0, d0, 512, "hostile"))
            goto recover;
        uint16_t n = q->size;
        sl->hdr.type = VIRTIO_BLK_T_IN;
        sl->hdr.reserved = 0;
        sl->hdr.sector = 0;
        sl->status = 0xff;
        virtq_desc(q, 0, &sl->hdr, sizeof(sl->hdr), VRING_DESC_F_NEXT, 1);
        virtq_desc(q, 1, data, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2);
        virtq_desc(q, 2, &sl->status, 1, VRING_DESC_F_WRITE, 0);
        uint16_t avail = 1;
        if (word_eq(name, "desc-oob")) {
            q->desc[1].addr = 0x7f0000000000ULL;
        } else if (word_eq(name, "len-overflow")) {
            q->desc[1].addr = 0xfffffffffffff000ULL;
            q->desc[1].len = 0x2000;
        } else if (word_eq(name, "loop")) {
            q->desc[1].next = 1;
        } else if (word_eq(name, "too-long")) {
            /* header, then n - 1 data descriptors, the last pointing back
             * to the header: the chain never ends, and its (n+1)-th
             * descriptor is the header again. */
            for (uint16_t i = 1; i < n; i++)
                virtq_desc(q, i, data, 512,
                           VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                           (i + 1) % n);
        } else if (word_eq(name, "write-to-readonly")) {
            q->desc[1].flags = VRING_DESC_F_NEXT;
            memset(data, 0xa5, 512);
        } else if (word_eq(name, "config-oob")) {
            uint32_t v = vcfg32(d0, 0x200);
            vw32(d0, VIRTIO_MMIO_CONFIG + 0x200, 0x5a5a5a5a);
            format(extra, sizeof(extra), " value %x", v);
        } else if (word_eq(name, "huge-index")) {
            avail = n + 5;
        } else {
            print("hostile: unknown case ");
            for (const char *p = name; *p && *p != ',' && *p != ' '; p++)
                serial_putc(*p);
            print("\n");
            return;
        }
        q->avail->ring[0] = 0;
        barrier();
        WRITE_ONCE(q->avail->idx, avail);
        virtq_notify(q);
    }
    await_reaction(q);
    if (word_eq(name, "write-to-readonly")) {
        int i = 0;
        while (i < 512 && data[i] == 0xa5)
            i++;
        format(extra, sizeof(extra), " data %s",
               i == 512 ? "untouched" : "modified");
    }
    print("hostile: ");
    for (const char *p = name; *p && *p != ',' && *p != ' '; p++)
        serial_putc(*p);
    print(" status %02x used %u req %02x%s\n", vstatus(d0),
          READ_ONCE(q->used->idx), READ_ONCE(sl->status), extra);

recover:
    if (blk_open(&disk0, d0, 512, "hostile")) {
        print("hostile: recovered init failed\n");
    } else {
        int st = blk_io(&disk0, VIRTIO_BLK_T_IN, 0, data, 512);
        if (st < 0)
            print("hostile: recovered read %s\n",
                  st == BLK_TIMEOUT ? "timeout" : "bad-id");
        else
            print("hostile: recovered read status %d\n", st);
    }
    if (disk1.dev) {
        int st = blk_io(&disk1, VIRTIO_BLK_T_IN, 0, data, 512);
        if (st < 0)
            print("hostile: other device %s\n",
                  st == BLK_TIMEOUT ? "timeout" : "bad-id");
        else
            print("hostile: other device status %d\n", st);
    }
}

void guest_main(void)
{
    virtio_discover();
    d0 = virtio_find(VIRTIO_ID_BLOCK, 0);
    if (!d0) {
        print("hostile: no block device\n");
        return;
    }
    const char *c = arg_value("case");
    if (!c || !*c || *c == ' ') {
        print("hostile: no case=<name> given\n");
        return;
    }
    /* Allocates disk 0's rings and slots, and checks it works at all. */
    if (blk_open(&disk0, d0, 512, "hostile"))
        return;
    struct vdev *d1 = virtio_find(VIRTIO_ID_BLOCK, 1);
    if (d1 && blk_open(&disk1, d1, 512, "hostile"))
        disk1.dev = NULL;

    if (word_eq(c, "all")) {
        for (unsigned i = 0; i < ARRAY_SIZE(cases); i++)
            run_case(cases[i]);
        return;
    }
    for (;;) {
        run_case(c);
        while (*c && *c != ',' && *c != ' ')
            c++;
        if (*c != ',')
            break;
        c++;
    }
}
