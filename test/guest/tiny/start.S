/* Two ways in. PVH (what QEMU and vio4wd-vmm use for an ELF with the Xen PHYS32_ENTRY note):
   32-bit protected mode, paging off, EBX = hvm_start_info; we build an identity map of 0..4 GiB,
   enable long mode and continue in 64-bit code. The 64-bit boot protocol: long mode already,
   identity-mapped, RSI = boot_params. */

	.section .note.Xen, "a", @note
	.balign	4
	.long	4		/* namesz: "Xen\0" */
	.long	4		/* descsz */
	.long	18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.balign	4
	.long	pvh_start

	.section .text.start, "ax"
	.code64
	.globl _start
_start:
	lea	stack_top(%rip), %rsp
	mov	%rsi, %rdi
	xor	%esi, %esi
	call	guest_main
1:	cli
	hlt
	jmp	1b

	.code32
	.globl	pvh_start
pvh_start:
	cli
	mov	%ebx, %esi
	movl	$(pvh_pdpt + 3), pvh_pml4
	/* PDPT[0..3] -> the four page directories */
	mov	$(pvh_pd + 3), %eax
	mov	$pvh_pdpt, %edi
	mov	$4, %ecx
2:	mov	%eax, (%edi)
	add	$0x1000, %eax
	add	$8, %edi
	dec	%ecx
	jnz	2b
	/* 2048 2 MiB pages: present, writable, large */
	mov	$0x83, %eax
	mov	$pvh_pd, %edi
	mov	$2048, %ecx
3:	mov	%eax, (%edi)
	add	$0x200000, %eax
	add	$8, %edi
	dec	%ecx
	jnz	3b
	mov	$pvh_pml4, %eax
	mov	%eax, %cr3
	mov	%cr4, %eax
	or	$0x20, %eax		/* PAE */
	mov	%eax, %cr4
	mov	$0xc0000080, %ecx	/* EFER */
	rdmsr
	or	$0x100, %eax		/* LME */
	wrmsr
	mov	%cr0, %eax
	or	$0x80000001, %eax	/* PG | PE */
	mov	%eax, %cr0
	lgdt	pvh_gdt_desc
	ljmp	$0x08, $pvh_long

	.code64
pvh_long:
	mov	$0x10, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	lea	stack_top(%rip), %rsp
	mov	%esi, %edi		/* hvm_start_info, zero-extended */
	mov	$1, %esi
	call	guest_main
4:	cli
	hlt
	jmp	4b

/* Every vector lands here: acknowledge the local APIC and return. The main loop looks at the
   rings after each wake-up, so the handler needs to know nothing else. */
	.globl	irq_entry
irq_entry:
	push	%rax
	movabs	$0xfee000b0, %rax
	movl	$0, (%rax)
	pop	%rax
	iretq

	.section .rodata
	.balign	8
pvh_gdt:
	.quad	0
	.quad	0x00af9a000000ffff	/* 0x08: 64-bit code */
	.quad	0x00cf92000000ffff	/* 0x10: data */
pvh_gdt_desc:
	.word	pvh_gdt_desc - pvh_gdt - 1
	.long	pvh_gdt

	.section .bss
	.balign	4096
pvh_pml4:
	.skip	4096
pvh_pdpt:
	.skip	4096
pvh_pd:
	.skip	4 * 4096
	.balign	16
stack:
	.skip	16384
stack_top:
