/* Four harts at once (RUN-ARGS: -smp 4), run in parallel where the emulator runs harts on
 * threads of their own: a spinlock (amoswap.w.aq / amoswap.w.rl) keeps plain 64- and 32-bit
 * read-modify-write increments from being lost; lr.w/sc.w increments and amomaxu.d from all
 * harts lose nothing; code that hart 0 rewrites after the other harts ran it (decoded and,
 * hot as it is, translated) is seen by each of them once it executes fence.i. */
#include "test.h"

#define HARTS 4
#define ITERATIONS 50000
#define WARMUP 200

	.text
	.globl main
main:
	TEST 1          /* the spinlock: no plain increment lost */
	la t0, worker
	sd t0, secondary_entry, t1
	li a0, 0
	call work
	la s0, shared
1:	lw t0, 40(s0)               /* harts done with the increments */
	li t1, HARTS
	bne t0, t1, 1b
	fence rw, rw
	ld t0, 0(s0)
	CHECK t0, HARTS * ITERATIONS
	lw t0, 8(s0)
	CHECK t0, HARTS * ITERATIONS

	TEST 2          /* lr.w/sc.w and amomaxu.d */
	lw t0, 16(s0)
	CHECK t0, HARTS * ITERATIONS
	ld t0, 24(s0)
	CHECK t0, (ITERATIONS - 1) * HARTS + HARTS - 1

	TEST 3          /* cross-modifying code */
1:	lw t0, 44(s0)               /* the other harts ran patchme WARMUP times */
	li t1, HARTS - 1
	bne t0, t1, 1b
	la t0, patchme
	li t1, 0x00200513           /* addi a0, zero, 2 */
	sw t1, 0(t0)
	fence rw, rw
	li t0, 1
	sw t0, 48(s0)               /* patched */
1:	lw t0, 52(s0)               /* each other hart ran the new code */
	li t1, HARTS - 1
	bne t0, t1, 1b
	fence rw, rw
	li t2, 1
2:	slli t0, t2, 3
	add t0, t0, s0
	ld t0, 64(t0)               /* results[hart] */
	CHECK t0, 2
	addi t2, t2, 1
	li t1, HARTS
	bne t2, t1, 2b
	j pass

/* Other harts: the increments, then the code that hart 0 rewrites. */
worker:
	mv s1, a0
	call work
	la s0, shared
	li s2, WARMUP
1:	call patchme
	CHECK a0, 1
	addi s2, s2, -1
	bnez s2, 1b
	li t0, 1
	addi t1, s0, 44
	amoadd.w.aqrl zero, t0, (t1)
1:	lw t0, 48(s0)               /* wait for the new code */
	beqz t0, 1b
	fence r, r
	fence.i
	call patchme
	slli t0, s1, 3
	add t0, t0, s0
	sd a0, 64(t0)
	li t0, 1
	addi t1, s0, 52
	amoadd.w.aqrl zero, t0, (t1)
2:	wfi
	j 2b

/* ITERATIONS of: under the spinlock at shared+32, plain increments of shared+0 (64-bit) and
 * shared+8 (32-bit); an lr.w/sc.w increment of shared+16; amomaxu.d of i * HARTS + hart
 * into shared+24.  Then count this hart done at shared+40.  a0 = hart id. */
work:
	la a1, shared
	addi a2, a1, 32             /* the lock */
	li a6, ITERATIONS
	li a7, 0
1:	li t0, 1
2:	amoswap.w.aq t1, t0, (a2)
	bnez t1, 2b
	ld t2, 0(a1)
	addi t2, t2, 1
	sd t2, 0(a1)
	lw t2, 8(a1)
	addiw t2, t2, 1
	sw t2, 8(a1)
	amoswap.w.rl zero, zero, (a2)
	addi a3, a1, 16
3:	lr.w t2, (a3)
	addiw t2, t2, 1
	sc.w t3, t2, (a3)
	bnez t3, 3b
	li t2, HARTS
	mul t2, t2, a7
	add t2, t2, a0
	addi a3, a1, 24
	amomaxu.d zero, t2, (a3)
	addi a7, a7, 1
	bne a7, a6, 1b
	li t0, 1
	addi t1, a1, 40
	amoadd.w.aqrl zero, t0, (t1)
	ret

	.option push
	.option norvc
	.balign 4
patchme:
	addi a0, zero, 1            /* hart 0 makes it addi a0, zero, 2 */
	ret
	.option pop

	.data
	.balign 64
/* +0 plain64, +8 plain32, +16 lrsc32, +24 max, +32 lock, +40 done, +44 warm, +48 patched,
 * +52 done2, +64 results[HARTS] */
shared:	.dword 0, 0, 0, 0, 0, 0, 0, 0
	.dword 0, 0, 0, 0
