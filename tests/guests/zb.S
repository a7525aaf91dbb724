/* Zba, Zbb and Zbs: every instruction, including the .uw forms and edge values. */
#include "test.h"

	.text
	.globl main
main:
	TEST 1          /* Zba */
	li a0, 0x100
	li a1, 0xffffffff80000001
	sh1add a2, a0, a1
	CHECK a2, 0xffffffff80000201
	sh2add a2, a0, a1
	CHECK a2, 0xffffffff80000401
	sh3add a2, a0, a1
	CHECK a2, 0xffffffff80000801
	add.uw a2, a1, a0          /* zext32(a1) + a0 */
	CHECK a2, 0x80000101
	sh1add.uw a2, a1, a0
	CHECK a2, 0x100000102
	sh2add.uw a2, a1, a0
	CHECK a2, 0x200000104
	sh3add.uw a2, a1, a0
	CHECK a2, 0x400000108
	slli.uw a2, a1, 4
	CHECK a2, 0x800000010
	zext.w a2, a1
	CHECK a2, 0x80000001

	TEST 2          /* Zbb logic with negate, min/max */
	li a0, 0xff00ff00ff00ff00
	li a1, 0x0ff00ff00ff00ff0
	andn a2, a0, a1
	CHECK a2, 0xf000f000f000f000
	orn a2, a0, a1
	CHECK a2, 0xff0fff0fff0fff0f
	xnor a2, a0, a1
	CHECK a2, 0x0f0f0f0f0f0f0f0f
	li a0, -5
	li a1, 3
	min a2, a0, a1
	CHECK a2, -5
	max a2, a0, a1
	CHECK a2, 3
	minu a2, a0, a1
	CHECK a2, 3
	maxu a2, a0, a1
	CHECK a2, -5

	TEST 3          /* clz / ctz / cpop and W forms */
	li a0, 0x0000100000000000
	clz a2, a0
	CHECK a2, 19
	ctz a2, a0
	CHECK a2, 44
	clz a2, zero
	CHECK a2, 64
	ctz a2, zero
	CHECK a2, 64
	clzw a2, a0
	CHECK a2, 32
	li a0, 0xffffffff00000000    /* low word zero: ctzw = 32 (QEMU 7.2 miscounts */
	ctzw a2, a0                  /* when the upper word has lower set bits)      */
	CHECK a2, 32
	ctzw a2, zero
	CHECK a2, 32
	li a0, 0xffffffff00010000
	clzw a2, a0
	CHECK a2, 15
	ctzw a2, a0
	CHECK a2, 16
	cpop a2, a0
	CHECK a2, 33
	cpopw a2, a0
	CHECK a2, 1
	li a0, -1
	cpop a2, a0
	CHECK a2, 64

	TEST 4          /* sign/zero extension, rev8, orc.b */
	li a0, 0x1234567890abcd80
	sext.b a2, a0
	CHECK a2, 0xffffffffffffff80
	sext.h a2, a0
	CHECK a2, 0xffffffffffffcd80
	zext.h a2, a0
	CHECK a2, 0xcd80
	rev8 a2, a0
	CHECK a2, 0x80cdab9078563412
	li a0, 0x0001000080000000
	orc.b a2, a0
	CHECK a2, 0x00ff0000ff000000

	TEST 5          /* rotates */
	li a0, 0x8000000000000001
	li a1, 65
	rol a2, a0, a1
	CHECK a2, 0x0000000000000003
	ror a2, a0, a1
	CHECK a2, 0xc000000000000000
	rori a2, a0, 4
	CHECK a2, 0x1800000000000000
	li a0, 0x0000000080000001
	rolw a2, a0, a1
	CHECK a2, 3
	rorw a2, a0, a1
	CHECK a2, 0xffffffffc0000000
	roriw a2, a0, 1
	CHECK a2, 0xffffffffc0000000
	li a0, 0xffffffff00000001
	roriw a2, a0, 0
	CHECK a2, 1

	TEST 6          /* Zbs */
	li a0, 0
	li a1, 63
	bset a2, a0, a1
	CHECK a2, 0x8000000000000000
	li a1, 64 + 3              /* shift amount taken mod 64 */
	bset a2, a0, a1
	CHECK a2, 8
	bseti a2, a0, 40
	CHECK a2, 0x10000000000
	li a0, -1
	bclr a2, a0, a1
	CHECK a2, 0xfffffffffffffff7
	bclri a2, a0, 63
	CHECK a2, 0x7fffffffffffffff
	li a0, 0x5
	binv a2, a0, a1
	CHECK a2, 0xd
	binvi a2, a0, 0
	CHECK a2, 4
	bext a2, a0, zero
	CHECK a2, 1
	bexti a2, a0, 1
	CHECK a2, 0
	li a0, 0x8000000000000000
	bexti a2, a0, 63
	CHECK a2, 1

	j pass
