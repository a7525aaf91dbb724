/* RV64I loads and stores of every width with sign/zero extension, negative offsets,
 * little-endian byte order, FENCE, and FENCE.I after modifying code. */
#include "test.h"

	.text
	.globl main
main:
	TEST 1          /* loads of every width */
	la s0, data
	lb a0, 7(s0)
	CHECK a0, 0xffffffffffffff88
	lbu a0, 7(s0)
	CHECK a0, 0x88
	lh a0, 6(s0)
	CHECK a0, 0xffffffffffff8877
	lhu a0, 6(s0)
	CHECK a0, 0x8877
	lw a0, 4(s0)
	CHECK a0, 0xffffffff88776655
	lwu a0, 4(s0)
	CHECK a0, 0x88776655
	ld a0, 0(s0)
	CHECK a0, 0x8877665544332211
	lb a0, 0(s0)
	CHECK a0, 0x11

	TEST 2          /* stores of every width, little-endian */
	la s0, scratch
	sd zero, 0(s0)
	sd zero, 8(s0)
	li a0, 0x0102030405060708
	sb a0, 0(s0)
	sh a0, 2(s0)
	sw a0, 4(s0)
	sd a0, 8(s0)
	ld a1, 0(s0)
	CHECK a1, 0x0506070807080008
	ld a1, 8(s0)
	CHECK a1, 0x0102030405060708
	lbu a1, 15(s0)
	CHECK a1, 0x01

	TEST 3          /* negative offsets */
	addi s1, s0, 16
	li a0, -5
	sd a0, -8(s1)
	ld a1, 8(s0)
	CHECK a1, -5
	lw a1, -4(s1)
	CHECK a1, -1

	TEST 4          /* loads into x0 have no effect; fence forms; Zihintpause */
	lw zero, 0(s0)
	CHECK zero, 0
	fence
	fence rw, rw
	fence r, r
	fence.tso
	.word 0x0100000f            /* pause (fence w, 0) */

	TEST 5          /* self-modifying code: patch an addi immediate, fence.i, run it */
	la s1, patch_site
	li a0, 0
	jalr ra, 0(s1)
	CHECK a0, 1
	lw a1, 0(s1)             /* addi a0, a0, 1 -> addi a0, a0, 42 */
	li a2, 0x000fffff
	and a1, a1, a2
	li a2, 42 << 20
	or a1, a1, a2
	sw a1, 0(s1)
	fence.i
	li a0, 0
	jalr ra, 0(s1)
	CHECK a0, 42

	j pass

	.balign 4
patch_site:
	.option push
	.option norvc
	addi a0, a0, 1
	ret
	.option pop

	.data
	.balign 8
data:	.dword 0x8877665544332211
scratch: .dword 0, 0
