// Start-up of the C test guests on arm64 (the x86 ones start in
// ../common.S): the Image header, a stack, a zeroed .bss, exception
// vectors that report and reset, and the MMU on with an identity map, so
// that guest memory is normal cacheable memory (the VMM's view of the
// rings stays coherent with the guest's, unaligned accesses are allowed)
// and the device windows below RAM are device memory. Then guest_main();
// its return resets the VM, as on x86.
//
// Linked at the start of RAM (aarch64/guest.ld), where strato loads an
// Image whose text_offset is 0; loaded anywhere else it says so and powers
// off. Only the boot vCPU runs: the others stay off (no PSCI CPU_ON).

#include "common.S"

// MAIR_EL1 attribute 0: Device-nGnRnE; attribute 1: Normal, write-back.
#define MAIR_VALUE      0xff00
// Level-1 block descriptor (1 GiB): valid block, access flag set.
#define BLOCK           ((1 << 10) | 1)
#define ATTR_DEVICE     ((0 << 2) | (3 << 53))      // AttrIndx 0, PXN+UXN
#define ATTR_NORMAL     ((1 << 2) | (3 << 8))       // AttrIndx 1, inner shareable
// TCR_EL1: 39-bit addresses (T0SZ 25, tables start at level 1), 4 KiB
// granule, write-back walks, inner shareable, no TTBR1 walks (EPD1);
// IPS is set from the CPU's physical address range below.
#define TCR_VALUE       ((25 << 0) | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23))

    image_header __image_size

    .text
entry:
    adr     x1, _start
    ldr     x2, =_start
    cmp     x1, x2
    b.ne    misplaced
    mov     x19, x0                 // the FDT (booting.rst: x0)
    ldr     x1, =__stack_top
    mov     sp, x1
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  ldr     x1, =fdt_base
    str     x19, [x1]
    ldr     x1, =vectors
    msr     vbar_el1, x1
    bl      mmu_on
    bl      guest_main
    b       reset

// Identity map: the first two GiB (GIC, UART, RTC, virtio windows) as
// device memory, everything from 2 GiB (RAM) to 512 GiB as normal memory.
mmu_on:
    ldr     x1, =page_table
    mov     x2, #0
1:  lsl     x3, x2, #30
    cmp     x2, #2
    b.hs    2f
    ldr     x4, =(BLOCK | ATTR_DEVICE)
    b       3f
2:  ldr     x4, =(BLOCK | ATTR_NORMAL)
3:  orr     x3, x3, x4
    str     x3, [x1, x2, lsl #3]
    add     x2, x2, #1
    cmp     x2, #512
    b.lo    1b
    dsb     sy
    // The table was written with the MMU off, past any cache; the walker
    // reads it through the cache once the MMU is on: drop stale lines.
    mrs     x3, ctr_el0
    ubfx    x3, x3, #16, #4         // DminLine: log2 of the line in words
    mov     x4, #4
    lsl     x3, x4, x3              // line size in bytes
    mov     x2, x1
    add     x4, x1, #4096
4:  dc      ivac, x2
    add     x2, x2, x3
    cmp     x2, x4
    b.lo    4b
    dsb     sy
    ldr     x2, =MAIR_VALUE
    msr     mair_el1, x2
    mrs     x2, id_aa64mmfr0_el1
    and     x2, x2, #7              // PARange
    ldr     x3, =TCR_VALUE
    orr     x3, x3, x2, lsl #32     // IPS = PARange
    msr     tcr_el1, x3
    msr     ttbr0_el1, x1
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    mrs     x2, sctlr_el1
    orr     x2, x2, #(1 << 0)       // M: MMU on
    orr     x2, x2, #(1 << 2)       // C: data cacheable
    orr     x2, x2, #(1 << 12)      // I: instructions cacheable
    bic     x2, x2, #(1 << 1)       // A: no alignment faults
    msr     sctlr_el1, x2
    isb
    ret

misplaced:
    adr     x1, misplaced_msg
    bl      puts
    psci    PSCI_SYSTEM_OFF
    b       .

// Exceptions: none is expected; report which one (vector offset / 0x80),
// ESR, ELR and FAR, and reset so the test sees it at once.
    .macro vector n
    .balign 0x80
    mov     x20, #\n
    b       exception
    .endm
    .balign 0x800
vectors:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vector \n
    .endr

exception:
    adr     x1, exception_msg
    bl      puts
    mov     x2, x20
    bl      puthex
    adr     x1, esr_msg
    bl      puts
    mrs     x2, esr_el1
    bl      puthex
    adr     x1, elr_msg
    bl      puts
    mrs     x2, elr_el1
    bl      puthex
    adr     x1, far_msg
    bl      puts
    mrs     x2, far_el1
    bl      puthex
    mov     w0, #'\n'
    bl      putc
    b       reset

    .globl reset
reset:
    psci    PSCI_SYSTEM_RESET
    b       .

    uart_helpers

    .section .rodata
misplaced_msg:  .asciz "guest: not loaded at the start of RAM\n"
exception_msg:  .asciz "guest: exception "
esr_msg:        .asciz " esr "
elr_msg:        .asciz " elr "
far_msg:        .asciz " far "

    .bss
    .balign 4096
page_table:
    .space  4096
    .balign 16
    .space  65536
__stack_top:
    .globl fdt_base
    .balign 8
fdt_base:
    .space  8
