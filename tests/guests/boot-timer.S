/* boot-timer: signals the VMM's boot timer (byte 123 at 0xd0000000). */
#include "guest.h"
    .text
    .code64
    .globl guest_main
guest_main:
    PUTS "boot-timer: signalling\n"
    mov $BOOT_TIMER_ADDR, %eax      /* zero-extended into %rax */
    movb $123, (%rax)
    PUTS "boot-timer: done\n"
    ret
