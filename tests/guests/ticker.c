/*
 * ticker: prints "tick <n>" every period=<ms> milliseconds (default 20),
 * forever.  Used to see a VM pause (no ticks) and resume (ticks again).
 */
#include "lib.h"

void guest_main(void)
{
    uint64_t period = arg_u64("period", 20);
    print("ticker: ready\n");
    for (uint64_t n = 0;; n++) {
        uint64_t dl = deadline_ms(period);
        while (!expired(dl))
            __asm__ volatile("pause");
        print("tick %lu\n", n);
    }
}
