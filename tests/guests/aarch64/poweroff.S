// poweroff: prints its boot registers (X0 is the FDT's address, which
// must hold the FDT magic), then powers off through PSCI SYSTEM_OFF.
#include "common.S"

    image_header
entry:
    mov     x19, x0
    adr     x1, fdt_at
    bl      puts
    mov     x2, x19
    bl      puthex
    adr     x1, magic
    bl      puts
    ldr     w2, [x19]
    rev     w2, w2
    bl      puthex
    mov     w0, #'\n'
    bl      putc
    psci    PSCI_SYSTEM_OFF
    adr     x1, still_here
    bl      puts
park:
    wfi
    b       park

    uart_helpers
fdt_at:
    .asciz  "poweroff: fdt at 0x"
magic:
    .asciz  " magic 0x"
still_here:
    .asciz  "poweroff: SYSTEM_OFF returned\n"
    image_end
