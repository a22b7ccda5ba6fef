/* idle: announces itself, then halts forever with interrupts off. */
#include "guest.h"
    .text
    .code64
    .globl guest_main
guest_main:
    PUTS "idle: ready\n"
1:  cli
    hlt
    jmp 1b
