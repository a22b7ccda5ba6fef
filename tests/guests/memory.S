/*
 * memory: writes a distinct 64-bit value at the start of every whole MiB of
 * type-1 RAM at or above 2 MiB (the guest image, its page tables and stack,
 * and the boot data live below), then checks them all in a second pass.
 */
#include "guest.h"
#define MIB 0x100000
#define FIRST_MIB (2 * MIB)
    .text
    .code64
    .globl guest_main
guest_main:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov $1, %r15d                   /* pass 1: write */
    call walk
    xor %r15d, %r15d                /* pass 2: verify */
    call walk
    test %rax, %rax
    jnz 1f
    PUTS "memory: "
    PUTDEC %r13
    PUTS " MiB ok\n"
    PUTS "memory: highest "
    PUTHEX %r14
    PUTS "\n"
    jmp 2f
1:  PUTS "memory: mismatch at "
    PUTHEX %rax
    PUTS "\n"
2:  pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

/*
 * walk: %r15 = 1 write / 0 verify.  Returns %rax = 0 or the mismatching
 * address; %r13 = MiBs touched, %r14 = highest MiB address touched.
 */
walk:
    xor %r13d, %r13d
    xor %r14d, %r14d
    call mm_count
    mov %rax, %r12
    xor %ebx, %ebx
1:  cmp %r12, %rbx
    jae 6f
    mov %rbx, %rdi
    call mm_entry
    inc %rbx
    cmp $1, %ecx
    jne 1b
    lea (%rax,%rdx), %rbp           /* end, round down to MiB */
    and $-MIB, %rbp
    add $(MIB - 1), %rax            /* start, round up to MiB */
    and $-MIB, %rax
    cmp $FIRST_MIB, %rax
    jae 2f
    mov $FIRST_MIB, %eax
2:  mov $-1, %r9                    /* GiB currently known mapped */
3:  cmp %rbp, %rax
    jae 1b
    mov %rax, %rcx
    shr $30, %rcx
    cmp %r9, %rcx
    je 9f
    mov %rcx, %r9
    mov %rax, %r8
    mov %rax, %rdi
    call map_gib                    /* GiBs >= 4 via the window PD */
    test %eax, %eax
    mov %r8, %rax
    jnz 1b                          /* beyond 512 GiB: skip the rest */
9:  movabs $0x5a17c3e1d2b4f6a9, %rsi
    mov %rax, %rcx
    xor %rsi, %rcx                  /* value = address ^ constant */
    test %r15d, %r15d
    jz 4f
    mov %rcx, (%rax)
    jmp 5f
4:  cmp %rcx, (%rax)
    jne 7f
5:  inc %r13
    cmp %r14, %rax
    jb 8f
    mov %rax, %r14
8:  add $MIB, %rax
    jmp 3b
6:  xor %eax, %eax
7:  ret
