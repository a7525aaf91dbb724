/* Two harts (RUN-ARGS: -smp 2): LR/SC and AMO increments of shared counters from all
 * harts lose nothing; a store of one hart is seen by the others; an IPI through the CLINT
 * msip of hart 1 wakes it from WFI.  smp4_atomics.S runs the same with four harts. */
#include "test.h"

#ifndef HARTS
#define HARTS 2
#endif
#define ITERATIONS 20000

	.text
	.globl main
main:
	TEST 1          /* the second hart starts */
	la t0, worker
	sd t0, secondary_entry, t1
	la s0, shared
1:	ld t0, 24(s0)               /* every other hart says hello */
	li t1, HARTS - 1
	bne t0, t1, 1b

	TEST 2          /* both harts increment: none lost */
	li a0, 0
	call worker_loop
	fence
2:	lw t0, 16(s0)               /* done count */
	li t1, HARTS
	bne t0, t1, 2b
	ld t0, 0(s0)
	CHECK t0, HARTS * ITERATIONS
	ld t0, 8(s0)
	CHECK t0, HARTS * ITERATIONS

	TEST 3          /* IPI: hart 1 waits in wfi for its msip */
	li t0, CLINT_MSIP + 4
	li t1, 1
	sw t1, 0(t0)
3:	ld t0, 32(s0)               /* hart 1 acknowledges */
	beqz t0, 3b
	li t0, CLINT_MSIP + 4
	lw t1, 0(t0)
	CHECK t1, 0                 /* hart 1 cleared it */
	j pass

/* Other harts: hello, the increment loop; hart 1 then waits for an IPI with interrupts
 * masked, the others idle. */
worker:
	mv s1, a0
	la s0, shared
	addi t1, s0, 24
	li t0, 1
	amoadd.d zero, t0, (t1)
	call worker_loop
	li t0, 1
	beq s1, t0, 1f
3:	wfi
	j 3b
1:	li t0, 8                    /* mie.MSIE; mstatus.MIE stays 0: wfi wakes, no trap */
	csrw mie, t0
1:	wfi
	csrr t0, mip
	andi t0, t0, 8
	beqz t0, 1b
	li t0, CLINT_MSIP + 4
	sw zero, 0(t0)
	li t0, 1
	sd t0, 32(s0)
2:	wfi
	j 2b

/* ITERATIONS of: an LR/SC increment of shared+0, an AMO increment of shared+8; then
 * count this hart done at shared+16. */
worker_loop:
	la a1, shared
	addi a3, a1, 8
	addi a4, a1, 16
	li a2, ITERATIONS
1:	lr.d t0, (a1)
	addi t0, t0, 1
	sc.d t1, t0, (a1)
	bnez t1, 1b
	li t0, 1
	amoadd.d zero, t0, (a3)
	addi a2, a2, -1
	bnez a2, 1b
	li t0, 1
	amoadd.w.aqrl zero, t0, (a4)
	ret

	.data
	.balign 64
shared:	.dword 0, 0, 0, 0, 0
