/* Entry from the VMM's 64-bit boot: long mode, identity-mapped 0..4 GiB, RSI = boot_params. */
	.section .text.start, "ax"
	.globl _start
_start:
	lea	stack_top(%rip), %rsp
	mov	%rsi, %rdi
	call	guest_main
1:	cli
	hlt
	jmp	1b

/* Every vector lands here: acknowledge the local APIC and return. The main loop looks at the
   rings after each wake-up, so the handler needs to know nothing else. */
	.globl	irq_entry
irq_entry:
	push	%rax
	movabs	$0xfee000b0, %rax
	movl	$0, (%rax)
	pop	%rax
	iretq

	.section .bss
	.balign	16
stack:
	.skip	16384
stack_top:
