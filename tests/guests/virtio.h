/*
 * Minimal polling virtio-mmio (version 2, virtio 1.x) driver pieces for the
 * strato test guests: discovery from the command line, device init, split
 * virtqueues and virtio-blk requests.  No interrupts: completions are found
 * by polling the used ring with a TSC deadline.
 */
#ifndef STRATO_GUEST_VIRTIO_H
#define STRATO_GUEST_VIRTIO_H

#include "lib.h"

/* MMIO register offsets. */
#define VIRTIO_MMIO_MAGIC           0x000
#define VIRTIO_MMIO_VERSION         0x004
#define VIRTIO_MMIO_DEVICE_ID       0x008
#define VIRTIO_MMIO_VENDOR_ID       0x00c
#define VIRTIO_MMIO_DEV_FEATURES    0x010
#define VIRTIO_MMIO_DEV_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRV_FEATURES    0x020
#define VIRTIO_MMIO_DRV_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL       0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX   0x034
#define VIRTIO_MMIO_QUEUE_NUM       0x038
#define VIRTIO_MMIO_QUEUE_READY     0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY    0x050
#define VIRTIO_MMIO_INT_STATUS      0x060
#define VIRTIO_MMIO_INT_ACK         0x064
#define VIRTIO_MMIO_STATUS          0x070
#define VIRTIO_MMIO_QUEUE_DESC_LO   0x080
#define VIRTIO_MMIO_QUEUE_DESC_HI   0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LO 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HI 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LO 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HI 0x0a4
#define VIRTIO_MMIO_CONFIG_GEN      0x0fc
#define VIRTIO_MMIO_CONFIG          0x100

#define VIRTIO_MAGIC 0x74726976     /* "virt" */

/* Device status bits. */
#define VIRTIO_ACKNOWLEDGE  0x01
#define VIRTIO_DRIVER       0x02
#define VIRTIO_DRIVER_OK    0x04
#define VIRTIO_FEATURES_OK  0x08
#define VIRTIO_NEEDS_RESET  0x40
#define VIRTIO_FAILED       0x80

#define VIRTIO_F_VERSION_1  (1ULL << 32)

#define VIRTIO_ID_NET       1
#define VIRTIO_ID_BLOCK     2
#define VIRTIO_ID_CONSOLE   3
#define VIRTIO_ID_RNG       4

/* Split virtqueue layout. */
#define VRING_DESC_F_NEXT     1
#define VRING_DESC_F_WRITE    2
#define VRING_DESC_F_INDIRECT 4

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];
};
struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};
struct vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vring_used_elem ring[];
};

/* One transport found on the command line. */
struct vdev {
    uintptr_t base;         /* MMIO window */
    uint64_t size;          /* window size */
    uint32_t irq;
    uint32_t magic, version, id;
    uint64_t offered;       /* device features */
    uint64_t features;      /* negotiated */
};

#define VIRTIO_MAX_DEVS 32
extern struct vdev virtio_devs[VIRTIO_MAX_DEVS];
extern int virtio_ndevs;

/*
 * virtio_discover(): take every virtio-mmio window the VMM announces, in
 * order (x86: the "virtio_mmio.device=<size>@<base>:<irq>" words of the
 * command line; arm64: the device tree's "virtio,mmio" nodes), and read
 * each window's magic, version and device ID.  Returns the number of
 * entries.
 */
int virtio_discover(void);
/* n-th (from 0) transport with a valid magic and this device ID, or NULL. */
struct vdev *virtio_find(uint32_t id, int n);

static inline uint32_t vr32(struct vdev *d, uint32_t off)
{
    return *(volatile uint32_t *)(d->base + off);
}
static inline void vw32(struct vdev *d, uint32_t off, uint32_t v)
{
    *(volatile uint32_t *)(d->base + off) = v;
}
static inline uint8_t vcfg8(struct vdev *d, uint32_t off)
{
    return *(volatile uint8_t *)(d->base + VIRTIO_MMIO_CONFIG + off);
}
static inline uint32_t vcfg32(struct vdev *d, uint32_t off)
{
    return vr32(d, VIRTIO_MMIO_CONFIG + off);
}
/* 64-bit config field as two 32-bit reads, retried on a generation change. */
uint64_t vcfg64(struct vdev *d, uint32_t off);

static inline uint32_t vstatus(struct vdev *d)
{
    return vr32(d, VIRTIO_MMIO_STATUS);
}

/*
 * virtio_start(d, want, name): reset, ACKNOWLEDGE, DRIVER, negotiate
 * (offered & want) | VERSION_1, FEATURES_OK and check that it stuck.
 * Prints "<name>: ..." and returns -1 on failure.  Queues come next, then
 * virtio_driver_ok().
 */
int virtio_start(struct vdev *d, uint64_t want, const char *name);
void virtio_driver_ok(struct vdev *d);
/* Write 0 to Status and wait (bounded) until it reads back 0. */
int virtio_reset(struct vdev *d);

/* A split virtqueue in DMA memory. */
struct virtq {
    struct vdev *dev;
    uint16_t index;         /* queue number */
    uint16_t size;          /* entries */
    uint16_t avail_idx;     /* next avail idx to publish */
    uint16_t last_used;     /* used idx consumed so far */
    uint16_t cap;           /* entries the rings were allocated for */
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
};

/*
 * virtq_alloc(q, d, index, cap): allocate zeroed rings for up to cap entries
 * (once).  virtq_setup(q, size): zero the rings, select the queue, check
 * QueueNumMax (size 0 = use min(QueueNumMax, cap)), program QueueNum and
 * the ring addresses, QueueReady = 1.  Returns the size or -1 (printed).
 */
void virtq_alloc(struct virtq *q, struct vdev *d, uint16_t index, uint16_t cap);
int virtq_setup(struct virtq *q, uint16_t size, const char *name);
/* Program QueueNum/addresses without checks (hostile cases). */
void virtq_program(struct virtq *q, uint32_t num);

static inline void virtq_desc(struct virtq *q, uint16_t i, const void *addr,
                              uint32_t len, uint16_t flags, uint16_t next)
{
    q->desc[i].addr = (uintptr_t)addr;
    q->desc[i].len = len;
    q->desc[i].flags = flags;
    q->desc[i].next = next;
}
/* Put head in the avail ring and publish (no notify). */
void virtq_push(struct virtq *q, uint16_t head);
static inline void virtq_notify(struct virtq *q)
{
    barrier();
    vw32(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}
/* Next used element, if any: returns true and fills *e. */
bool virtq_pop(struct virtq *q, struct vring_used_elem *e);
/* Wait until the deadline for the next used element. */
bool virtq_wait(struct virtq *q, struct vring_used_elem *e, uint64_t deadline);

/* Default wait for one request, "timeout=<ms>" on the command line. */
uint64_t io_timeout_ms(void);

/* ------------------------------------------------------------------ */
/* virtio-blk.                                                        */

#define VIRTIO_BLK_F_SIZE_MAX  1
#define VIRTIO_BLK_F_SEG_MAX   2
#define VIRTIO_BLK_F_RO        5
#define VIRTIO_BLK_F_BLK_SIZE  6
#define VIRTIO_BLK_F_FLUSH     9

#define VIRTIO_BLK_T_IN     0
#define VIRTIO_BLK_T_OUT    1
#define VIRTIO_BLK_T_FLUSH  4
#define VIRTIO_BLK_T_GET_ID 8

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define BLK_TIMEOUT (-1)
#define BLK_BAD_ID  (-2)

struct blk_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

/* Per-slot request state in DMA memory. */
struct blk_slot {
    struct blk_hdr hdr;
    uint8_t status;
    uint8_t pad[15];
};

#define BLK_MAX_SLOTS 64

struct blk {
    struct vdev *dev;
    struct virtq q;
    uint64_t capacity;      /* 512-byte sectors */
    uint32_t seg;           /* max bytes per data descriptor */
    uint32_t max_segs;      /* max data descriptors per request */
    uint16_t width;         /* descriptors per slot */
    uint16_t nslots;
    struct blk_slot *slots; /* BLK_MAX_SLOTS of them */
};

/*
 * blk_open(b, d, max_bytes): init the device (negotiating RO, FLUSH,
 * BLK_SIZE, SEG_MAX, SIZE_MAX when offered), queue 0 with up to 256
 * entries, DRIVER_OK, read the capacity.  Slots are sized for requests of
 * max_bytes.  Returns 0, or -1 after printing why.
 */
int blk_open(struct blk *b, struct vdev *d, uint32_t max_bytes, const char *name);
/* Build the chain for slot s and publish it (no notify).  len may be 0. */
void blk_post(struct blk *b, int s, uint32_t type, uint64_t sector, void *buf,
              uint32_t len);
/* Wait for one completion: returns its slot, -1 on timeout, -2 if the used
 * id is not the head of a slot. */
int blk_complete(struct blk *b, uint64_t deadline);
/* One synchronous request (slot 0): status byte, BLK_TIMEOUT or BLK_BAD_ID. */
int blk_io(struct blk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len);

#endif
