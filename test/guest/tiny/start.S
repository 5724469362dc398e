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

/* Vectors 0-31 are CPU exceptions: each stub pushes a zero where the CPU pushes no error code,
   then its vector, so that guest_exception() can name what went wrong before the VM resets
   (without them an exception would return through irq_entry with a broken frame and end in a
   triple fault that says nothing). */
	.macro	exception vector, has_error
	.globl	exception_\vector
exception_\vector:
	.if	\has_error == 0
	push	$0
	.endif
	push	$\vector
	jmp	exception_common
	.endm
	exception 0, 0
	exception 1, 0
	exception 2, 0
	exception 3, 0
	exception 4, 0
	exception 5, 0
	exception 6, 0
	exception 7, 0
	exception 8, 1
	exception 9, 0
	exception 10, 1
	exception 11, 1
	exception 12, 1
	exception 13, 1
	exception 14, 1
	exception 15, 0
	exception 16, 0
	exception 17, 1
	exception 18, 0
	exception 19, 0
	exception 20, 0
	exception 21, 1
	exception 22, 0
	exception 23, 0
	exception 24, 0
	exception 25, 0
	exception 26, 0
	exception 27, 0
	exception 28, 0
	exception 29, 1
	exception 30, 1
	exception 31, 0

/* Stack: vector, error code, then the CPU's frame (rip, cs, rflags, rsp, ss). */
exception_common:
	mov	%rsp, %rdi
	and	$-16, %rsp
	call	guest_exception
5:	cli
	hlt
	jmp	5b

	.section .rodata
	.balign	8
exception_table:
	.irp	v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad	exception_\v
	.endr
	.globl	exception_table

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
