/*
 * kbd: prints "kbd: ready", then reads the i8042 keyboard by polling
 * (status port 0x64 bit 0, data port 0x60) until it has 11 bytes (the
 * Ctrl-Alt-Del sequence in scancode set 2) or timeout=<ms> passes, and
 * prints "kbd: <bytes in hex>" (or "kbd: timeout after <n> bytes").
 */
#include "lib.h"

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

void guest_main(void)
{
    uint8_t got[11];
    int n = 0;
    print("kbd: ready\n");
    uint64_t dl = deadline_ms(arg_u64("timeout", 10000));
    while (n < 11 && !expired(dl)) {
        if (inb(0x64) & 1)
            got[n++] = inb(0x60);
    }
    if (n < 11) {
        print("kbd: timeout after %d bytes\n", n);
        return;
    }
    print("kbd:");
    for (int i = 0; i < n; i++)
        print(" %02x", got[i]);
    print("\n");
}
