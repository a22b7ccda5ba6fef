/*
 * C runtime for the strato test guests written in C (the virtio guests).
 * Links with common.S, which provides the entry paths, serial output and
 * boot info; this header declares those helpers for C and adds formatted
 * output, command-line parsing, a time source and a small DMA allocator.
 *
 * Build flags (build.sh): -O2 -ffreestanding -mgeneral-regs-only
 * -mno-red-zone -fno-pic ...: no SSE/FPU code, no library calls except the
 * memset/memcpy/memcmp defined in lib.c.  Guest virtual = physical
 * (identity map), so a pointer is also a DMA address.
 */
#ifndef STRATO_GUEST_LIB_H
#define STRATO_GUEST_LIB_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* common.S helpers (SysV calling convention). */
void serial_putc(int c) __asm__("putc");
void serial_puts(const char *s) __asm__("puts");
void serial_write(const void *buf, uint64_t len) __asm__("write");
const char *boot_cmdline(void) __asm__("cmdline");
__attribute__((noreturn)) void vm_reset(void) __asm__("reset");

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

/* Time: TSC-based.  ticks_per_ms() comes from CPUID 0x15/0x16 when the CPU
 * reports it, else assumes a 3 GHz TSC. */
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
uint64_t ticks_per_ms(void);
/* deadline_ms(ms): rdtsc() value ms from now; expired(d): past it. */
uint64_t deadline_ms(uint64_t ms);
static inline bool expired(uint64_t deadline)
{
    return (int64_t)(rdtsc() - deadline) >= 0;
}

/*
 * DMA memory: a bump allocator over a zeroed 256 KiB arena in .bss (rings,
 * request headers, small buffers).  Big buffers are static arrays in the
 * guests.  Never freed.  Panics (prints and resets) when exhausted.
 */
void *dma_alloc(size_t size, size_t align);

__attribute__((noreturn)) void panic(const char *msg);

#define barrier() __asm__ volatile("" ::: "memory")
#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))

#endif
