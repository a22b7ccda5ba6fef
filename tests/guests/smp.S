/*
 * smp: finds the CPUs in the Intel MP table, starts every AP with
 * INIT + SIPI through a real-mode trampoline at 0x8000, and waits until
 * each has reported in under a spinlock.
 */
#include "guest.h"
#define TRAMPOLINE      0x8000          /* SIPI vector 0x08 */
#define ICR_LOW         (LAPIC_BASE + 0x300)
#define ICR_HIGH        (LAPIC_BASE + 0x310)
#define MAX_APS         255
#define DELAY           300             /* iterations between IPIs */
/* Bound on the final wait, in TSC ticks (seconds at any clock rate): a
 * bound in loop iterations ran out before the APs' real-mode start on a
 * fast CPU with slow AP bring-up (nested virtualization). */
#define WAIT_TSC_SHIFT  34

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
    mov $(LAPIC_BASE + 0x20), %eax  /* LAPIC ID register */
    mov (%rax), %r12d
    shr $24, %r12d                  /* %r12 = BSP APIC id */
    PUTS "smp: bsp apic "
    PUTDEC %r12
    PUTS "\n"

    /* Collect the APs' APIC ids; %r13 = CPUs, %r14 = APs. */
    mov $1, %r13d
    xor %r14d, %r14d
    call find_mp_config
    test %rax, %rax
    jnz 1f
    PUTS "smp: no mp table\n"
    jmp 4f
    /* Walk the entries by the base table length (like Linux does; some
     * firmware, e.g. qboot, leaves the entry count at 0). */
1:  xor %r13d, %r13d
    movzwl 4(%rax), %ebp            /* base table length */
    add %rax, %rbp                  /* end of the entries */
    lea 44(%rax), %rsi              /* first entry */
    lea ap_ids(%rip), %rdi
2:  cmp %rbp, %rsi
    jae 4f
    movzbl (%rsi), %eax
    test %eax, %eax                 /* type 0: processor, 20 bytes */
    jz 3f
    cmp $4, %eax                    /* types 1-4 are 8 bytes */
    ja 4f                           /* unknown: stop */
    add $8, %rsi
    jmp 2b
3:  movzbl 3(%rsi), %eax            /* flags */
    movzbl 1(%rsi), %ecx            /* APIC id */
    add $20, %rsi
    test $1, %al                    /* enabled? */
    jz 2b
    inc %r13
    test $2, %al                    /* BSP? */
    jnz 2b
    cmp %r12d, %ecx
    je 2b
    cmp $MAX_APS, %r14
    jae 2b
    mov %cl, (%rdi,%r14)
    inc %r14
    jmp 2b

4:  PUTS "smp: "
    PUTDEC %r13
    PUTS " cpus in mp table\n"

    /* Copy the trampoline below 1 MiB. */
    lea tramp_start(%rip), %rsi
    mov $TRAMPOLINE, %edi
    mov $(tramp_end - tramp_start), %ecx
    rep movsb
    movl $0, ap_lock(%rip)
    movl $0, ap_count(%rip)

    /* INIT + SIPI to each AP. */
    xor %ebx, %ebx
5:  cmp %r14, %rbx
    jae 6f
    lea ap_ids(%rip), %rax
    movzbl (%rax,%rbx), %edi
    mov $0x00004500, %esi           /* INIT, level assert */
    call send_ipi
    movzbl (%rax,%rbx), %edi
    mov $(0x00004600 | (TRAMPOLINE >> 12)), %esi /* STARTUP */
    call send_ipi
    inc %rbx
    jmp 5b

    /* Bounded wait for every AP to check in. */
6:  rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r15                  /* %r15 = TSC at the start of the wait */
7:  mov ap_count(%rip), %eax
    cmp %r14d, %eax
    je 8f
    pause
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    sub %r15, %rdx
    shr $WAIT_TSC_SHIFT, %rdx
    jz 7b
    PUTS "smp: timeout, "
    mov ap_count(%rip), %eax
    PUTDEC %rax
    PUTS " of "
    PUTDEC %r14
    PUTS " aps\n"
    jmp 9f
8:  PUTS "smp: "
    PUTDEC %r13
    PUTS " cpus online\n"
9:  pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

/* send_ipi(%edi = APIC id, %esi = ICR low); preserves %rax. */
send_ipi:
    mov $ICR_HIGH, %edx
    shl $24, %edi
    mov %edi, (%rdx)
    mov $ICR_LOW, %edx
    mov %esi, (%rdx)
    mov $DELAY, %ecx
1:  testl $0x1000, (%rdx)           /* delivery status */
    jz 2f
    dec %ecx
    jnz 1b
2:  mov $DELAY, %ecx
3:  dec %ecx
    jnz 3b
    ret

/*
 * find_mp_config() -> %rax: the MP configuration table ("PCMP") or 0.
 * The floating pointer "_MP_" is searched in the first KiB of the EBDA,
 * the last KiB of base memory and the BIOS area 0xf0000-0xfffff.
 */
find_mp_config:
    movzwl 0x40e, %edi              /* BDA: EBDA segment */
    shl $4, %edi
    jz 1f
    mov $1024, %esi
    call scan_mpfp
    jnz 2f
1:  mov $0x9fc00, %edi
    mov $1024, %esi
    call scan_mpfp
    jnz 2f
    mov $0xf0000, %edi
    mov $0x10000, %esi
    call scan_mpfp
    jz 3f
2:  mov 4(%rax), %eax               /* physical address of config table */
    test %eax, %eax
    jz 3f                           /* default configuration: unsupported */
    cmpl $0x504d4350, (%rax)        /* "PCMP" */
    je 4f
3:  xor %eax, %eax
4:  ret

/* scan_mpfp(%rdi = start, %rsi = length) -> %rax, ZF clear if found. */
scan_mpfp:
    add %rdi, %rsi
1:  cmp %rsi, %rdi
    jae 4f
    cmpl $0x5f504d5f, (%rdi)        /* "_MP_" */
    jne 3f
    xor %eax, %eax                  /* checksum of the 16 bytes */
    xor %ecx, %ecx
2:  add (%rdi,%rcx), %al
    inc %ecx
    cmp $16, %ecx
    jb 2b
    test %al, %al
    jnz 3f
    mov %rdi, %rax
    test %rax, %rax                 /* ZF = 0 */
    ret
3:  add $16, %rdi
    jmp 1b
4:  xor %eax, %eax                  /* ZF = 1 */
    ret

/* ------------------------------------------------------------------ */
/* AP side.  The trampoline is copied to TRAMPOLINE and entered in real
 * mode at CS = TRAMPOLINE >> 4, IP = 0. */
    .code16
tramp_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl tramp_gdt_desc - tramp_start
    mov %cr0, %eax
    or $1, %eax                     /* PE */
    mov %eax, %cr0
    ljmpl $GUEST_CS32, $ap_entry32
tramp_gdt_desc:
    .word gdt_limit
    .long gdt
tramp_end:

    .code32
ap_entry32:
    mov $GUEST_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $ap_entry64, %edi
    jmp lm_enter                    /* PAE, our CR3, EFER.LME, paging */

    .code64
ap_entry64:
    mov $(LAPIC_BASE + 0x20), %eax
    mov (%rax), %ebx
    shr $24, %ebx                   /* %rbx = own APIC id */
1:  mov $1, %eax
    xchg %eax, ap_lock(%rip)
    test %eax, %eax
    jnz 1b
    lea ap_stack_top(%rip), %rsp    /* one stack, used only under the lock */
    PUTS "smp: ap "
    PUTDEC %rbx
    PUTS " up\n"
    incl ap_count(%rip)
    movl $0, ap_lock(%rip)
2:  cli
    hlt
    jmp 2b

    .data
    .balign 4
ap_lock:
    .long 0
ap_count:
    .long 0

    .bss
ap_ids:
    .skip MAX_APS
    .balign 16
ap_stack:
    .skip 1024
ap_stack_top:
