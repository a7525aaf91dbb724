/* Zicsr semantics, the ID CSRs, Zicntr/Zihpm counters: cycle/instret progress,
 * mcountinhibit, writable mhpmcounter/mhpmevent, mcounteren/scounteren gating in S and U,
 * read-only cycle/instret aliases.  (Exact values after a write to minstret, inhibited
 * counters after they ran once, and mcountinhibit bit 1 are in spec_strict.) */
#include "test.h"

	.text
	.globl main
main:
	TEST 1          /* csrrw/csrrs/csrrc and immediate forms return the old value */
	li t0, 0xf0
	csrw sscratch, t0
	li t1, 0x0f
	csrrs a0, sscratch, t1
	CHECK a0, 0xf0
	csrrc a0, sscratch, t0
	CHECK a0, 0xff
	csrrwi a0, sscratch, 0x1f
	CHECK a0, 0x0f
	csrrsi a0, sscratch, 0x10
	CHECK a0, 0x1f
	csrrci a0, sscratch, 0x3
	CHECK a0, 0x1f
	csrrw a0, sscratch, zero
	CHECK a0, 0x1c
	csrrw zero, sscratch, t0    /* rd = x0 still writes */
	csrr a0, sscratch
	CHECK a0, 0xf0
	csrrs a0, sscratch, zero    /* rs1 = x0: read only */
	CHECK a0, 0xf0

	TEST 2          /* ID CSRs: misa says RV64 with IMAFDC + S + U */
	csrr a0, misa
	srli a1, a0, 62
	CHECK a1, 2
	li t0, (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20)
	and a1, a0, t0
	CHECKR a1, t0
	csrr a0, mhartid
	CHECK a0, 0
	csrr a0, mvendorid
	csrr a0, marchid
	csrr a0, mimpid

	TEST 3          /* cycle and instret move forward; the M-mode names agree */
	rdinstret s0
	rdcycle s1
	li t0, 100
1:	addi t0, t0, -1
	bnez t0, 1b
	rdinstret s2
	rdcycle s3
	bleu s2, s0, fail
	bleu s3, s1, fail
	sub t0, s2, s0
	li t1, 200
	bltu t0, t1, fail           /* the loop alone retired 200 instructions */
	csrr s4, minstret
	bltu s4, s2, fail
	csrr s4, mcycle
	bltu s4, s3, fail

	TEST 4          /* minstret is writable */
	li t0, 1000000
	csrw minstret, t0
	csrr a0, minstret
	bltu a0, t0, fail

	TEST 5          /* mcountinhibit.CY/IR stop mcycle and minstret */
	li t0, 5
	csrw mcountinhibit, t0
	csrr t1, mcountinhibit
	andi t1, t1, 5
	CHECK t1, 5
	csrr s0, minstret
	csrr s1, mcycle
	nop
	nop
	nop
	csrr s2, minstret
	csrr s3, mcycle
	CHECKR s0, s2
	CHECKR s1, s3
	csrw mcountinhibit, zero
	nop
	csrr s2, minstret
	beq s0, s2, fail

	TEST 6          /* Zihpm: mhpmcounter3 / mhpmevent3 exist (writable, or read-only zero
	                   as privileged spec 3.1.10 allows); the unprivileged alias agrees */
	csrw mhpmevent3, zero
	li t0, 0x12345
	csrw mhpmcounter3, t0
	csrr a0, mhpmcounter3
	beqz a0, 1f
	CHECK a0, 0x12345
1:	csrr a1, hpmcounter3
	CHECKR a1, a0
	csrw mhpmcounter4, zero
	csrr a0, hpmcounter4
	CHECK a0, 0

	TEST 7          /* mcounteren gates S-mode reads */
	csrw mcounteren, zero
	csrw scounteren, zero
	ENTER_MODE 1
	EXPECT_TRAP
1:	rdcycle a0
	EXPECT_TRAP
	rdinstret a0
	EXPECT_TRAP
	csrr a0, hpmcounter3
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_FROM 1
	li t0, 0xd                  /* CY, IR, HPM3 */
	csrw mcounteren, t0
	csrr t1, mcounteren
	andi t1, t1, 0xd
	CHECK t1, 0xd
	ld s0, trap_count
	ENTER_MODE 1
	rdcycle a0
	rdinstret a0
	csrr a0, hpmcounter3
	ENTER_M
	ld s1, trap_count
	CHECKR s0, s1

	TEST 8          /* scounteren also gates U-mode reads */
	ENTER_MODE 0
	EXPECT_TRAP
	rdcycle a0
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_FROM 0
	li t0, 0x5
	csrw scounteren, t0
	ld s0, trap_count
	ENTER_MODE 0
	rdcycle a0
	rdinstret a0
	ENTER_M
	ld s1, trap_count
	CHECKR s0, s1
	ENTER_MODE 0
	EXPECT_TRAP                 /* HPM3 allowed by M but not by S */
	csrr a0, hpmcounter3
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	csrw mcounteren, zero       /* S allows, M does not: still illegal in U */
	ENTER_MODE 0
	EXPECT_TRAP
	rdcycle a0
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	csrw scounteren, zero

	TEST 9          /* time: either implemented (close to CLINT mtime) or illegal
	                   (QEMU 7.2's spike has no rdtime source) */
	li s2, CLINT_MTIME
	ld s0, 0(s2)
	EXPECT_TRAP
	rdtime a0
	ld t0, trap_cause
	li t1, -1
	bne t0, t1, 1f
	sd zero, trap_expected, t0
	ld s1, 0(s2)
	bltu a0, s0, fail
	bltu s1, a0, fail
	j 2f
1:	CHECK_CAUSE CAUSE_ILLEGAL
2:

	TEST 10         /* mcycle is writable; cycle/instret/hpmcounter3 are read-only aliases
	                   (0xCxx): a write is illegal even in M-mode, a read (rs1 = x0) is not */
	li t0, 5000000
	csrw mcycle, t0
	csrr a0, mcycle
	bltu a0, t0, fail
	EXPECT_TRAP
	csrw cycle, t0
	CHECK_CAUSE CAUSE_ILLEGAL
	EXPECT_TRAP
	csrw instret, t0
	CHECK_CAUSE CAUSE_ILLEGAL
	EXPECT_TRAP
	csrsi instret, 1
	CHECK_CAUSE CAUSE_ILLEGAL
	EXPECT_TRAP
	csrw hpmcounter3, t0
	CHECK_CAUSE CAUSE_ILLEGAL
	ld s0, trap_count
	csrrs a0, instret, zero
	csrrc a0, cycle, zero
	ld s1, trap_count
	CHECKR s0, s1

	j pass
