/*
 * serial-loop: benchmark; `loops=<n>` on the command line (default 100000)
 * `out` writes to the 8250 scratch register (one VM exit each).
 */
#include "guest.h"
#define DEFAULT_LOOPS 100000
    .text
    .code64
    .globl guest_main
guest_main:
    push %rbx
    mov $DEFAULT_LOOPS, %ebx
    call cmdline
    mov %rax, %rsi                  /* scan pointer */
    mov %rax, %r8                   /* start of command line */
1:  cmpb $0, (%rsi)
    je 5f                           /* not found: default */
    cmp %r8, %rsi
    je 2f                           /* key must start a word */
    cmpb $' ', -1(%rsi)
    jne 3f
2:  cmpl $0x706f6f6c, (%rsi)        /* "loop" */
    jne 3f
    cmpw $0x3d73, 4(%rsi)           /* "s=" */
    je 4f
3:  inc %rsi
    jmp 1b
4:  add $6, %rsi                    /* parse decimal value */
    xor %ebx, %ebx
6:  movzbl (%rsi), %eax
    sub $'0', %eax
    cmp $9, %eax
    ja 5f
    imul $10, %rbx, %rbx
    add %rax, %rbx
    inc %rsi
    jmp 6b

5:  mov %rbx, %rcx
    mov $COM1_SCR, %edx
    mov $0x55, %al
    test $7, %cl                    /* n % 8 single writes ... */
    jz 7f
6:  out %al, %dx
    dec %rcx
    test $7, %cl
    jnz 6b
7:  test %rcx, %rcx                 /* ... then blocks of 8 */
    jz 8f
    .rept 8
    out %al, %dx
    .endr
    sub $8, %rcx
    jmp 7b
8:  PUTS "serial-loop: "
    PUTDEC %rbx
    PUTS " writes done\n"
    pop %rbx
    ret
