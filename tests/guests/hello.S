/* hello: prints a greeting, then resets. */
#include "guest.h"
    .text
    .code64
    .globl guest_main
guest_main:
    PUTS "Hello from strato test guest\n"
    ret
