/* bootinfo: prints the boot protocol, command line and memory map. */
#include "guest.h"
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
    cmpl $PROTO_PVH, boot_proto(%rip)
    jne 1f
    PUTS "proto: pvh\n"
    jmp 2f
1:  PUTS "proto: linux64\n"
2:  PUTS "cmdline: "
    call cmdline
    mov %rax, %rdi
    call puts
    PUTS "\n"

    call mm_count
    mov %rax, %r12                  /* entries */
    xor %ebx, %ebx                  /* index */
    xor %r13d, %r13d                /* bytes of type-1 RAM */
3:  cmp %r12, %rbx
    jae 5f
    mov %rbx, %rdi
    call mm_entry
    mov %rax, %r14                  /* start */
    lea (%rax,%rdx), %r15           /* end */
    mov %ecx, %ebp                  /* type */
    cmp $1, %ecx
    jne 4f
    add %rdx, %r13
4:  PUTS "mem: "
    PUTHEX %r14
    PUTS " "
    PUTHEX %r15
    PUTS " "
    PUTDEC %rbp
    PUTS "\n"
    inc %rbx
    jmp 3b

5:  PUTS "ram-mib: "
    shr $20, %r13
    PUTDEC %r13
    PUTS "\n"
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret
