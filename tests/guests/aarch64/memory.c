/*
 * memory (arm64): every MiB of the RAM the device tree describes is
 * usable. Prints "memory: ram <base> <size>" per range of the memory
 * nodes (16 hex digits each), then writes address ^ 0x5a17c3e1d2b4f6a9
 * to the first word of every whole MiB from 2 MiB above the start of RAM
 * (the guest and its stack live below), checks them all, and prints
 * "memory: <n> MiB ok" and "memory: highest <hex address of the last
 * MiB>", or "memory: mismatch at <hex>"; then resets. The same output as
 * the x86 memory guest, whose RAM comes from the E820 map instead.
 */
#include "lib.h"

#define MIB (1ULL << 20)
#define PATTERN 0x5a17c3e1d2b4f6a9ULL
#define MAX_RANGES 8

static struct {
    uint64_t base, size;
} ranges[MAX_RANGES];
static int nranges;
static uint64_t lowest = ~0ULL;

static void add(uint64_t base, uint64_t size)
{
    print("memory: ram %016lx %016lx\n", base, size);
    if (nranges < MAX_RANGES) {
        ranges[nranges].base = base;
        ranges[nranges].size = size;
        nranges++;
    }
    if (base < lowest)
        lowest = base;
}

void guest_main(void)
{
    fdt_memory_ranges(add);
    if (!nranges) {
        print("memory: no memory nodes\n");
        return;
    }
    /* The device tree sits in the top 2 MiB; it has been read. */
    uint64_t skip = lowest + 2 * MIB, n = 0, highest = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int r = 0; r < nranges; r++) {
            uint64_t start = (ranges[r].base + MIB - 1) & ~(MIB - 1);
            uint64_t end = (ranges[r].base + ranges[r].size) & ~(MIB - 1);
            if (start < skip)
                start = skip;
            for (uint64_t a = start; a < end; a += MIB) {
                volatile uint64_t *w = (volatile uint64_t *)a;
                if (pass == 0) {
                    *w = a ^ PATTERN;
                } else if (*w != (a ^ PATTERN)) {
                    print("memory: mismatch at %016lx\n", a);
                    return;
                } else {
                    n++;
                    highest = a;
                }
            }
        }
    }
    print("memory: %lu MiB ok\n", n);
    print("memory: highest %016lx\n", highest);
}
