/*
 * The arm64 half of the C guests' runtime (lib.h): serial output on the
 * ns16550a UART, the command line and the virtio-mmio windows from the
 * device tree whose address crt.S saved, reset through PSCI (crt.S).
 */
#include "lib.h"

#define UART_BASE 0x40002000UL
#define UART_LSR 5
#define LSR_THRE 0x20

/* Set by crt.S from x0 at entry. */
extern uint64_t fdt_base;

void serial_putc(int c)
{
    volatile uint8_t *uart = (volatile uint8_t *)UART_BASE;
    /* Bounded wait for an empty transmit register, as on x86. */
    for (int i = 0; i < 1000 && !(uart[UART_LSR] & LSR_THRE); i++)
        ;
    uart[0] = (uint8_t)c;
}

void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

void serial_write(const void *buf, uint64_t len)
{
    const char *p = buf;
    while (len--)
        serial_putc(*p++);
}

/* ------------------------------------------------------------------ */
/* Device tree (the flattened format of the devicetree specification,  */
/* big-endian): just enough to read strato's.                          */

#define FDT_MAGIC 0xd00dfeedU
#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4
#define FDT_END 9

static bool str_eq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static uint32_t be32(const void *p)
{
    const uint8_t *b = p;
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* `cells` big-endian 32-bit cells at p as one number. */
static uint64_t cells(const uint8_t *p, uint32_t n)
{
    uint64_t v = 0;
    for (uint32_t i = 0; i < n; i++)
        v = v << 32 | be32(p + 4 * i);
    return v;
}

/* The root's #address-cells and #size-cells, read by every walk. */
static uint32_t addr_cells = 2, size_cells = 2;

/*
 * Calls prop(node, name, value, len) for every property of every node
 * directly under the root (node "" for the root's own, which come first;
 * the walk itself takes the root's cell sizes from them), and end(node)
 * at the end of each such node. Stops at anything malformed.
 */
static void fdt_walk(void (*prop)(const char *node, const char *name,
                                  const uint8_t *val, uint32_t len),
                     void (*end)(const char *node))
{
    const uint8_t *fdt = (const uint8_t *)fdt_base;
    if (!fdt || be32(fdt) != FDT_MAGIC)
        return;
    uint32_t total = be32(fdt + 4);
    const uint8_t *p = fdt + be32(fdt + 8), *lim = fdt + total;
    const char *strings = (const char *)fdt + be32(fdt + 12);
    const char *node = "";
    int depth = 0;
    while (p + 4 <= lim) {
        uint32_t tok = be32(p);
        p += 4;
        if (tok == FDT_BEGIN_NODE) {
            const char *name = (const char *)p;
            size_t n = strlen(name);
            p += (n + 4) & ~3UL;
            if (++depth == 2)
                node = name;
        } else if (tok == FDT_END_NODE) {
            if (depth == 2 && end)
                end(node);
            if (--depth < 0)
                return;
            if (depth < 2)
                node = "";
        } else if (tok == FDT_PROP) {
            if (p + 8 > lim)
                return;
            uint32_t len = be32(p), off = be32(p + 4);
            p += 8;
            if (p + len > lim)
                return;
            if (depth == 1 && len == 4) {
                if (str_eq(strings + off, "#address-cells"))
                    addr_cells = be32(p);
                else if (str_eq(strings + off, "#size-cells"))
                    size_cells = be32(p);
            }
            if (depth <= 2)
                prop(node, strings + off, p, len);
            p += (len + 3) & ~3UL;
        } else if (tok == FDT_NOP) {
            continue;
        } else {
            return;
        }
    }
}

static const char *bootargs = "";

static void chosen_prop(const char *node, const char *name, const uint8_t *val, uint32_t len)
{
    if (!str_eq(node, "chosen") || !str_eq(name, "bootargs"))
        return;
    if (len && val[len - 1] == 0)
        bootargs = (const char *)val;
}

const char *boot_cmdline(void)
{
    static bool done;
    if (!done) {
        done = true;
        fdt_walk(chosen_prop, NULL);
    }
    return bootargs;
}

/* The virtio node being read, and the caller's callback. */
static struct {
    bool virtio;
    uint64_t base, size, irq;
} cur;
static void (*virtio_add)(uint64_t, uint64_t, uint64_t);

static void virtio_prop(const char *node, const char *name, const uint8_t *val, uint32_t len)
{
    if (!*node)
        return;
    if (str_eq(name, "compatible"))
        cur.virtio = len == sizeof("virtio,mmio") && !memcmp(val, "virtio,mmio", len);
    else if (str_eq(name, "reg") && len >= 4 * (addr_cells + size_cells) &&
             addr_cells <= 2 && size_cells <= 2) {
        cur.base = cells(val, addr_cells);
        cur.size = cells(val + 4 * addr_cells, size_cells);
    } else if (str_eq(name, "interrupts") && len >= 12) {
        /* GIC: type (0 SPI, 1 PPI), number, flags. */
        uint32_t type = be32(val), n = be32(val + 4);
        cur.irq = n + (type == 0 ? 32 : 16);
    }
}

static void virtio_end(const char *node)
{
    if (cur.virtio)
        virtio_add(cur.base, cur.size, cur.irq);
    cur.virtio = false;
    cur.base = cur.size = cur.irq = 0;
}

void fdt_virtio_windows(void (*add)(uint64_t base, uint64_t size, uint64_t irq))
{
    virtio_add = add;
    cur.virtio = false;
    fdt_walk(virtio_prop, virtio_end);
}

/* The RAM ranges of the device tree's memory nodes, in order. */
static void (*memory_add)(uint64_t, uint64_t);

static void memory_prop(const char *node, const char *name, const uint8_t *val, uint32_t len)
{
    /* "memory" or "memory@<unit address>". */
    const char *want = "memory", *n = node;
    while (*want && *n == *want)
        want++, n++;
    if (*want || (*n && *n != '@') || !str_eq(name, "reg"))
        return;
    uint32_t cells_per = addr_cells + size_cells;
    if (!cells_per || addr_cells > 2 || size_cells > 2)
        return;
    for (uint32_t at = 0; at + 4 * cells_per <= len; at += 4 * cells_per)
        memory_add(cells(val + at, addr_cells), cells(val + at + 4 * addr_cells, size_cells));
}

void fdt_memory_ranges(void (*add)(uint64_t base, uint64_t size))
{
    memory_add = add;
    fdt_walk(memory_prop, NULL);
}
