// hello: prints a greeting on the UART, then resets through PSCI
// SYSTEM_RESET (the VM ends with status 0). If the reset returns, it
// says so and parks.
#include "common.S"

    image_header
entry:
    adr     x1, greeting
    bl      puts
    psci    PSCI_SYSTEM_RESET
    adr     x1, still_here
    bl      puts
park:
    wfi
    b       park

    uart_helpers
greeting:
    .asciz  "Hello from strato test guest\n"
still_here:
    .asciz  "hello: SYSTEM_RESET returned\n"
    image_end
