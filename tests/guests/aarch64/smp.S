// smp: the boot vCPU starts every other vCPU with PSCI CPU_ON, one at a
// time (MPIDR affinity 0 = 1, 2, ... until PSCI says there is no such
// CPU); each prints its MPIDR_EL1. Then "smp: N cpus" and a reset.
// One vCPU prints at a time (the boot vCPU waits for each to say it is
// done), so no lock is needed: with the MMU off there is no cacheable
// memory for exclusive loads and stores.
#include "common.S"

#define PSCI_INVALID_PARAMETERS -2

    image_header
entry:
    mrs     x2, mpidr_el1
    adr     x1, cpu_msg
    bl      puts
    and     x2, x2, #0xffffff
    bl      puthex
    mov     w0, #'\n'
    bl      putc
    mov     x20, #1                 // next MPIDR to start
    mov     x21, #1                 // CPUs up
next:
    adr     x5, done
    str     xzr, [x5]
    mov     x1, x20                 // target MPIDR
    adr     x2, secondary           // entry point
    mov     x3, x20                 // context id
    psci    PSCI_CPU_ON
    cmn     x0, #-PSCI_INVALID_PARAMETERS
    b.eq    finished
    cbnz    x0, failed
    ldr     x6, =200000000          // about seconds on an emulated CPU
wait:
    adr     x5, done
    ldr     x7, [x5]
    cbnz    x7, up
    subs    x6, x6, #1
    b.ne    wait
    adr     x1, timeout_msg
    bl      puts
    b       finished
up:
    add     x21, x21, #1
    add     x20, x20, #1
    b       next
failed:
    mov     x2, x0
    adr     x1, failed_msg
    bl      puts
    bl      puthex
    mov     w0, #'\n'
    bl      putc
finished:
    adr     x1, total_msg
    bl      puts
    mov     x2, x21
    bl      puthex
    adr     x1, cpus_msg
    bl      puts
    psci    PSCI_SYSTEM_RESET
park:
    wfi
    b       park

secondary:
    mrs     x2, mpidr_el1
    adr     x1, cpu_msg
    bl      puts
    and     x2, x2, #0xffffff
    bl      puthex
    mov     w0, #'\n'
    bl      putc
    mov     x7, #1
    adr     x5, done
    str     x7, [x5]
    b       park

    uart_helpers
cpu_msg:
    .asciz  "smp: cpu mpidr 0x"
failed_msg:
    .asciz  "smp: CPU_ON failed: 0x"
timeout_msg:
    .asciz  "smp: timeout\n"
total_msg:
    .asciz  "smp: 0x"
cpus_msg:
    .asciz  " cpus\n"
    .balign 8
done:
    .quad   0
    image_end
