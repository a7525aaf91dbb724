/* F and D arithmetic: add/sub/mul/div/sqrt, static and dynamic rounding modes, the five
 * fcsr flags, reserved rounding modes, FS gating, moves, loads/stores and sign injection. */
#include "test.h"

#define NV 0x10
#define DZ 0x08
#define OF 0x04
#define UF 0x02
#define NX 0x01

/* Load a single-precision constant (bits) into freg through t5. */
.macro FLI_S freg, bits
	li t5, \bits
	fmv.w.x \freg, t5
.endm
.macro FLI_D freg, bits
	li t5, \bits
	fmv.d.x \freg, t5
.endm
/* Fail unless freg holds the single-precision bits (and is NaN-boxed). */
.macro FCHECK_S freg, bits
	fmv.x.d t5, \freg
	li t6, 0xffffffff00000000 | \bits
	bne t5, t6, fail
.endm
.macro FCHECK_D freg, bits
	fmv.x.d t5, \freg
	li t6, \bits
	bne t5, t6, fail
.endm
/* Fail unless fflags == flags; then clear them. */
.macro FLAGS flags
	csrrw t5, fflags, zero
	li t6, \flags
	bne t5, t6, fail
.endm

	.text
	.globl main
main:
	TEST 1          /* exact single arithmetic raises no flag */
	FLI_S f1, 0x3f800000       /* 1.0 */
	FLI_S f2, 0x40000000       /* 2.0 */
	fadd.s f3, f1, f2
	FCHECK_S f3, 0x40400000
	fsub.s f3, f1, f2
	FCHECK_S f3, 0xbf800000
	fmul.s f3, f2, f2
	FCHECK_S f3, 0x40800000
	fdiv.s f3, f1, f2
	FCHECK_S f3, 0x3f000000
	fsqrt.s f4, f3             /* sqrt(0.5): inexact */
	FCHECK_S f4, 0x3f3504f3
	FLAGS NX
	fmul.s f4, f3, f3
	fsqrt.s f4, f4
	FCHECK_S f4, 0x3f000000
	FLAGS 0

	TEST 2          /* static rounding modes on 1/3 and -1/3 */
	FLI_S f1, 0x3f800000
	FLI_S f2, 0x40400000       /* 3.0 */
	FLI_S f5, 0xbf800000       /* -1.0 */
	fdiv.s f3, f1, f2, rne
	FCHECK_S f3, 0x3eaaaaab
	fdiv.s f3, f1, f2, rtz
	FCHECK_S f3, 0x3eaaaaaa
	fdiv.s f3, f1, f2, rdn
	FCHECK_S f3, 0x3eaaaaaa
	fdiv.s f3, f1, f2, rup
	FCHECK_S f3, 0x3eaaaaab
	fdiv.s f3, f1, f2, rmm
	FCHECK_S f3, 0x3eaaaaab
	fdiv.s f3, f5, f2, rdn
	FCHECK_S f3, 0xbeaaaaab
	fdiv.s f3, f5, f2, rup
	FCHECK_S f3, 0xbeaaaaaa
	FLAGS NX

	TEST 3          /* ties: rne vs rmm, on 1 + 2^-24 (halfway) */
	FLI_S f1, 0x3f800000
	FLI_S f2, 0x33800000       /* 2^-24 */
	fadd.s f3, f1, f2, rne     /* tie to even: 1.0 */
	FCHECK_S f3, 0x3f800000
	fadd.s f3, f1, f2, rmm     /* tie away: 1 + 2^-23 */
	FCHECK_S f3, 0x3f800001
	FLAGS NX

	TEST 4          /* dynamic rounding mode from frm; fcsr layout */
	csrwi frm, 1               /* rtz */
	FLI_S f1, 0x3f800000
	FLI_S f2, 0x40400000
	fdiv.s f3, f1, f2          /* dyn */
	FCHECK_S f3, 0x3eaaaaaa
	csrr t0, fcsr
	CHECK t0, (1 << 5) | NX
	csrwi frm, 3               /* rup */
	fdiv.s f3, f1, f2
	FCHECK_S f3, 0x3eaaaaab
	csrwi fcsr, 0
	csrr t0, frm
	CHECK t0, 0
	li t0, 0xff                /* fcsr keeps 8 bits */
	csrw fcsr, t0
	csrr t1, fcsr
	CHECK t1, 0xff
	csrr t1, fflags
	CHECK t1, 0x1f
	csrr t1, frm
	CHECK t1, 7
	csrwi fcsr, 0

	TEST 5          /* reserved rounding modes: static 5/6/7-with-invalid-frm are illegal */
	EXPECT_TRAP
	.word 0x00005053           /* fadd.s f0, f0, f0 with rm = 5 */
	CHECK_CAUSE CAUSE_ILLEGAL
	EXPECT_TRAP
	.word 0x00006053           /* rm = 6 */
	CHECK_CAUSE CAUSE_ILLEGAL
	csrwi frm, 5
	EXPECT_TRAP
	fadd.s f0, f1, f2          /* dyn with frm = 5 */
	CHECK_CAUSE CAUSE_ILLEGAL
	csrwi frm, 0

	TEST 6          /* divide by zero, overflow, underflow, invalid */
	FLI_S f1, 0x3f800000
	fmv.w.x f0, zero
	fdiv.s f3, f1, f0
	FCHECK_S f3, 0x7f800000
	FLAGS DZ
	FLI_S f2, 0x7f7fffff       /* FLT_MAX */
	FLI_S f4, 0x40000000
	fmul.s f3, f2, f4
	FCHECK_S f3, 0x7f800000
	FLAGS OF | NX
	fmul.s f3, f2, f4, rtz
	FCHECK_S f3, 0x7f7fffff
	FLAGS OF | NX
	FLI_S f2, 0x00800000       /* FLT_MIN * 0.5: exact subnormal, no underflow flag */
	FLI_S f4, 0x3f000000
	fmul.s f3, f2, f4
	FCHECK_S f3, 0x00400000
	FLAGS 0
	FLI_S f2, 0x00800001       /* inexact tiny result: UF | NX, ties to even */
	fmul.s f3, f2, f4
	FCHECK_S f3, 0x00400000
	FLAGS UF | NX
	FLI_S f2, 0xbf800000
	fsqrt.s f3, f2             /* sqrt(-1): canonical NaN */
	FCHECK_S f3, 0x7fc00000
	FLAGS NV
	FLI_S f2, 0x7f800000
	fmul.s f3, f2, f0          /* inf * 0 */
	FCHECK_S f3, 0x7fc00000
	FLAGS NV
	fsub.s f3, f2, f2          /* inf - inf */
	FCHECK_S f3, 0x7fc00000
	FLAGS NV
	fdiv.s f3, f0, f0          /* 0 / 0 */
	FCHECK_S f3, 0x7fc00000
	FLAGS NV
	FLI_S f4, 0xff800000
	fsqrt.s f3, f4
	FCHECK_S f3, 0x7fc00000
	FLAGS NV
	fmv.w.x f5, zero
	fneg.s f5, f5
	fsqrt.s f3, f5             /* sqrt(-0) = -0 */
	FCHECK_S f3, 0x80000000
	FLAGS 0

	TEST 7          /* double arithmetic */
	FLI_D f1, 0x3fb999999999999a   /* 0.1 */
	FLI_D f2, 0x3fc999999999999a   /* 0.2 */
	fadd.d f3, f1, f2
	FCHECK_D f3, 0x3fd3333333333334
	FLAGS NX
	FLI_D f1, 0x3ff0000000000000
	FLI_D f2, 0x4008000000000000
	fdiv.d f3, f1, f2
	FCHECK_D f3, 0x3fd5555555555555
	fdiv.d f3, f1, f2, rup
	FCHECK_D f3, 0x3fd5555555555556
	FLI_D f2, 0x4000000000000000
	fsqrt.d f3, f2
	FCHECK_D f3, 0x3ff6a09e667f3bcd
	FLAGS NX
	fmul.d f3, f2, f2
	FCHECK_D f3, 0x4010000000000000
	fsub.d f3, f1, f2
	FCHECK_D f3, 0xbff0000000000000
	FLAGS 0
	FLI_D f2, 0x7fefffffffffffff
	fadd.d f3, f2, f2
	FCHECK_D f3, 0x7ff0000000000000
	FLAGS OF | NX
	fmv.d.x f0, zero
	fdiv.d f3, f1, f0
	FCHECK_D f3, 0x7ff0000000000000
	FLAGS DZ
	fdiv.d f3, f0, f0
	FCHECK_D f3, 0x7ff8000000000000
	FLAGS NV

	TEST 8          /* sign injection */
	FLI_S f1, 0x3f800000
	FLI_S f2, 0xc0000000
	fsgnj.s f3, f1, f2
	FCHECK_S f3, 0xbf800000
	fsgnjn.s f3, f1, f2
	FCHECK_S f3, 0x3f800000
	fsgnjx.s f3, f2, f2
	FCHECK_S f3, 0x40000000
	FLI_S f4, 0x7f800001       /* sNaN: sign injection is not arithmetic */
	fneg.s f3, f4
	FCHECK_S f3, 0xff800001
	FLI_D f1, 0x3ff0000000000000
	FLI_D f2, 0xc000000000000000
	fsgnj.d f3, f1, f2
	FCHECK_D f3, 0xbff0000000000000
	fsgnjn.d f3, f2, f2
	FCHECK_D f3, 0x4000000000000000
	fsgnjx.d f3, f2, f1
	FCHECK_D f3, 0xc000000000000000
	fabs.d f3, f2
	FCHECK_D f3, 0x4000000000000000
	FLAGS 0

	TEST 9          /* moves, loads and stores */
	li a0, 0x80000000
	fmv.w.x f1, a0
	fmv.x.w a1, f1             /* sign-extends */
	CHECK a1, 0xffffffff80000000
	la s0, fbuf
	li a0, 0x40490fdb
	sw a0, 0(s0)
	flw f2, 0(s0)
	FCHECK_S f2, 0x40490fdb
	fsw f2, 4(s0)
	lwu a1, 4(s0)
	CHECK a1, 0x40490fdb
	li a0, 0x400921fb54442d18
	sd a0, 8(s0)
	fld f3, 8(s0)
	fsd f3, 16(s0)
	ld a1, 16(s0)
	CHECKR a1, a0
	fmv.x.d a1, f3
	CHECKR a1, a0

	TEST 10         /* writing an FP register makes mstatus.FS dirty and SD set */
	li t0, MSTATUS_FS
	csrc mstatus, t0
	li t0, (1 << 13)           /* initial */
	csrs mstatus, t0
	fmv.w.x f1, zero
	csrr t0, mstatus
	srli t1, t0, 13
	andi t1, t1, 3
	CHECK t1, 3
	bgez t0, fail              /* SD is bit 63 */

	TEST 11         /* FS = off: FP instructions and fcsr are illegal */
	li t0, MSTATUS_FS
	csrc mstatus, t0
	EXPECT_TRAP
	fadd.s f1, f2, f3
	CHECK_CAUSE CAUSE_ILLEGAL
	EXPECT_TRAP
	csrr a0, fcsr
	CHECK_CAUSE CAUSE_ILLEGAL
	EXPECT_TRAP
	fld f1, 0(s0)
	CHECK_CAUSE CAUSE_ILLEGAL
	li t0, (1 << 13)
	csrs mstatus, t0

	j pass

	.data
	.balign 8
fbuf:	.space 32
