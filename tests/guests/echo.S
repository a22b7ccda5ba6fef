/* echo: reads one line (max 128 bytes, '\r' ignored) from COM1 and echoes it. */
#include "guest.h"
#define MAXLINE 128
    .text
    .code64
    .globl guest_main
guest_main:
    push %rbx
    push %r12
    PUTS "echo: ready\n"
    lea line(%rip), %rbx
    xor %r12d, %r12d
1:  call getc
    cmp $'\n', %al
    je 2f
    cmp $'\r', %al
    je 1b
    mov %al, (%rbx,%r12)
    inc %r12
    cmp $MAXLINE, %r12
    jb 1b
2:  PUTS "echo: "
    mov %rbx, %rdi
    mov %r12, %rsi
    call write
    PUTS "\n"
    pop %r12
    pop %rbx
    ret

    .bss
line:
    .skip MAXLINE
