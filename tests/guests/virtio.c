/* Minimal polling virtio-mmio driver pieces: see virtio.h. */
#include "virtio.h"

struct vdev virtio_devs[VIRTIO_MAX_DEVS];
int virtio_ndevs;

/* Takes the window at base (size bytes, interrupt irq) as a device. */
static void virtio_add(uint64_t base, uint64_t size, uint64_t irq)
{
    if (base + size > (1ULL << 32) || size < 0x100) {
        print("virtio: ignoring window %lx size %lx\n", base, size);
        return;
    }
    if (virtio_ndevs >= VIRTIO_MAX_DEVS)
        return;
    struct vdev d = {0};
    d.base = base;
    d.size = size;
    d.irq = irq;
    d.magic = vr32(&d, VIRTIO_MMIO_MAGIC);
    if (d.magic == VIRTIO_MAGIC) {
        d.version = vr32(&d, VIRTIO_MMIO_VERSION);
        d.id = vr32(&d, VIRTIO_MMIO_DEVICE_ID);
    }
    virtio_devs[virtio_ndevs++] = d;
}

#if defined(__aarch64__)
/* arm64: the device tree names the windows (aarch64/rt.c). */
int virtio_discover(void)
{
    virtio_ndevs = 0;
    fdt_virtio_windows(virtio_add);
    return virtio_ndevs;
}
#else
/* x86: the command line names the windows, as for Linux. */
int virtio_discover(void)
{
    static const char key[] = "virtio_mmio.device=";
    const char *p = boot_cmdline();
    virtio_ndevs = 0;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!memcmp(p, key, sizeof(key) - 1)) {
            const char *s = p + sizeof(key) - 1;
            uint64_t size = parse_num(s, &s);
            if (*s == '@') {
                uint64_t base = parse_num(s + 1, &s), irq = 0;
                if (*s == ':')
                    irq = parse_num(s + 1, &s);
                virtio_add(base, size, irq);
            }
        }
        while (*p && *p != ' ')
            p++;
    }
    return virtio_ndevs;
}
#endif

struct vdev *virtio_find(uint32_t id, int n)
{
    for (int i = 0; i < virtio_ndevs; i++) {
        struct vdev *d = &virtio_devs[i];
        if (d->magic == VIRTIO_MAGIC && d->id == id && n-- == 0)
            return d;
    }
    return NULL;
}

uint64_t vcfg64(struct vdev *d, uint32_t off)
{
    uint64_t v = 0;
    for (int tries = 0; tries < 8; tries++) {
        uint32_t g = vr32(d, VIRTIO_MMIO_CONFIG_GEN);
        uint32_t lo = vcfg32(d, off), hi = vcfg32(d, off + 4);
        v = ((uint64_t)hi << 32) | lo;
        if (vr32(d, VIRTIO_MMIO_CONFIG_GEN) == g)
            break;
    }
    return v;
}

int virtio_reset(struct vdev *d)
{
    vw32(d, VIRTIO_MMIO_STATUS, 0);
    uint64_t dl = deadline_ms(1000);
    while (vstatus(d) != 0)
        if (expired(dl))
            return -1;
    return 0;
}

int virtio_start(struct vdev *d, uint64_t want, const char *name)
{
    if (d->magic != VIRTIO_MAGIC) {
        print("%s: bad magic %x\n", name, d->magic);
        return -1;
    }
    if (d->version != 2) {
        print("%s: transport version %u, need 2\n", name, d->version);
        return -1;
    }
    if (virtio_reset(d)) {
        print("%s: reset timeout, status %02x\n", name, vstatus(d));
        return -1;
    }
    vw32(d, VIRTIO_MMIO_STATUS, VIRTIO_ACKNOWLEDGE);
    vw32(d, VIRTIO_MMIO_STATUS, VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER);
    vw32(d, VIRTIO_MMIO_DEV_FEATURES_SEL, 0);
    uint64_t lo = vr32(d, VIRTIO_MMIO_DEV_FEATURES);
    vw32(d, VIRTIO_MMIO_DEV_FEATURES_SEL, 1);
    uint64_t hi = vr32(d, VIRTIO_MMIO_DEV_FEATURES);
    d->offered = lo | hi << 32;
    if (!(d->offered & VIRTIO_F_VERSION_1)) {
        print("%s: VERSION_1 not offered (features %lx)\n", name, d->offered);
        vw32(d, VIRTIO_MMIO_STATUS, vstatus(d) | VIRTIO_FAILED);
        return -1;
    }
    d->features = (d->offered & want) | VIRTIO_F_VERSION_1;
    vw32(d, VIRTIO_MMIO_DRV_FEATURES_SEL, 0);
    vw32(d, VIRTIO_MMIO_DRV_FEATURES, (uint32_t)d->features);
    vw32(d, VIRTIO_MMIO_DRV_FEATURES_SEL, 1);
    vw32(d, VIRTIO_MMIO_DRV_FEATURES, (uint32_t)(d->features >> 32));
    vw32(d, VIRTIO_MMIO_STATUS,
         VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER | VIRTIO_FEATURES_OK);
    uint32_t s = vstatus(d);
    if (!(s & VIRTIO_FEATURES_OK)) {
        print("%s: FEATURES_OK not accepted, status %02x\n", name, s);
        vw32(d, VIRTIO_MMIO_STATUS, s | VIRTIO_FAILED);
        return -1;
    }
    return 0;
}

void virtio_driver_ok(struct vdev *d)
{
    barrier();
    vw32(d, VIRTIO_MMIO_STATUS, vstatus(d) | VIRTIO_DRIVER_OK);
}

/* ------------------------------------------------------------------ */
/* Split virtqueues.                                                  */

void virtq_alloc(struct virtq *q, struct vdev *d, uint16_t index, uint16_t cap)
{
    q->dev = d;
    q->index = index;
    if (q->cap >= cap)
        return;
    q->cap = cap;
    q->desc = dma_alloc(16 * (size_t)cap, 4096);
    q->avail = dma_alloc(6 + 2 * (size_t)cap, 64);
    q->used = dma_alloc(6 + 8 * (size_t)cap, 64);
}

void virtq_program(struct virtq *q, uint32_t num)
{
    struct vdev *d = q->dev;
    memset(q->desc, 0, 16 * (size_t)q->cap);
    memset(q->avail, 0, 6 + 2 * (size_t)q->cap);
    memset(q->used, 0, 6 + 8 * (size_t)q->cap);
    q->size = num;
    q->avail_idx = q->last_used = 0;
    vw32(d, VIRTIO_MMIO_QUEUE_SEL, q->index);
    vw32(d, VIRTIO_MMIO_QUEUE_NUM, num);
    vw32(d, VIRTIO_MMIO_QUEUE_DESC_LO, (uint32_t)(uintptr_t)q->desc);
    vw32(d, VIRTIO_MMIO_QUEUE_DESC_HI, (uint32_t)((uintptr_t)q->desc >> 32));
    vw32(d, VIRTIO_MMIO_QUEUE_DRIVER_LO, (uint32_t)(uintptr_t)q->avail);
    vw32(d, VIRTIO_MMIO_QUEUE_DRIVER_HI, (uint32_t)((uintptr_t)q->avail >> 32));
    vw32(d, VIRTIO_MMIO_QUEUE_DEVICE_LO, (uint32_t)(uintptr_t)q->used);
    vw32(d, VIRTIO_MMIO_QUEUE_DEVICE_HI, (uint32_t)((uintptr_t)q->used >> 32));
}

int virtq_setup(struct virtq *q, uint16_t size, const char *name)
{
    struct vdev *d = q->dev;
    vw32(d, VIRTIO_MMIO_QUEUE_SEL, q->index);
    if (vr32(d, VIRTIO_MMIO_QUEUE_READY)) {
        print("%s: queue %u already ready after reset\n", name, q->index);
        return -1;
    }
    uint32_t max = vr32(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (max == 0) {
        print("%s: queue %u not available\n", name, q->index);
        return -1;
    }
    uint32_t n = size ? size : q->cap;
    if (n > max)
        n = max;
    if (n > q->cap)
        n = q->cap;
    while (n & (n - 1))             /* round down to a power of two */
        n &= n - 1;
    virtq_program(q, n);
    vw32(d, VIRTIO_MMIO_QUEUE_READY, 1);
    return n;
}

void virtq_push(struct virtq *q, uint16_t head)
{
    q->avail->ring[q->avail_idx & (q->size - 1)] = head;
    barrier();
    q->avail_idx++;
    WRITE_ONCE(q->avail->idx, q->avail_idx);
}

bool virtq_pop(struct virtq *q, struct vring_used_elem *e)
{
    if (READ_ONCE(q->used->idx) == q->last_used)
        return false;
    barrier();
    *e = ((volatile struct vring_used *)q->used)->ring[q->last_used & (q->size - 1)];
    q->last_used++;
    return true;
}

bool virtq_wait(struct virtq *q, struct vring_used_elem *e, uint64_t deadline)
{
    while (!virtq_pop(q, e))
        if (expired(deadline))
            return false;
    return true;
}

uint64_t io_timeout_ms(void)
{
    static uint64_t ms;
    if (!ms)
        ms = arg_u64("timeout", 10000);
    return ms ? ms : 1;
}

/* ------------------------------------------------------------------ */
/* virtio-blk.                                                        */

int blk_open(struct blk *b, struct vdev *d, uint32_t max_bytes, const char *name)
{
    uint64_t want = 1ULL << VIRTIO_BLK_F_RO | 1ULL << VIRTIO_BLK_F_FLUSH |
                    1ULL << VIRTIO_BLK_F_BLK_SIZE | 1ULL << VIRTIO_BLK_F_SEG_MAX |
                    1ULL << VIRTIO_BLK_F_SIZE_MAX;
    b->dev = d;
    if (virtio_start(d, want, name))
        return -1;
    virtq_alloc(&b->q, d, 0, 256);
    if (virtq_setup(&b->q, 0, name) < 0)
        return -1;
    if (!b->slots)
        b->slots = dma_alloc(sizeof(struct blk_slot) * BLK_MAX_SLOTS, 64);
    b->capacity = vcfg64(d, 0);
    b->seg = 1 << 20;
    if (d->features & (1ULL << VIRTIO_BLK_F_SIZE_MAX)) {
        uint32_t sm = vcfg32(d, 8) & ~511u;
        if (sm && sm < b->seg)
            b->seg = sm;
    }
    uint32_t nseg = max_bytes ? (max_bytes + b->seg - 1) / b->seg : 1;
    uint32_t seg_max = (d->features & (1ULL << VIRTIO_BLK_F_SEG_MAX)) ?
                       vcfg32(d, 12) : 0;
    if ((seg_max && nseg > seg_max) || nseg + 2 > b->q.size) {
        print("%s: %u-byte requests need %u segments (seg_max %u, queue %u)\n",
              name, max_bytes, nseg, seg_max, b->q.size);
        return -1;
    }
    b->max_segs = nseg;
    b->width = nseg + 2;
    b->nslots = MIN(b->q.size / b->width, BLK_MAX_SLOTS);
    virtio_driver_ok(d);
    return 0;
}

void blk_post(struct blk *b, int s, uint32_t type, uint64_t sector, void *buf,
              uint32_t len)
{
    struct virtq *q = &b->q;
    struct blk_slot *sl = &b->slots[s];
    uint16_t i = s * b->width, head = i;
    sl->hdr.type = type;
    sl->hdr.reserved = 0;
    sl->hdr.sector = sector;
    sl->status = 0xff;
    uint16_t wr = (type == VIRTIO_BLK_T_OUT) ? 0 : VRING_DESC_F_WRITE;
    virtq_desc(q, i, &sl->hdr, sizeof(sl->hdr), VRING_DESC_F_NEXT, i + 1);
    i++;
    for (uint32_t off = 0; off < len; off += b->seg, i++)
        virtq_desc(q, i, (uint8_t *)buf + off, MIN(len - off, b->seg),
                   wr | VRING_DESC_F_NEXT, i + 1);
    virtq_desc(q, i, &sl->status, 1, VRING_DESC_F_WRITE, 0);
    virtq_push(q, head);
}

int blk_complete(struct blk *b, uint64_t deadline)
{
    struct vring_used_elem e;
    if (!virtq_wait(&b->q, &e, deadline))
        return -1;
    if (e.id % b->width || e.id / b->width >= b->nslots) {
        print("blk: device returned bad used id %u\n", e.id);
        return -2;
    }
    return e.id / b->width;
}

int blk_io(struct blk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len)
{
    blk_post(b, 0, type, sector, buf, len);
    virtq_notify(&b->q);
    int s = blk_complete(b, deadline_ms(io_timeout_ms()));
    if (s == -1)
        return BLK_TIMEOUT;
    if (s < 0)
        return BLK_BAD_ID;
    return READ_ONCE(b->slots[s].status);
}
