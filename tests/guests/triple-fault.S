/* triple-fault: announces itself, then triple-faults (no i8042 reset). */
#include "guest.h"
    .text
    .code64
    .globl guest_main
guest_main:
    PUTS "triple-fault: now\n"
    jmp triple_fault
