/* C runtime for the strato test guests: see lib.h. */
#include "lib.h"

#if defined(__x86_64__)
void *memset(void *d, int c, size_t n)
{
    /* 8 bytes per iteration: rep string instructions may be emulated one
     * iteration at a time. */
    void *ret = d;
    size_t q = n / 8, r = n % 8;
    uint64_t v = (uint8_t)c * 0x0101010101010101ULL;
    __asm__ volatile("rep stosq" : "+D"(d), "+c"(q) : "a"(v) : "memory");
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(r) : "a"(v) : "memory");
    return ret;
}

void *memcpy(void *d, const void *s, size_t n)
{
    void *ret = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return ret;
}
#else
/* Plain loops (built with -fno-tree-loop-distribute-patterns, so that the
 * compiler does not turn them back into calls to themselves): 8 bytes at a
 * time where both ends are aligned. */
void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    uint64_t v = (uint8_t)c * 0x0101010101010101ULL;
    for (; n && ((uintptr_t)p & 7); n--)
        *p++ = (uint8_t)c;
    for (; n >= 8; n -= 8, p += 8)
        *(uint64_t *)p = v;
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    if ((((uintptr_t)p | (uintptr_t)q) & 7) == 0)
        for (; n >= 8; n -= 8, p += 8, q += 8)
            *(uint64_t *)p = *(const uint64_t *)q;
    while (n--)
        *p++ = *q++;
    return d;
}
#endif

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] - y[i];
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* ------------------------------------------------------------------ */
/* Formatted output.                                                  */

struct sink {
    char *buf;
    size_t size, len;
};

static void emit(struct sink *k, char c)
{
    if (k->len + 1 < k->size)
        k->buf[k->len] = c;
    k->len++;
}

static void vformat(struct sink *k, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(k, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        int width = 0;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        bool is_long = false;
        if (*fmt == 'l') {
            is_long = true;
            fmt++;
        }
        char tmp[24];
        int n = 0;
        uint64_t v;
        bool neg = false;
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            for (int l = (int)strlen(s); l < width; l++)
                emit(k, ' ');
            while (*s)
                emit(k, *s++);
            continue;
        }
        case 'c':
            emit(k, (char)va_arg(ap, int));
            continue;
        case 'd': {
            int64_t s = is_long ? va_arg(ap, int64_t) : va_arg(ap, int);
            neg = s < 0;
            v = neg ? -(uint64_t)s : (uint64_t)s;
            do
                tmp[n++] = '0' + v % 10;
            while (v /= 10);
            break;
        }
        case 'u':
            v = is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
            do
                tmp[n++] = '0' + v % 10;
            while (v /= 10);
            break;
        case 'x':
            v = is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
            do
                tmp[n++] = "0123456789abcdef"[v & 15];
            while (v >>= 4);
            break;
        case '%':
            emit(k, '%');
            continue;
        default:
            emit(k, '?');
            if (!*fmt)
                return;
            continue;
        }
        if (neg)
            tmp[n++] = '-';
        for (int l = n; l < width; l++)
            emit(k, pad);
        while (n)
            emit(k, tmp[--n]);
    }
}

void print(const char *fmt, ...)
{
    char buf[256];
    struct sink k = {buf, sizeof(buf), 0};
    va_list ap;
    va_start(ap, fmt);
    vformat(&k, fmt, ap);
    va_end(ap);
    serial_write(buf, MIN(k.len, sizeof(buf) - 1));
}

void format(char *buf, size_t size, const char *fmt, ...)
{
    struct sink k = {buf, size, 0};
    va_list ap;
    va_start(ap, fmt);
    vformat(&k, fmt, ap);
    va_end(ap);
    if (size)
        buf[MIN(k.len, size - 1)] = 0;
}

__attribute__((noreturn)) void panic(const char *msg)
{
    serial_puts(msg);
    vm_reset();
}

/* ------------------------------------------------------------------ */
/* Command line.                                                      */

const char *arg_value(const char *key)
{
    size_t kl = strlen(key);
    const char *p = boot_cmdline();
    while (*p) {
        while (*p == ' ')
            p++;
        if (!memcmp(p, key, kl) && p[kl] == '=')
            return p + kl + 1;
        while (*p && *p != ' ')
            p++;
    }
    return NULL;
}

uint64_t parse_num(const char *s, const char **end)
{
    uint64_t v = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        for (;; s++) {
            char c = *s;
            if (c >= '0' && c <= '9')
                v = v * 16 + (c - '0');
            else if (c >= 'a' && c <= 'f')
                v = v * 16 + (c - 'a' + 10);
            else if (c >= 'A' && c <= 'F')
                v = v * 16 + (c - 'A' + 10);
            else
                break;
        }
    } else {
        while (*s >= '0' && *s <= '9')
            v = v * 10 + (*s++ - '0');
    }
    switch (*s) {
    case 'G': case 'g':
        v <<= 10;
        /* fall through */
    case 'M': case 'm':
        v <<= 10;
        /* fall through */
    case 'K': case 'k':
        v <<= 10;
        s++;
    }
    if (end)
        *end = s;
    return v;
}

uint64_t arg_u64(const char *key, uint64_t def)
{
    const char *v = arg_value(key);
    if (!v || *v < '0' || *v > '9')
        return def;
    return parse_num(v, NULL);
}

bool word_eq(const char *word, const char *val)
{
    size_t l = strlen(val);
    return !memcmp(word, val, l) &&
           (word[l] == 0 || word[l] == ' ' || word[l] == ',');
}

bool arg_eq(const char *key, const char *val)
{
    const char *v = arg_value(key);
    return v && word_eq(v, val);
}

/* ------------------------------------------------------------------ */
/* Time.                                                              */

#if defined(__x86_64__)
static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c)
{
    uint32_t d;
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(d)
                     : "a"(leaf), "c"(0));
}

uint64_t ticks_per_ms(void)
{
    static uint64_t tpm;
    if (tpm)
        return tpm;
    uint32_t max, a, b, c;
    cpuid(0, &max, &b, &c);
    if (max >= 0x15) {
        cpuid(0x15, &a, &b, &c);    /* TSC = crystal (ecx) * ebx / eax */
        if (a && b && c)
            tpm = (uint64_t)c * b / a / 1000;
    }
    if (!tpm && max >= 0x16) {
        cpuid(0x16, &a, &b, &c);    /* base MHz */
        if (a & 0xffff)
            tpm = (uint64_t)(a & 0xffff) * 1000;
    }
    if (!tpm)
        tpm = 3000000;
    return tpm;
}
#else
uint64_t ticks_per_ms(void)
{
    uint64_t hz;
    __asm__ volatile("mrs %0, cntfrq_el0" : "=r"(hz));
    /* A counter whose frequency nobody set: assume the common 24 MHz. */
    return hz >= 1000 ? hz / 1000 : 24000;
}
#endif

uint64_t deadline_ms(uint64_t ms)
{
    return ticks() + ms * ticks_per_ms();
}

/* ------------------------------------------------------------------ */
/* DMA arena.                                                         */

#define ARENA_SIZE (256 * 1024)
static uint8_t arena[ARENA_SIZE] __attribute__((aligned(4096)));
static size_t arena_used;

void *dma_alloc(size_t size, size_t align)
{
    size_t off = (arena_used + align - 1) & ~(align - 1);
    if (off + size > ARENA_SIZE)
        panic("guest: out of DMA memory\n");
    arena_used = off + size;
    return arena + off;
}
