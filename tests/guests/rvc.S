/* C extension: every RV64 compressed form, written with explicit c.* mnemonics. */
#include "test.h"

	.text
	.globl main
main:
	.option push
	.option rvc
	TEST 1          /* c.li, c.lui, c.addi, c.addiw, c.addi16sp, c.addi4spn */
	c.li a0, -32
	CHECK a0, -32
	c.lui a1, 0xfffff          /* imm -1 << 12 */
	CHECK a1, -4096
	c.lui a1, 1
	CHECK a1, 4096
	c.li a0, 31
	c.addi a0, -1
	CHECK a0, 30
	li a0, 0x7fffffff
	c.addiw a0, 1
	CHECK a0, 0xffffffff80000000
	mv s1, sp
	c.addi16sp sp, -64
	addi t0, s1, -64
	CHECKR sp, t0
	c.addi16sp sp, 64
	CHECKR sp, s1
	c.addi4spn a0, sp, 1020
	addi t0, sp, 1020
	CHECKR a0, t0

	TEST 2          /* c.mv, c.add, c.sub, c.xor, c.or, c.and, c.andi, c.addw, c.subw */
	li a0, 0x0f0f
	c.mv a1, a0
	CHECK a1, 0x0f0f
	li a2, 0x00ff
	c.add a1, a2
	CHECK a1, 0x100e
	c.sub a1, a2
	CHECK a1, 0x0f0f
	c.xor a1, a2
	CHECK a1, 0x0ff0
	c.or a1, a2
	CHECK a1, 0x0fff
	c.and a1, a2
	CHECK a1, 0x00ff
	c.andi a1, -16
	CHECK a1, 0x00f0
	li a0, 0x7fffffff
	li a1, 1
	c.addw a0, a1
	CHECK a0, 0xffffffff80000000
	c.subw a0, a1
	CHECK a0, 0x7fffffff

	TEST 3          /* c.slli, c.srli, c.srai (6-bit amounts) */
	li a0, 1
	c.slli a0, 63
	CHECK a0, 0x8000000000000000
	c.srai a0, 62
	CHECK a0, -2
	c.srli a0, 60
	CHECK a0, 0xf

	TEST 4          /* c.lw/c.sw/c.ld/c.sd, c.lwsp/c.swsp/c.ldsp/c.sdsp */
	la s0, buf
	li a0, 0xfffffffe87654321
	c.sd a0, 8(s0)
	c.ld a1, 8(s0)
	CHECKR a1, a0
	c.sw a0, 124(s0)
	c.lw a1, 124(s0)
	CHECK a1, 0xffffffff87654321
	addi sp, sp, -256
	c.sdsp a0, 248(sp)
	c.ldsp a2, 248(sp)
	CHECKR a2, a0
	c.swsp a0, 252(sp)
	c.lwsp a2, 252(sp)
	CHECK a2, 0xffffffff87654321
	addi sp, sp, 256

	TEST 5          /* c.fld/c.fsd, c.fldsp/c.fsdsp */
	li a0, 0x400921fb54442d18
	fmv.d.x fa0, a0
	c.fsd fa0, 16(s0)
	c.fld fa1, 16(s0)
	fmv.x.d a1, fa1
	CHECKR a1, a0
	addi sp, sp, -64
	c.fsdsp fa0, 56(sp)
	c.fldsp fa2, 56(sp)
	fmv.x.d a1, fa2
	CHECKR a1, a0
	addi sp, sp, 64

	TEST 6          /* c.j, c.jr, c.jalr, c.beqz, c.bnez */
	c.j 1f
	j fail
1:	la a0, 2f
	c.jr a0
	j fail
2:	la a0, 3f
	c.jalr a0
4:	j 5f
3:	la t0, 4b
	CHECKR ra, t0
	c.jr ra
5:	li a0, 0
	c.beqz a0, 6f
	j fail
6:	c.bnez a0, fail_c
	li a1, 1
	c.bnez a1, 7f
	j fail
7:	c.beqz a1, fail_c

	TEST 7          /* c.nop, c.ebreak trap with the right epc */
	c.nop
	EXPECT_TRAP
8:	c.ebreak
	CHECK_CAUSE CAUSE_BREAKPOINT
	CHECK_EPC 8b

	TEST 8          /* the all-zero halfword is an illegal instruction */
	EXPECT_TRAP
	.2byte 0
	CHECK_CAUSE CAUSE_ILLEGAL
	.option pop
	j pass
fail_c:
	j fail

	.data
	.balign 8
buf:	.space 128
