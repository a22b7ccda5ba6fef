/*
 * memory: writes a distinct 64-bit value at the start of every whole MiB of
 * type-1 RAM at or above 2 MiB (the guest image, its page tables and stack,
 * and the boot data live below), then checks them all in a second pass.
 */
#include "guest.h"
#define MIB 0x100000
#define FIRST_MIB (2 * MIB)
#define GIB 0x40000000
#define PATTERN 0x5a17c3e1d2b4f6a9
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
1:  mov %rax, %rbx
    PUTS "memory: mismatch at "
    PUTHEX %rbx
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
 * Each region is done one GiB at a time (map_gib maps GiBs >= 4).
 */
walk:
    xor %r13d, %r13d
    xor %r14d, %r14d
    call mm_count
    mov %rax, %r12
    xor %ebx, %ebx
1:  cmp %r12, %rbx                  /* next memory map entry */
    jae 8f
    mov %rbx, %rdi
    call mm_entry
    inc %rbx
    cmp $1, %ecx
    jne 1b
    lea (%rax,%rdx), %rbp           /* end, rounded down to MiB */
    and $-MIB, %rbp
    add $(MIB - 1), %rax            /* start, rounded up to MiB */
    and $-MIB, %rax
    cmp $FIRST_MIB, %rax
    jae 2f
    mov $FIRST_MIB, %eax
2:  cmp %rbp, %rax                  /* next GiB chunk of the region */
    jae 1b
    mov %rax, %r8
    mov %rax, %rdi
    call map_gib
    test %eax, %eax
    jnz 1b                          /* beyond 512 GiB: skip */
    mov %r8, %rax
    mov %rax, %rdx                  /* %rdx = min(end, next GiB) */
    or $(GIB - 1), %rdx
    inc %rdx
    cmp %rbp, %rdx
    jbe 3f
    mov %rbp, %rdx
3:  mov %rdx, %rcx                  /* count and highest */
    sub %rax, %rcx
    shr $20, %rcx
    add %rcx, %r13
    lea -MIB(%rdx), %r14
    movabs $PATTERN, %rsi
    test %r15d, %r15d
    jz 5f
4:  mov %rax, %rcx                  /* write: value = address ^ PATTERN */
    xor %rsi, %rcx
    mov %rcx, (%rax)
    add $MIB, %rax
    cmp %rdx, %rax
    jb 4b
    jmp 2b
5:  mov %rax, %rcx                  /* verify */
    xor %rsi, %rcx
    cmp %rcx, (%rax)
    jne 9f
    add $MIB, %rax
    cmp %rdx, %rax
    jb 5b
    jmp 2b
8:  xor %eax, %eax
9:  ret
