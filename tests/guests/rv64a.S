/* A extension: LR/SC success and failure, reservation broken by an intervening SC,
 * every AMO in W and D forms (old value returned, memory result, W sign extension),
 * and misaligned AMO/LR addresses trapping. */
#include "test.h"

	.text
	.globl main
main:
	la s0, word
	TEST 1          /* lr/sc.d succeeds and stores */
	li a0, 100
	sd a0, 0(s0)
	lr.d a1, (s0)
	CHECK a1, 100
	li a2, 200
	sc.d a3, a2, (s0)
	CHECK a3, 0
	ld a1, 0(s0)
	CHECK a1, 200

	TEST 2          /* sc without a reservation fails and does not store */
	li a2, 300
	sc.d a3, a2, (s0)
	bnez a3, 1f
	j fail
1:	ld a1, 0(s0)
	CHECK a1, 200

	TEST 3          /* a second sc after a successful one fails */
	lr.d a1, (s0)
	sc.d a3, a2, (s0)
	CHECK a3, 0
	li a2, 400
	sc.d a3, a2, (s0)
	beqz a3, fail
	ld a1, 0(s0)
	CHECK a1, 300

	TEST 4          /* lr.w sign-extends, sc.w stores 32 bits */
	li a0, 0x12345678fffffff0
	sd a0, 0(s0)
	lr.w.aq a1, (s0)
	CHECK a1, -16
	li a2, 0x7
	sc.w.rl a3, a2, (s0)
	CHECK a3, 0
	ld a1, 0(s0)
	CHECK a1, 0x1234567800000007

	TEST 5          /* AMOs, D form */
	li a0, 10
	sd a0, 0(s0)
	li a2, 5
	amoadd.d a1, a2, (s0)
	CHECK a1, 10
	ld a1, 0(s0)
	CHECK a1, 15
	li a2, 0xff
	amoand.d a1, a2, (s0)
	CHECK a1, 15
	li a2, 0x100
	amoor.d a1, a2, (s0)
	CHECK a1, 15
	li a2, 0x10f
	amoxor.d a1, a2, (s0)
	CHECK a1, 0x10f
	ld a1, 0(s0)
	CHECK a1, 0
	li a2, -3
	amoswap.d a1, a2, (s0)
	CHECK a1, 0
	li a2, 2
	amomin.d a1, a2, (s0)       /* min(-3, 2) = -3 */
	CHECK a1, -3
	amomax.d a1, a2, (s0)       /* max(-3, 2) = 2 */
	CHECK a1, -3
	ld a1, 0(s0)
	CHECK a1, 2
	li a2, -1
	amominu.d a1, a2, (s0)      /* minu(2, ~0) = 2 */
	CHECK a1, 2
	amomaxu.d a1, a2, (s0)
	CHECK a1, 2
	ld a1, 0(s0)
	CHECK a1, -1
	amoadd.d zero, a2, (s0)     /* rd = x0: memory still updated */
	ld a1, 0(s0)
	CHECK a1, -2

	TEST 6          /* AMOs, W form: 32-bit arithmetic, sign-extended old value */
	li a0, 0x55555555ffffffff
	sd a0, 0(s0)
	li a2, 1
	amoadd.w a1, a2, (s0)
	CHECK a1, -1
	ld a1, 0(s0)
	CHECK a1, 0x5555555500000000
	li a2, 0x80000000
	amoswap.w a1, a2, (s0)
	CHECK a1, 0
	li a2, 1
	amomin.w a1, a2, (s0)        /* min(INT_MIN, 1) */
	CHECK a1, 0xffffffff80000000
	amominu.w a1, a2, (s0)       /* minu(0x80000000, 1) = 1 */
	CHECK a1, 0xffffffff80000000
	li a2, 0xfffffffe
	amomaxu.w a1, a2, (s0)
	CHECK a1, 1
	li a2, 5
	amomax.w a1, a2, (s0)        /* max(-2, 5) */
	CHECK a1, -2
	li a2, 0xf0
	amoand.w a1, a2, (s0)
	amoor.w a1, a2, (s0)
	CHECK a1, 0
	li a2, 0xff
	amoxor.w a1, a2, (s0)
	CHECK a1, 0xf0
	ld a1, 0(s0)
	CHECK a1, 0x555555550000000f

	TEST 7          /* misaligned AMO: store/AMO address-misaligned or access fault with
	                   tval = address (A spec 8.4); QEMU 7.2 performs it instead, so an
	                   AMO that completes must have computed the right value */
	sd zero, 0(s0)
	sd zero, 8(s0)
	li a2, 0x11223344
	addi s1, s0, 1
	EXPECT_TRAP
	amoadd.w a1, a2, (s1)
	ld t0, trap_cause
	li t1, -1
	beq t0, t1, 2f
	li t1, CAUSE_MISALIGNED_STORE
	beq t0, t1, 1f
	li t1, CAUSE_MISALIGNED_LOAD     /* QEMU 7.2 reports the AMO as a load */
	beq t0, t1, 1f
	li t1, CAUSE_STORE_ACCESS
	bne t0, t1, fail
1:	CHECK_TVAL_R s1
	j 3f
2:	sd zero, trap_expected, t0
	CHECK a1, 0
	ld a1, 0(s0)
	CHECK a1, 0x1122334400
3:
	TEST 8          /* misaligned LR: load address-misaligned or access fault */
	addi s1, s0, 4
	EXPECT_TRAP
	lr.d a1, (s1)
	ld t0, trap_cause
	li t1, -1
	beq t0, t1, 2f
	li t1, CAUSE_MISALIGNED_LOAD
	beq t0, t1, 1f
	li t1, CAUSE_LOAD_ACCESS
	bne t0, t1, fail
1:	CHECK_TVAL_R s1
	j 3f
2:	sd zero, trap_expected, t0
3:
	TEST 10         /* SC to an address outside the reservation fails */
	la s1, far
	sd zero, 0(s1)
	lr.d a1, (s0)
	li a2, 5
	sc.d a3, a2, (s1)
	beqz a3, fail
	ld a1, 0(s1)
	CHECK a1, 0

	TEST 9          /* LR/SC loop increment (the usual retry pattern) */
	sd zero, 0(s0)
	li s2, 1000
2:	lr.d a1, (s0)
	addi a1, a1, 1
	sc.d a3, a1, (s0)
	bnez a3, 2b
	addi s2, s2, -1
	bnez s2, 2b
	ld a1, 0(s0)
	CHECK a1, 1000

	j pass

	.data
	.balign 16
word:	.dword 0, 0
	.balign 256
far:	.dword 0
