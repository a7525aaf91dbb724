/* Bare-metal start for the CPU workload on -M spike: stack, FPU on, .bss cleared, main(),
 * then main's return value to HTIF (0 = pass). */
	.section .text.init
	.globl _start
_start:
	csrr t0, mhartid
1:	bnez t0, 1b
	la sp, stack_top
	li t0, (1 << 13)
	csrs mstatus, t0
	csrwi fcsr, 0
	la t0, __bss_start
	la t1, __bss_end
2:	bgeu t0, t1, 3f
	sd zero, 0(t0)
	addi t0, t0, 8
	j 2b
3:	call main
	slli a0, a0, 1
	ori a0, a0, 1
	la t0, tohost
	sd a0, 0(t0)
4:	j 4b

	.section .tohost, "aw", @progbits
	.balign 64
	.globl tohost
	.type tohost, @object
	.size tohost, 8
tohost:	.dword 0
	.balign 64
	.globl fromhost
	.type fromhost, @object
	.size fromhost, 8
fromhost: .dword 0

	.bss
	.balign 16
	.space 65536
stack_top:
