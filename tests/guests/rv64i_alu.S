/* RV64I integer computational instructions: register-immediate, register-register,
 * the 32-bit W forms, LUI/AUIPC, and writes to x0. */
#include "test.h"

	.text
	.globl main
main:
	TEST 1          /* addi / add / sub, wrap-around */
	li a0, 0x7fffffffffffffff
	addi a1, a0, 1
	CHECK a1, 0x8000000000000000
	addi a1, zero, -2048
	CHECK a1, -2048
	li a2, 5
	li a3, -7
	add a4, a2, a3
	CHECK a4, -2
	sub a4, a2, a3
	CHECK a4, 12
	sub a4, zero, a0
	CHECK a4, 0x8000000000000001

	TEST 2          /* slt/sltu/slti/sltiu */
	li a0, -1
	li a1, 1
	slt a2, a0, a1
	CHECK a2, 1
	sltu a2, a0, a1
	CHECK a2, 0
	slti a2, a0, 0
	CHECK a2, 1
	sltiu a2, a1, -1        /* immediate sign-extended then compared unsigned */
	CHECK a2, 1
	sltiu a2, zero, 1       /* seqz */
	CHECK a2, 1
	sltu a2, zero, a0       /* snez */
	CHECK a2, 1

	TEST 3          /* logic */
	li a0, 0xff00ff00ff00ff00
	li a1, 0x0ff00ff00ff00ff0
	and a2, a0, a1
	CHECK a2, 0x0f000f000f000f00
	or a2, a0, a1
	CHECK a2, 0xfff0fff0fff0fff0
	xor a2, a0, a1
	CHECK a2, 0xf0f0f0f0f0f0f0f0
	andi a2, a0, -256
	CHECK a2, 0xff00ff00ff00ff00
	ori a2, a0, 0x0ff
	CHECK a2, 0xff00ff00ff00ffff
	xori a2, a0, -1
	CHECK a2, 0x00ff00ff00ff00ff

	TEST 4          /* shifts: 6-bit amounts, masking of the register amount */
	li a0, 0x8000000000000001
	slli a1, a0, 63
	CHECK a1, 0x8000000000000000
	srli a1, a0, 63
	CHECK a1, 1
	srai a1, a0, 63
	CHECK a1, -1
	srai a1, a0, 1
	CHECK a1, 0xc000000000000000
	li a2, 65                /* only the low 6 bits count */
	sll a1, a0, a2
	CHECK a1, 2
	srl a1, a0, a2
	CHECK a1, 0x4000000000000000
	sra a1, a0, a2
	CHECK a1, 0xc000000000000000

	TEST 5          /* W forms: 32-bit result sign-extended */
	li a0, 0x000000007fffffff
	addiw a1, a0, 1
	CHECK a1, 0xffffffff80000000
	li a0, 0x1234567800000000
	addiw a1, a0, 0          /* sext.w */
	CHECK a1, 0
	li a0, 0xffffffff
	li a2, 1
	addw a1, a0, a2
	CHECK a1, 0
	subw a1, zero, a2
	CHECK a1, -1
	li a0, 0x80000000
	subw a1, a0, a2
	CHECK a1, 0x7fffffff
	li a0, 1
	slliw a1, a0, 31
	CHECK a1, 0xffffffff80000000
	li a0, 0xffffffff80000000
	srliw a1, a0, 31
	CHECK a1, 1
	sraiw a1, a0, 31
	CHECK a1, -1
	li a2, 33                /* W shifts use 5 bits of the amount */
	li a0, 3
	sllw a1, a0, a2
	CHECK a1, 6
	li a0, 0x00000000f0000000
	srlw a1, a0, a2
	CHECK a1, 0x78000000
	sraw a1, a0, a2
	CHECK a1, 0xfffffffff8000000
	li a0, 0x123456789
	srliw a1, a0, 0          /* zero shift still sign-extends bit 31 */
	CHECK a1, 0x23456789
	li a0, 0x1ffffffff
	srlw a1, a0, zero
	CHECK a1, -1

	TEST 6          /* lui / auipc */
	lui a0, 0x80000
	CHECK a0, 0xffffffff80000000
	lui a0, 0x7ffff
	CHECK a0, 0x7ffff000
1:	auipc a0, 0
	la a1, 1b
	CHECKR a0, a1
2:	auipc a0, 0xfffff         /* -4096 */
	la a1, 2b
	addi a1, a1, -2048
	addi a1, a1, -2048
	CHECKR a0, a1

	TEST 7          /* x0 is hard-wired */
	li a0, 55
	addi zero, a0, 1
	add zero, a0, a0
	lui zero, 1
	CHECK zero, 0
	mv a1, zero
	CHECK a1, 0

	j pass
