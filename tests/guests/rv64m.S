/* M extension: every multiply/divide form incl. W forms, division by zero and signed
 * overflow results (unprivileged spec 13.2, table 13.1). */
#include "test.h"

	.text
	.globl main
main:
	TEST 1          /* mul / mulh / mulhsu / mulhu */
	li a0, 0x123456789abcdef0
	li a1, 0xfedcba9876543210
	mul a2, a0, a1
	CHECK a2, 0x236d88fe5618cf00
	mulhu a2, a0, a1
	CHECK a2, 0x121fa00ad77d7422
	mulh a2, a0, a1
	CHECK a2, 0xffeb49923cc09532      /* mulhu - a0 (a1 negative) */
	mulhsu a2, a1, a0                 /* signed a1 * unsigned a0 */
	CHECK a2, 0xffeb49923cc09532
	li a3, -1
	mulhsu a2, a3, a3                 /* -1 * (2^64-1) = -(2^64-1): high = -1 */
	CHECK a2, -1
	mulh a2, a3, a3
	CHECK a2, 0
	mulhu a2, a3, a3
	CHECK a2, 0xfffffffffffffffe
	li a4, 0x8000000000000000
	mulh a2, a4, a4
	CHECK a2, 0x4000000000000000

	TEST 2          /* mulw */
	li a0, 0x0000000180000000
	li a1, 2
	mulw a2, a0, a1
	CHECK a2, 0
	li a0, 0x10000
	mulw a2, a0, a0
	CHECK a2, 0
	li a0, 0xffff
	li a1, 0x10001
	mulw a2, a0, a1
	CHECK a2, -1

	TEST 3          /* div / divu / rem / remu, signs */
	li a0, -7
	li a1, 2
	div a2, a0, a1
	CHECK a2, -3
	rem a2, a0, a1
	CHECK a2, -1
	divu a2, a0, a1
	CHECK a2, 0x7ffffffffffffffc
	remu a2, a0, a1
	CHECK a2, 1
	li a1, -2
	div a2, a0, a1
	CHECK a2, 3
	rem a2, a0, a1
	CHECK a2, -1

	TEST 4          /* division by zero */
	li a0, 1234
	div a2, a0, zero
	CHECK a2, -1
	divu a2, a0, zero
	CHECK a2, -1
	rem a2, a0, zero
	CHECK a2, 1234
	remu a2, a0, zero
	CHECK a2, 1234
	divw a2, a0, zero
	CHECK a2, -1
	divuw a2, a0, zero
	CHECK a2, -1
	li a0, 0x1234567880000001
	remw a2, a0, zero
	CHECK a2, 0xffffffff80000001
	remuw a2, a0, zero
	CHECK a2, 0xffffffff80000001

	TEST 5          /* signed overflow */
	li a0, 0x8000000000000000
	li a1, -1
	div a2, a0, a1
	CHECK a2, 0x8000000000000000
	rem a2, a0, a1
	CHECK a2, 0
	li a0, 0xffffffff80000000
	divw a2, a0, a1
	CHECK a2, 0xffffffff80000000
	remw a2, a0, a1
	CHECK a2, 0

	TEST 6          /* W forms ignore the upper halves */
	li a0, 0xabcdef00fffffff9      /* low word -7 */
	li a1, 0x1234567800000002
	divw a2, a0, a1
	CHECK a2, -3
	remw a2, a0, a1
	CHECK a2, -1
	divuw a2, a0, a1
	CHECK a2, 0x7ffffffc
	remuw a2, a0, a1
	CHECK a2, 1
	li a0, 0x00000000fffffffe
	li a1, 1
	divuw a2, a0, a1          /* result 0xfffffffe sign-extended */
	CHECK a2, -2

	j pass
