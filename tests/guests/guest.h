/*
 * Shared definitions for the strato test guests (included by every .S file).
 *
 * Calling convention of the helpers in common.S: arguments in %rdi/%rsi,
 * result in %rax; helpers may clobber %rax %rcx %rdx %rsi %rdi %r8-%r11 and
 * preserve %rbx %rbp %r12-%r15 (SysV style).
 */
#ifndef STRATO_GUEST_H
#define STRATO_GUEST_H

#define PROTO_PVH       0
#define PROTO_LINUX64   1

#define GUEST_CS64      0x08
#define GUEST_DS        0x10
#define GUEST_CS32      0x18

#define COM1            0x3f8
#define COM1_LSR        0x3fd
#define COM1_SCR        0x3ff
#define LAPIC_BASE      0xfee00000
#define BOOT_TIMER_ADDR 0xd0000000

#ifdef __ASSEMBLER__
/* PUTS "literal": print a string literal (C escapes allowed). */
.macro PUTS str:req
    .pushsection .rodata
.Lputs_str\@:
    .asciz "\str"
    .popsection
    lea .Lputs_str\@(%rip), %rdi
    call puts
.endm

/* PUTDEC reg / PUTHEX reg: print a 64-bit register in decimal / 16 hex digits. */
.macro PUTDEC reg:req
    mov \reg, %rdi
    call putdec
.endm
.macro PUTHEX reg:req
    mov \reg, %rdi
    call puthex
.endm
#endif

#endif
