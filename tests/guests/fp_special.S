/* FP corner cases: NaN boxing, canonical NaN, signalling vs quiet comparisons,
 * fmin/fmax, fcvt saturation and rounding, fclass, single-rounding fused multiply-add. */
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
	TEST 1          /* NaN boxing: a single-precision operand that is not boxed is the canonical NaN */
	li a0, 0x000000003f800000  /* 1.0f without the upper ones */
	fmv.d.x f1, a0
	FLI_S f2, 0x3f800000
	fadd.s f3, f1, f2
	FCHECK_S f3, 0x7fc00000
	FLAGS 0                    /* canonical NaN is quiet: no flag */
	fsgnj.s f3, f1, f2         /* sign injection sees the canonical NaN too */
	FCHECK_S f3, 0x7fc00000
	fclass.s a1, f1
	CHECK a1, 0x200
	fmv.x.w a1, f1             /* moves take the low bits as they are */
	CHECK a1, 0x3f800000
	flw f4, fword, t0          /* loads box */
	fmv.x.d a1, f4
	CHECK a1, 0xffffffff3f800000
	FLI_D f5, 0x3fb999999999999a
	fcvt.s.d f6, f5            /* results box */
	FCHECK_S f6, 0x3dcccccd
	FLAGS NX

	TEST 2          /* canonical NaN from arithmetic on NaN inputs (payload not propagated) */
	FLI_S f1, 0x7fc12345       /* quiet NaN with payload */
	FLI_S f2, 0x3f800000
	fadd.s f3, f1, f2
	FCHECK_S f3, 0x7fc00000
	FLAGS 0
	FLI_S f1, 0xff812345       /* signalling NaN */
	fmul.s f3, f1, f2
	FCHECK_S f3, 0x7fc00000
	FLAGS NV
	FLI_D f1, 0xfff8000000000123
	FLI_D f2, 0x3ff0000000000000
	fsub.d f3, f2, f1
	FCHECK_D f3, 0x7ff8000000000000
	FLAGS 0
	FLI_S f1, 0x7f800001
	fcvt.d.s f3, f1            /* sNaN widened: canonical, NV */
	FCHECK_D f3, 0x7ff8000000000000
	FLAGS NV
	FLI_D f1, 0x7ff0000000000001
	fcvt.s.d f3, f1
	FCHECK_S f3, 0x7fc00000
	FLAGS NV

	TEST 3          /* comparisons: quiet vs signalling */
	FLI_S f1, 0x7fc00000
	FLI_S f2, 0x3f800000
	feq.s a0, f1, f2
	CHECK a0, 0
	FLAGS 0
	flt.s a0, f1, f2
	CHECK a0, 0
	FLAGS NV
	fle.s a0, f2, f1
	CHECK a0, 0
	FLAGS NV
	FLI_S f3, 0x7f800001
	feq.s a0, f3, f2           /* feq signals only on sNaN */
	CHECK a0, 0
	FLAGS NV
	fmv.w.x f4, zero
	fneg.s f5, f4
	feq.s a0, f4, f5           /* +0 == -0 */
	CHECK a0, 1
	flt.s a0, f5, f4
	CHECK a0, 0
	fle.s a0, f5, f4
	CHECK a0, 1
	FLI_D f1, 0x3ff0000000000000
	FLI_D f2, 0x3ff0000000000001
	flt.d a0, f1, f2
	CHECK a0, 1
	fle.d a0, f2, f1
	CHECK a0, 0
	feq.d a0, f1, f1
	CHECK a0, 1
	FLI_D f3, 0x7ff8000000000000
	feq.d a0, f3, f3
	CHECK a0, 0
	FLAGS 0

	TEST 4          /* fmin / fmax (2.2 semantics: a NaN operand yields the other one) */
	fmv.w.x f4, zero
	fneg.s f5, f4
	fmin.s f3, f4, f5
	FCHECK_S f3, 0x80000000
	fmin.s f3, f5, f4
	FCHECK_S f3, 0x80000000
	fmax.s f3, f5, f4
	FCHECK_S f3, 0x00000000
	fmax.s f3, f4, f5
	FCHECK_S f3, 0x00000000
	FLI_S f1, 0x7fc00000
	FLI_S f2, 0x40000000
	fmin.s f3, f1, f2
	FCHECK_S f3, 0x40000000
	FLAGS 0
	FLI_S f1, 0x7f800001
	fmax.s f3, f2, f1
	FCHECK_S f3, 0x40000000
	FLAGS NV
	fmin.s f3, f1, f1          /* both NaN: canonical */
	FCHECK_S f3, 0x7fc00000
	FLAGS NV
	FLI_D f1, 0xbff0000000000000
	FLI_D f2, 0x3ff0000000000000
	fmin.d f3, f1, f2
	FCHECK_D f3, 0xbff0000000000000
	fmax.d f3, f1, f2
	FCHECK_D f3, 0x3ff0000000000000
	FLI_D f1, 0x7ff4000000000000
	fmax.d f3, f1, f2
	FCHECK_D f3, 0x3ff0000000000000
	FLAGS NV

	TEST 5          /* fcvt to integer: rounding and saturation */
	FLI_S f1, 0x3fc00000       /* 1.5 */
	fcvt.w.s a0, f1, rne
	CHECK a0, 2
	FLAGS NX
	FLI_S f1, 0x40200000       /* 2.5 */
	fcvt.w.s a0, f1, rne
	CHECK a0, 2
	fcvt.w.s a0, f1, rmm
	CHECK a0, 3
	fcvt.w.s a0, f1, rup
	CHECK a0, 3
	FLI_S f1, 0xbfc00000       /* -1.5 */
	fcvt.w.s a0, f1, rtz
	CHECK a0, -1
	fcvt.w.s a0, f1, rdn
	CHECK a0, -2
	fcvt.l.s a0, f1, rup
	CHECK a0, -1
	FLAGS NX
	FLI_S f1, 0x7fc00000       /* NaN -> max */
	fcvt.w.s a0, f1, rtz
	CHECK a0, 0x7fffffff
	FLAGS NV
	fcvt.l.s a0, f1, rtz
	CHECK a0, 0x7fffffffffffffff
	FLAGS NV
	fcvt.wu.s a0, f1, rtz      /* unsigned max, sign-extended from 32 bits */
	CHECK a0, -1
	FLAGS NV
	FLI_S f1, 0xff800000       /* -inf */
	fcvt.w.s a0, f1, rtz
	CHECK a0, 0xffffffff80000000
	FLAGS NV
	fcvt.lu.s a0, f1, rtz
	CHECK a0, 0
	FLAGS NV
	FLI_S f1, 0x4f32d05e       /* 3e9 */
	fcvt.w.s a0, f1, rtz
	CHECK a0, 0x7fffffff
	FLAGS NV
	fcvt.wu.s a0, f1, rtz
	CHECK a0, 0xffffffffb2d05e00
	FLAGS 0
	FLI_S f1, 0xbf800000       /* -1.0 to unsigned: invalid, 0 */
	fcvt.wu.s a0, f1, rtz
	CHECK a0, 0
	FLAGS NV
	FLI_S f1, 0xbf000000       /* -0.5 to unsigned, rtz: rounds to 0, only inexact */
	fcvt.wu.s a0, f1, rtz
	CHECK a0, 0
	FLAGS NX
	FLI_D f1, 0x43e0000000000000   /* 2^63 */
	fcvt.l.d a0, f1, rtz
	CHECK a0, 0x7fffffffffffffff
	FLAGS NV
	fcvt.lu.d a0, f1, rtz
	CHECK a0, 0x8000000000000000
	FLAGS 0
	FLI_D f1, 0xc3e0000000000000   /* -2^63 is representable */
	fcvt.l.d a0, f1, rtz
	CHECK a0, 0x8000000000000000
	FLAGS 0
	FLI_D f1, 0x7ff8000000000000
	fcvt.lu.d a0, f1, rtz
	CHECK a0, -1
	FLAGS NV
	FLI_D f1, 0x41dfffffffc00000   /* 2^31 - 1 */
	fcvt.w.d a0, f1, rtz
	CHECK a0, 0x7fffffff
	FLAGS 0
	FLI_D f1, 0xc1e0000000200000   /* -2^31 - 1 */
	fcvt.w.d a0, f1, rtz
	CHECK a0, 0xffffffff80000000
	FLAGS NV

	TEST 6          /* fcvt from integer and between formats */
	li a0, -1
	fcvt.s.w f1, a0
	FCHECK_S f1, 0xbf800000
	fcvt.s.wu f1, a0           /* 2^32 - 1 rounds to 2^32 */
	FCHECK_S f1, 0x4f800000
	FLAGS NX
	fcvt.s.lu f1, a0
	FCHECK_S f1, 0x5f800000
	FLAGS NX
	fcvt.d.l f1, a0
	FCHECK_D f1, 0xbff0000000000000
	li a0, (1 << 53) + 1
	fcvt.d.l f1, a0            /* ties to even */
	FCHECK_D f1, 0x4340000000000000
	FLAGS NX
	fcvt.d.l f1, a0, rup
	FCHECK_D f1, 0x4340000000000001
	FLAGS NX
	li a0, 0x80000000
	fcvt.d.w f1, a0            /* only the low word, signed */
	FCHECK_D f1, 0xc1e0000000000000
	fcvt.d.wu f1, a0
	FCHECK_D f1, 0x41e0000000000000
	FLAGS 0
	FLI_D f1, 0x3fb999999999999a
	fcvt.s.d f2, f1, rdn
	FCHECK_S f2, 0x3dcccccc
	FLAGS NX
	FLI_D f1, 0x47effffff8000000   /* past FLT_MAX + half an ulp: inf */
	fcvt.s.d f2, f1
	FCHECK_S f2, 0x7f800000
	FLAGS OF | NX
	FLI_S f1, 0x00000001       /* smallest subnormal widens exactly */
	fcvt.d.s f2, f1
	FCHECK_D f2, 0x36a0000000000000
	FLAGS 0

	TEST 7          /* fclass: the ten classes, single and double */
	FLI_S f1, 0xff800000
	fclass.s a0, f1
	CHECK a0, 1 << 0
	FLI_S f1, 0xbf800000
	fclass.s a0, f1
	CHECK a0, 1 << 1
	FLI_S f1, 0x80000001
	fclass.s a0, f1
	CHECK a0, 1 << 2
	FLI_S f1, 0x80000000
	fclass.s a0, f1
	CHECK a0, 1 << 3
	FLI_S f1, 0x00000000
	fclass.s a0, f1
	CHECK a0, 1 << 4
	FLI_S f1, 0x007fffff
	fclass.s a0, f1
	CHECK a0, 1 << 5
	FLI_S f1, 0x3f800000
	fclass.s a0, f1
	CHECK a0, 1 << 6
	FLI_S f1, 0x7f800000
	fclass.s a0, f1
	CHECK a0, 1 << 7
	FLI_S f1, 0x7f800001
	fclass.s a0, f1
	CHECK a0, 1 << 8
	FLI_S f1, 0xffc00000
	fclass.s a0, f1
	CHECK a0, 1 << 9
	FLI_D f1, 0xfff0000000000000
	fclass.d a0, f1
	CHECK a0, 1 << 0
	FLI_D f1, 0x800fffffffffffff
	fclass.d a0, f1
	CHECK a0, 1 << 2
	FLI_D f1, 0x8000000000000000
	fclass.d a0, f1
	CHECK a0, 1 << 3
	FLI_D f1, 0x0000000000000001
	fclass.d a0, f1
	CHECK a0, 1 << 5
	FLI_D f1, 0x7ff0000000000001
	fclass.d a0, f1
	CHECK a0, 1 << 8
	FLI_D f1, 0x7ff8000000000000
	fclass.d a0, f1
	CHECK a0, 1 << 9
	FLAGS 0

	TEST 8          /* fused multiply-add rounds once */
	FLI_D f1, 0x3ff0000000400000   /* x = 1 + 2^-30 */
	FLI_D f2, 0xbff0000000800000   /* -(1 + 2^-29) */
	fmadd.d f3, f1, f1, f2         /* x*x - (1 + 2^-29) = 2^-60 exactly */
	FCHECK_D f3, 0x3c30000000000000
	FLAGS 0
	fmul.d f4, f1, f1              /* the unfused path loses it */
	fadd.d f4, f4, f2
	FCHECK_D f4, 0
	FLAGS NX
	fnmadd.d f3, f1, f1, f2        /* -(x*x) - c = -2^-60 */
	FCHECK_D f3, 0xbc30000000000000
	fneg.d f2, f2                  /* c = 1 + 2^-29 */
	fmsub.d f3, f1, f1, f2         /* x*x - c */
	FCHECK_D f3, 0x3c30000000000000
	fnmsub.d f3, f1, f1, f2        /* -(x*x) + c */
	FCHECK_D f3, 0xbc30000000000000
	FLAGS 0
	fnmadd.d f3, f1, f1, f2        /* -(x*x) - c = -(2 + 2^-28 + 2^-60), inexact */
	FCHECK_D f3, 0xc000000000800000
	FLAGS NX
	FLI_S f1, 0x3f800800           /* 1 + 2^-12 */
	FLI_S f2, 0xbf801000           /* -(1 + 2^-11) */
	fmadd.s f3, f1, f1, f2
	FCHECK_S f3, 0x33800000        /* 2^-24 */
	FLAGS 0
	fnmadd.s f3, f1, f1, f2
	FCHECK_S f3, 0xb3800000
	fmsub.s f3, f1, f1, f2         /* x*x + (1 + 2^-11), inexact */
	FCHECK_S f3, 0x40001000
	FLAGS NX

	TEST 9          /* fma(inf, 0, qNaN) is invalid; fma with qNaN addend otherwise quiet */
	FLI_D f1, 0x7ff0000000000000
	fmv.d.x f2, zero
	FLI_D f3, 0x7ff8000000000000
	fmadd.d f4, f1, f2, f3
	FCHECK_D f4, 0x7ff8000000000000
	FLAGS NV
	FLI_D f1, 0x3ff0000000000000
	fmadd.d f4, f1, f1, f3
	FCHECK_D f4, 0x7ff8000000000000
	FLAGS 0
	FLI_D f1, 0x7ff0000000000000   /* inf*1 + -inf: invalid */
	FLI_D f2, 0x3ff0000000000000
	FLI_D f3, 0xfff0000000000000
	fmadd.d f4, f1, f2, f3
	FCHECK_D f4, 0x7ff8000000000000
	FLAGS NV

	TEST 10         /* an out-of-range conversion raises NV alone, never NX with it
	                   (negative non-integers to unsigned, fractions past the maximum) */
	FLI_S f1, 0xc56f71e7       /* -3831.12 */
	fcvt.wu.s a0, f1, rtz
	CHECK a0, 0
	FLAGS NV
	fcvt.lu.s a0, f1, rne
	CHECK a0, 0
	FLAGS NV
	FLI_D f1, 0xc0add0e3d70a3d71   /* -3816.445 */
	fcvt.wu.d a0, f1, rtz
	CHECK a0, 0
	FLAGS NV
	fcvt.lu.d a0, f1, rdn
	CHECK a0, 0
	FLAGS NV
	FLI_D f1, 0x41f0000000800000   /* 2^32 + 0.5 */
	fcvt.wu.d a0, f1, rtz
	CHECK a0, -1
	FLAGS NV
	fcvt.w.d a0, f1, rtz
	CHECK a0, 0x7fffffff
	FLAGS NV
	FLI_D f1, 0x42f61c8f9aa3ff7f   /* 2.4e14 with a fraction, rounding up */
	fcvt.w.d a0, f1, rup
	CHECK a0, 0x7fffffff
	FLAGS NV
	FLI_S f1, 0xcf000001       /* -2^31 - 256 */
	fcvt.w.s a0, f1, rne
	CHECK a0, 0xffffffff80000000
	FLAGS NV

	TEST 11         /* fused multiply-add honours every rounding mode on an exact tie:
	                   -(1 * 1) - 2^24 = -(2^24 + 1), halfway between two singles */
	FLI_S f1, 0xbf800000       /* -1 */
	FLI_S f2, 0x4b800000       /* 2^24 */
	fnmadd.s f3, f1, f1, f2, rmm   /* ties away: -(2^24 + 2) */
	FCHECK_S f3, 0xcb800001
	fnmadd.s f3, f1, f1, f2, rne   /* ties to even: -2^24 */
	FCHECK_S f3, 0xcb800000
	fnmadd.s f3, f1, f1, f2, rdn
	FCHECK_S f3, 0xcb800001
	fnmadd.s f3, f1, f1, f2, rup
	FCHECK_S f3, 0xcb800000
	fnmadd.s f3, f1, f1, f2, rtz
	FCHECK_S f3, 0xcb800000
	FLI_S f1, 0x3f800000
	fmadd.s f3, f1, f1, f2, rmm    /* 1 + 2^24 -> 2^24 + 2 */
	FCHECK_S f3, 0x4b800001
	FLAGS NX
	FLI_D f1, 0x3ff0000000000000
	FLI_D f2, 0x4340000000000000   /* 2^53 */
	fmadd.d f3, f1, f1, f2, rmm    /* 2^53 + 1 -> 2^53 + 2 */
	FCHECK_D f3, 0x4340000000000001
	fmadd.d f3, f1, f1, f2, rne
	FCHECK_D f3, 0x4340000000000000
	fmsub.d f3, f1, f1, f2, rmm    /* 1 - 2^53: exact */
	FCHECK_D f3, 0xc33fffffffffffff
	fnmsub.d f3, f1, f1, f2, rmm   /* -1 + 2^53: exact */
	FCHECK_D f3, 0x433fffffffffffff
	FLAGS NX
	FLI_S f1, 0x3f800000       /* fmul/fdiv/fsqrt in rmm on ties too */
	FLI_S f2, 0x4b800001       /* 2^24 + 2 */
	FLI_S f4, 0x3f000000       /* 0.5: (2^24+2)*0.5 = 2^23+1 exact */
	fmul.s f3, f2, f4, rmm
	FCHECK_S f3, 0x4b000001
	FLAGS 0

	TEST 12         /* rmm on a tie between zero and the smallest subnormal rounds away */
	li t0, 1
	fmv.d.x f1, t0                 /* 2^-1074 */
	FLI_D f2, 0x3fe0000000000000   /* 0.5 */
	fmul.d f3, f1, f2, rmm
	FCHECK_D f3, 0x0000000000000001
	FLAGS UF | NX
	fmul.d f3, f1, f2, rne
	FCHECK_D f3, 0
	FLAGS UF | NX
	fneg.d f1, f1
	fmul.d f3, f1, f2, rmm
	FCHECK_D f3, 0x8000000000000001
	FLAGS UF | NX
	FLI_D f4, 0x4000000000000000
	fdiv.d f3, f1, f4, rmm
	FCHECK_D f3, 0x8000000000000001
	FLAGS UF | NX
	FLI_S f1, 0x00000001           /* 2^-149 */
	FLI_S f2, 0x3f000000
	fmul.s f3, f1, f2, rmm
	FCHECK_S f3, 0x00000001
	FLAGS UF | NX

	j pass

	.data
	.balign 8
fword:	.word 0x3f800000
