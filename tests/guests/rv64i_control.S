/* RV64I control transfer: all six branches (taken / not taken, signed vs unsigned),
 * JAL and JALR link values, JALR clearing bit 0 of the target, backward branches. */
#include "test.h"

	.text
	.globl main
main:
	TEST 1          /* beq / bne */
	li a0, 5
	li a1, 5
	li a2, 6
	bne a0, a1, fail
	beq a0, a2, fail
	beq a0, a1, 1f
	j fail
1:	bne a0, a2, 2f
	j fail
2:
	TEST 2          /* blt / bge signed */
	li a0, -1
	li a1, 1
	bge a0, a1, fail
	blt a1, a0, fail
	blt a0, a1, 1f
	j fail
1:	bge a1, a0, 2f
	j fail
2:	bge a0, a0, 3f          /* equal: bge taken */
	j fail
3:	blt a0, a0, fail
	TEST 3          /* bltu / bgeu unsigned */
	li a0, -1
	li a1, 1
	bltu a0, a1, fail
	bgeu a1, a0, fail
	bltu a1, a0, 1f
	j fail
1:	bgeu a0, a1, 2f
	j fail
2:	bgeu a1, a1, 3f
	j fail
3:
	TEST 4          /* jal links pc+4 */
	jal a0, 1f
2:	j fail
1:	la a1, 2b
	CHECKR a0, a1

	TEST 5          /* jalr: target = (rs1 + imm) & ~1, link pc+4, rd == rs1 */
	la a0, 1f
	addi a0, a0, -3          /* (a0 - 3) + 4 = label + 1: bit 0 cleared */
	jalr a1, 4(a0)
3:	j fail
1:	la a2, 3b
	CHECKR a1, a2
	la a0, 4f
	jalr a0, 0(a0)           /* rd == rs1: target uses the old value */
5:	j fail
4:	la a2, 5b
	CHECKR a0, a2

	TEST 6          /* a backward-branch loop */
	li a0, 0
	li a1, 100
1:	addi a0, a0, 3
	addi a1, a1, -1
	bnez a1, 1b
	CHECK a0, 300

	TEST 7          /* call / ret through the stack */
	li a0, 10
	call fact
	CHECK a0, 3628800

	j pass

fact:                   /* recursive factorial of a0 */
	addi sp, sp, -16
	sd ra, 0(sp)
	sd a0, 8(sp)
	li t0, 1
	ble a0, t0, 1f
	addi a0, a0, -1
	call fact
	ld t0, 8(sp)
	mul a0, a0, t0
	j 2f
1:	li a0, 1
2:	ld ra, 0(sp)
	addi sp, sp, 16
	ret
