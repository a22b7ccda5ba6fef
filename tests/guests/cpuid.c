/*
 * cpuid: prints what the vCPU tells the guest of itself, for the CPU
 * template tests: "cpuid: 1 eax <hex> ecx <hex> edx <hex>", "cpuid: 7 ebx <hex>"
 * and "cpuid: msr 1a0 <hex>" (IA32_MISC_ENABLE).
 */
#include "lib.h"

static void cpuid2(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
}

static uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

void guest_main(void)
{
    uint32_t r[4];
    cpuid2(1, 0, r);
    print("cpuid: 1 eax %x ecx %x edx %x\n", r[0], r[2], r[3]);
    cpuid2(7, 0, r);
    print("cpuid: 7 ebx %x\n", r[1]);
    print("cpuid: msr 1a0 %lx\n", rdmsr(0x1a0));
}
