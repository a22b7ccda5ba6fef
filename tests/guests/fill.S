/*
 * fill: touches every 4 KiB page of type-1 RAM below 4 GiB by writing back
 * the byte it reads (contents, page tables and code included, unchanged),
 * so the host has to back all of guest memory; then prints the page count
 * and resets. Used to push a VMM past its cgroup memory limit.
 */
#include "guest.h"
#define PAGE 0x1000
#define FOUR_GIB 0x100000000
    .text
    .code64
    .globl guest_main
guest_main:
    push %rbx
    push %rbp
    push %r12
    push %r13
    xor %r13d, %r13d                /* pages touched */
    call mm_count
    mov %rax, %r12
    xor %ebx, %ebx
1:  cmp %r12, %rbx                  /* next memory map entry */
    jae 4f
    mov %rbx, %rdi
    call mm_entry
    inc %rbx
    cmp $1, %ecx
    jne 1b
    lea (%rax,%rdx), %rbp           /* end, rounded down to a page */
    and $-PAGE, %rbp
    movabs $FOUR_GIB, %rcx          /* GiBs 0-3 are always mapped */
    cmp %rcx, %rbp
    jbe 2f
    mov %rcx, %rbp
2:  add $(PAGE - 1), %rax           /* start, rounded up to a page */
    and $-PAGE, %rax
3:  cmp %rbp, %rax
    jae 1b
    movb (%rax), %cl
    movb %cl, (%rax)
    inc %r13
    add $PAGE, %rax
    jmp 3b
4:  PUTS "fill: "
    PUTDEC %r13
    PUTS " pages\n"
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret
