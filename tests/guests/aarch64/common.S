// Shared by the aarch64 test guests: the arm64 Image header that makes a
// raw binary bootable (Documentation/arch/arm64/booting.rst), and the
// UART and PSCI helpers. Everything is position-independent: the guest
// runs with the MMU off wherever the VMM loaded it.

#define UART_BASE        0x40002000
#define UART_LSR         5
#define PSCI_CPU_ON      0xc4000003
#define PSCI_SYSTEM_OFF  0x84000008
#define PSCI_SYSTEM_RESET 0x84000009

// The 64-byte Image header; execution starts at its first word. SIZE is
// what the image occupies once loaded (.bss included).
.macro image_header size=image_end - _start
    .section .text.head, "ax"
    .globl _start
_start:
    b       entry                   // code0
    .long   0                       // code1
    .quad   0                       // text_offset
    .quad   \size                   // image_size
    .quad   0x2                     // flags: little endian, 4 KiB pages
    .quad   0, 0, 0                 // res2-res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5
.endm

// putc: writes w0 to the UART. Clobbers x9.
// puts: writes the NUL-terminated string at x1. Clobbers x0, x1, x9, x30
// saved by the caller if needed.
// puthex: writes x2 as 16 hex digits. Clobbers x0, x3, x4, x9.
.macro uart_helpers
putc:
    ldr     x9, =UART_BASE
    strb    w0, [x9]
    ret
puts:
    mov     x10, x30
1:  ldrb    w0, [x1], #1
    cbz     w0, 2f
    bl      putc
    b       1b
2:  mov     x30, x10
    ret
puthex:
    mov     x11, x30
    mov     x4, #60
3:  lsr     x3, x2, x4
    and     x3, x3, #0xf
    cmp     x3, #10
    add     x0, x3, #'0'
    add     x3, x3, #('a' - 10)
    csel    x0, x3, x0, ge
    bl      putc
    subs    x4, x4, #4
    b.ge    3b
    mov     x30, x11
    ret
.endm

// psci FN: calls PSCI function FN with x1-x3 as they are; result in x0.
.macro psci fn
    ldr     x0, =\fn
    hvc     #0
.endm

.macro image_end
    .ltorg
    .balign 8
image_end:
.endm
