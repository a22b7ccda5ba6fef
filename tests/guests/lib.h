/*
 * C runtime for the strato test guests written in C (the virtio guests).
 * Links with common.S, which provides the entry paths, serial output and
 * boot info; this header declares those helpers for C and adds formatted
 * output, command-line parsing, a time source and a small DMA allocator.
 *
 * Build flags (build.sh, aarch64/build.sh): -O2 -ffreestanding
 * -mgeneral-regs-only ...: no SSE/FPU/SIMD code, no library calls except
 * the memset/memcpy/memcmp defined in lib.c.  Guest virtual = physical
 * (identity map), so a pointer is also a DMA address.
 *
 * On arm64 the runtime is aarch64/crt.S and aarch64/rt.c instead of
 * common.S: the same helpers, the command line and the virtio-mmio windows
 * from the device tree.
 */
#ifndef STRATO_GUEST_LIB_H
#define STRATO_GUEST_LIB_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Helpers of the architecture's runtime (x86: common.S, SysV calling
 * convention; arm64: aarch64/crt.S and aarch64/rt.c). */
void serial_putc(int c) __asm__("putc");
void serial_puts(const char *s) __asm__("puts");
void serial_write(const void *buf, uint64_t len) __asm__("write");
const char *boot_cmdline(void) __asm__("cmdline");
__attribute__((noreturn)) void vm_reset(void) __asm__("reset");

#if defined(__aarch64__)
/* The device tree's "virtio,mmio" windows, in order: add(base, size, irq)
 * for each (irq: the GIC interrupt ID). */
void fdt_virtio_windows(void (*add)(uint64_t base, uint64_t size, uint64_t irq));
/* The device tree's RAM ranges (its memory nodes' reg), in order. */
void fdt_memory_ranges(void (*add)(uint64_t base, uint64_t size));
#endif

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/*
 * print(fmt, ...): formatted output on COM1.  Conversions: %s, %c, %d, %u,
 * %x (int), %ld, %lu, %lx (64-bit), with an optional zero-padded width
 * ("%02x", "%016lx").  Nothing else.
 */
void print(const char *fmt, ...);
/* Same, into buf (always NUL-terminated, truncated at size). */
void format(char *buf, size_t size, const char *fmt, ...);

/*
 * Command line.  Words are separated by spaces; arg_value("chunk") returns a
 * pointer to the value of the first word "chunk=..." (ends at a space or
 * NUL), or NULL.  Numbers are decimal or 0x-hex, with an optional K/M/G
 * suffix (binary).
 */
const char *arg_value(const char *key);
uint64_t arg_u64(const char *key, uint64_t def);
bool arg_eq(const char *key, const char *val);     /* value == val */
bool word_eq(const char *word, const char *val);   /* word up to ' '/','/NUL */
/* parse_num(s, &end): number at s as above; *end = first unparsed char. */
uint64_t parse_num(const char *s, const char **end);

/* Time: the x86 TSC, or the arm64 virtual counter.  ticks_per_ms() comes
 * from CPUID 0x15/0x16 when the x86 CPU reports it (else a 3 GHz TSC is
 * assumed), from CNTFRQ_EL0 on arm64. */
static inline uint64_t ticks(void)
{
#if defined(__aarch64__)
    uint64_t v;
    /* isb: the counter is read in program order, not early. */
    __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v) : : "memory");
    return v;
#else
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
#endif
}
uint64_t ticks_per_ms(void);
/* deadline_ms(ms): ticks() value ms from now; expired(d): past it. */
uint64_t deadline_ms(uint64_t ms);
static inline bool expired(uint64_t deadline)
{
    return (int64_t)(ticks() - deadline) >= 0;
}

/*
 * DMA memory: a bump allocator over a zeroed 256 KiB arena in .bss (rings,
 * request headers, small buffers).  Big buffers are static arrays in the
 * guests.  Never freed.  Panics (prints and resets) when exhausted.
 */
void *dma_alloc(size_t size, size_t align);

__attribute__((noreturn)) void panic(const char *msg);

/*
 * barrier(): orders the guest's memory accesses, ring entries and device
 * registers alike, as the virtio drivers need between filling a ring and
 * publishing or notifying it.  x86 keeps stores in order (TSO), so the
 * compiler's order is enough; arm64 does not: a full DSB, which also orders
 * normal memory against the device (MMIO) accesses around it.
 */
#if defined(__aarch64__)
#define barrier() __asm__ volatile("dsb sy" ::: "memory")
#else
#define barrier() __asm__ volatile("" ::: "memory")
#endif
#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))

#endif
