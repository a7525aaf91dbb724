/* Self-modifying code and FENCE.I: code written to fresh memory, an instruction patched
 * ahead of the pc in the block being executed, a compressed instruction patched, code
 * rewritten many times in a loop, and a store to a code page without executing it. */
#include "test.h"

#define ADDI_A0_A0(imm) (0x00050513 | ((imm) << 20))     /* addi a0, a0, imm */
#define RET 0x00008067                                   /* jalr zero, 0(ra) */
#define C_ADDI_A0(imm) (0x0501 | (((imm) & 0x1f) << 2))  /* c.addi a0, imm (1..31) */

	.text
	.globl main
main:
	TEST 1          /* code written to a buffer that never ran, then fence.i */
	la s0, buffer
	li t0, ADDI_A0_A0(5)
	sw t0, 0(s0)
	li t0, RET
	sw t0, 4(s0)
	fence.i
	li a0, 1
	jalr ra, 0(s0)
	CHECK a0, 6

	TEST 2          /* rewritten after it ran */
	li t0, ADDI_A0_A0(-7)
	sw t0, 0(s0)
	fence.i
	li a0, 1
	jalr ra, 0(s0)
	CHECK a0, -6

	TEST 3          /* patch an instruction a few words ahead in the running code */
	la s1, 1f
	li t0, ADDI_A0_A0(100)
	li a0, 0
	.option push
	.option norvc
	sw t0, 0(s1)
	fence.i
1:	addi a0, a0, 1              /* becomes addi a0, a0, 100 */
	.option pop
	CHECK a0, 100
	li t0, ADDI_A0_A0(1)        /* put it back for a second pass */
	sw t0, 0(s1)
	fence.i

	TEST 4          /* a compressed instruction patched in place */
	la s1, 2f
	li t0, C_ADDI_A0(9)
	li a0, 0
	.option push
	.option norvc
	sh t0, 0(s1)
	fence.i
	.option pop
	.option push
	.option rvc
2:	c.addi a0, 1                /* becomes c.addi a0, 9 */
	c.nop
	.option pop
	CHECK a0, 9

	TEST 5          /* the same code rewritten 200 times: each version runs */
	li s2, 0
	li s3, 0
	li s4, 200
3:	andi t1, s2, 0x3ff
	slli t1, t1, 20
	li t0, ADDI_A0_A0(0)
	or t0, t0, t1
	sw t0, 0(s0)
	fence.i
	li a0, 0
	jalr ra, 0(s0)
	add s3, s3, a0
	addi s2, s2, 1
	bne s2, s4, 3b
	CHECK s3, 199 * 200 / 2

	TEST 6          /* a data store into a page that holds code does not disturb it */
	la s1, code_page_data
	li t0, 0x1234
	sd t0, 0(s1)
	ld t1, 0(s1)
	CHECK t1, 0x1234
	call code_page_fn
	CHECK a0, 77

	j pass

	.balign 4096
code_page_fn:
	li a0, 77
	ret
	.balign 8
code_page_data:
	.dword 0
	.balign 4096

	.data
	.balign 64
buffer:	.space 64
