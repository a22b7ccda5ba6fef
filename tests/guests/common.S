/*
 * Common runtime for the strato test guests: both boot entry paths, the
 * switch to long mode, page tables, serial output/input, boot-info access
 * for both protocols and reset.  Every guest links this file and provides
 * `guest_main` (64-bit, called with a stack; returning resets the VM).
 *
 * Entry paths:
 *  - PVH (`pvh_entry`, advertised by the XEN_ELFNOTE_PHYS32_ENTRY note):
 *    32-bit protected mode, paging off, %ebx = struct hvm_start_info.
 *  - Linux 64-bit (`entry64`, the ELF e_entry): long mode on the VMM's
 *    page tables, %rsi = struct boot_params (zero page).
 * Both load this file's GDT and page tables, then meet in `common64`.
 *
 * Build with -DNO_PVH to leave out the PVH note (exercises entry64).
 */
#include "guest.h"

/* ------------------------------------------------------------------ */
/* PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (18), owner "Xen".          */
#ifndef NO_PVH
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz */
    .long 8                 /* descsz */
    .long 18                /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_entry         /* 32-bit physical entry address */
    .balign 4
#endif

/* ------------------------------------------------------------------ */
    .section .text.entry, "ax"

/* Linux 64-bit boot protocol entry (ELF e_entry). */
    .code64
    .globl entry64
entry64:
    cli
    mov %rsi, %rbx                  /* boot_params */
    lea pml4(%rip), %rax
    mov %rax, %cr3                  /* our own identity map */
    lgdt gdt_desc(%rip)
    pushq $GUEST_CS64
    lea 1f(%rip), %rax
    push %rax
    lretq                           /* reload CS from our GDT */
1:  mov $PROTO_LINUX64, %edi
    jmp common64

/* PVH entry: 32-bit protected mode, paging off, %ebx = hvm_start_info. */
    .code32
    .globl pvh_entry
pvh_entry:
    cli
    lgdt gdt_desc
    mov $GUEST_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $common64_pvh, %edi
    /* fall through */

/*
 * lm_enter: 32-bit protected mode (flat, paging off) -> 64-bit long mode,
 * then jump to the 64-bit address in %edi.  Uses no stack; clobbers
 * %eax %ecx %edx.  Also used by the APs of the smp guest.
 */
    .globl lm_enter
lm_enter:
    mov %cr4, %eax
    or $0x20, %eax                  /* CR4.PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           /* IA32_EFER */
    rdmsr
    or $0x100, %eax                 /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    and $0x9fffffff, %eax           /* caches on (clear CD, NW) */
    or $0x80000001, %eax            /* PG | PE */
    mov %eax, %cr0
    ljmp $GUEST_CS64, $lm64

    .code64
lm64:
    mov $GUEST_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %edi, %edi
    jmp *%rdi

common64_pvh:
    mov %ebx, %ebx                  /* zero-extend hvm_start_info */
    mov $PROTO_PVH, %edi
    /* fall through */

/* %edi = protocol, %rbx = boot info pointer. */
common64:
    mov $GUEST_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea stack_top(%rip), %rsp
    cld
    mov %edi, boot_proto(%rip)
    mov %rbx, boot_info(%rip)
    call guest_main
    jmp reset

/* ------------------------------------------------------------------ */
    .text

/* reset: ask the i8042 to pulse the reset line; if that does nothing
 * (no i8042), triple-fault. Never returns. */
    .globl reset
reset:
    mov $0xfe, %al
    out %al, $0x64
    /* fall through */

/* triple_fault: empty IDT, then #UD -> #GP -> #DF -> triple fault. */
    .globl triple_fault
triple_fault:
    cli
    lidt null_idt(%rip)
    ud2
1:  hlt                             /* not reached */
    jmp 1b

/* putc(%dil): write one byte to COM1 (bounded wait for THR empty). */
    .globl putc
putc:
    mov $COM1_LSR, %edx
    mov $1000, %ecx
1:  in %dx, %al
    test $0x20, %al
    jnz 2f
    dec %ecx
    jnz 1b
2:  mov $COM1, %edx
    mov %edi, %eax
    out %al, %dx
    ret

/* puts(%rdi): write a NUL-terminated string. */
    .globl puts
puts:
    push %rbx
    mov %rdi, %rbx
1:  movzbl (%rbx), %edi
    test %edi, %edi
    jz 2f
    call putc
    inc %rbx
    jmp 1b
2:  pop %rbx
    ret

/* write(%rdi = buf, %rsi = len): write len bytes. */
    .globl write
write:
    push %rbx
    push %rbp
    mov %rdi, %rbx
    lea (%rdi,%rsi), %rbp
1:  cmp %rbp, %rbx
    jae 2f
    movzbl (%rbx), %edi
    call putc
    inc %rbx
    jmp 1b
2:  pop %rbp
    pop %rbx
    ret

/* puthex(%rdi): 16 lowercase hex digits. */
    .globl puthex
puthex:
    push %rbx
    push %rbp
    mov %rdi, %rbx
    mov $16, %ebp
1:  rol $4, %rbx
    mov %ebx, %edi
    and $15, %edi
    cmp $10, %edi
    jb 2f
    add $('a' - '0' - 10), %edi
2:  add $'0', %edi
    call putc
    dec %ebp
    jnz 1b
    pop %rbp
    pop %rbx
    ret

/* putdec(%rdi): unsigned decimal. */
    .globl putdec
putdec:
    sub $32, %rsp
    lea 31(%rsp), %rsi
    movb $0, (%rsi)
    mov %rdi, %rax
    mov $10, %ecx
1:  xor %edx, %edx
    div %rcx
    add $'0', %dl
    dec %rsi
    mov %dl, (%rsi)
    test %rax, %rax
    jnz 1b
    mov %rsi, %rdi
    call puts
    add $32, %rsp
    ret

/* getc() -> %eax: wait for a byte from COM1. */
    .globl getc
getc:
    mov $COM1_LSR, %edx
1:  in %dx, %al
    test $1, %al
    jz 1b
    mov $COM1, %edx
    in %dx, %al
    movzbl %al, %eax
    ret

/* cmdline() -> %rax: the kernel command line (never NULL). */
    .globl cmdline
cmdline:
    mov boot_info(%rip), %rdx
    cmpl $PROTO_PVH, boot_proto(%rip)
    jne 1f
    mov 24(%rdx), %rax              /* hvm_start_info.cmdline_paddr */
    jmp 2f
1:  mov 0x228(%rdx), %eax           /* boot_params.hdr.cmd_line_ptr */
    mov 0xc8(%rdx), %ecx            /* boot_params.ext_cmd_line_ptr */
    shl $32, %rcx
    or %rcx, %rax
2:  test %rax, %rax
    jnz 3f
    lea empty_str(%rip), %rax
3:  ret

/* mm_count() -> %rax: number of memory map entries. */
    .globl mm_count
mm_count:
    mov boot_info(%rip), %rdx
    cmpl $PROTO_PVH, boot_proto(%rip)
    jne 1f
    xor %eax, %eax
    cmpl $1, 4(%rdx)                /* memmap fields need version >= 1 */
    jb 2f
    cmpq $0, 40(%rdx)               /* memmap_paddr */
    je 2f
    mov 48(%rdx), %eax              /* memmap_entries */
    ret
1:  movzbl 0x1e8(%rdx), %eax        /* boot_params.e820_entries */
2:  ret

/* mm_entry(%rdi = index) -> %rax = start, %rdx = size, %ecx = type. */
    .globl mm_entry
mm_entry:
    mov boot_info(%rip), %rdx
    cmpl $PROTO_PVH, boot_proto(%rip)
    jne 1f
    mov 40(%rdx), %rsi              /* hvm_memmap_table_entry[24] */
    lea (%rdi,%rdi,2), %rdi
    lea (%rsi,%rdi,8), %rsi
    jmp 2f
1:  lea (%rdi,%rdi,4), %rdi         /* boot_e820_entry[20] */
    lea 0x2d0(%rdx,%rdi,4), %rsi
2:  mov (%rsi), %rax
    mov 8(%rsi), %rdx
    mov 16(%rsi), %ecx
    ret

/*
 * map_gib(%rdi = address) -> %eax = 0 if the GiB holding the address is
 * mapped, 1 if it cannot be (>= 512 GiB).  GiBs 0-3 are always mapped; one
 * higher GiB at a time is mapped through the window page directory (a
 * 512-iteration fill, only when the window moves).  Clobbers %rax %rcx
 * %rdx %rdi.
 */
    .globl map_gib
map_gib:
    shr $30, %rdi
    cmp $4, %rdi
    jb 3f
    cmp $512, %rdi
    jae 4f
    cmp high_gib(%rip), %rdi
    je 3f
    lea pdpt(%rip), %rdx
    mov high_gib(%rip), %rax
    test %rax, %rax
    jz 2f
    movq $0, (%rdx,%rax,8)          /* unmap the old window */
2:  mov %rdi, high_gib(%rip)
    mov %rdi, %rax
    shl $30, %rax
    or $0x83, %rax                  /* P | RW | PS */
    lea high_pd(%rip), %rcx
    lea 4096(%rcx), %rdx
1:  mov %rax, (%rcx)
    add $0x200000, %rax
    add $8, %rcx
    cmp %rdx, %rcx
    jb 1b
    lea pdpt(%rip), %rdx
    lea high_pd(%rip), %rax
    or $3, %rax
    mov %rax, (%rdx,%rdi,8)
    mov %cr3, %rax                  /* flush the TLB */
    mov %rax, %cr3
3:  xor %eax, %eax
    ret
4:  mov $1, %eax
    ret

/* ------------------------------------------------------------------ */
    .section .rodata
empty_str:
    .byte 0

    .section .data
    .balign 16
    .globl gdt
gdt:
    .quad 0                         /* null */
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: flat data */
    .quad 0x00cf9a000000ffff        /* 0x18: 32-bit flat code */
gdt_end:
    .globl gdt_desc, gdt_limit
    .set gdt_limit, gdt_end - gdt - 1
    .balign 8
    .word 0, 0, 0                   /* pad so the base is 8-aligned */
gdt_desc:
    .word gdt_limit
    .quad gdt
null_idt:
    .word 0
    .quad 0

    .globl boot_proto, boot_info
boot_proto:
    .long 0
    .balign 8
boot_info:
    .quad 0

/*
 * Identity map of 0..4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..3] ->
 * four page directories.  Built at assembly time, so no fill loop runs in
 * the guest.  GiB 3 (the 3-4 GiB MMIO hole: LAPIC, IOAPIC, boot timer) is
 * mapped uncached.  1 GiB pages are not used: this KVM (kvm_pvm) does not
 * offer PDPE1GB and treats PDPTE.PS as a reserved bit.  Higher GiBs are
 * mapped on demand by map_gib through one window page directory.
 */
    .balign 4096
    .globl pml4
pml4:
    .quad pdpt + 0x3                /* present | writable */
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 0x3
    .quad pd + 0x1000 + 0x3
    .quad pd + 0x2000 + 0x3
    .quad pd + 0x3000 + 0x3
    .fill 508, 8, 0
pd:
    .set page, 0
    .rept 2048
    .if page >= 1536
    .quad (page << 21) | 0x9b       /* P | RW | PWT | PCD | PS */
    .else
    .quad (page << 21) | 0x83       /* P | RW | PS */
    .endif
    .set page, page + 1
    .endr
high_gib:
    .quad 0                         /* GiB currently in the window, 0 = none */

    .section .bss
    .balign 4096
high_pd:
    .skip 4096
stack:
    .skip 8192
stack_top:
