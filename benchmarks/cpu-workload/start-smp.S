/* Bare-metal start for smp.elf on -M spike: every hart gets its own block in the hart area
 * above .bss (a copy of the workload's thread-local data, tp pointing at it, then its stack),
 * FPU on, and calls hart_main(mhartid).  Hart 0 first clears .bss (the harts' shared records);
 * the other harts wait in hart_main until it is done.  Harts past SMP_MAX_HARTS park. */
#define SMP_MAX_HARTS 8

	.section .text.init
	.globl _start
_start:
	csrr s0, mhartid
	li t0, (1 << 13)
	csrs mstatus, t0
	csrwi fcsr, 0
	li t0, SMP_MAX_HARTS
	bgeu s0, t0, park
	bnez s0, 2f
	la t0, __bss_start
	la t1, __bss_end
1:	bgeu t0, t1, 2f
	sd zero, 0(t0)
	addi t0, t0, 8
	j 1b
	/* block = __hart_area + hartid * __hart_stride; tp = block, sp = block + stride */
2:	la t2, layout
	ld t0, 0(t2)
	ld t1, 8(t2)
	mul t3, t1, s0
	add tp, t0, t3
	add sp, tp, t1
	/* the .tdata image, then zeros up to the end of the TLS block (.tbss) */
	ld t0, 16(t2)
	ld t1, 24(t2)
	mv t3, tp
3:	bgeu t0, t1, 4f
	lbu t4, 0(t0)
	sb t4, 0(t3)
	addi t0, t0, 1
	addi t3, t3, 1
	j 3b
4:	ld t1, 32(t2)
	add t1, tp, t1
5:	bgeu t3, t1, 6f
	sb zero, 0(t3)
	addi t3, t3, 1
	j 5b
6:	mv a0, s0
	call hart_main
park:	wfi
	j park

	.section .rodata
	.balign 8
layout:	.dword __hart_area, __hart_stride, __tdata_start, __tdata_end, __tls_block_size

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
