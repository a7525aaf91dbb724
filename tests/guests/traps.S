/* Exception causes taken in M-mode: illegal instructions (with the instruction bits in
 * mtval), illegal CSR accesses, misaligned loads/stores, access faults on load, store and
 * fetch (tval = address), ecall and ebreak, mepc alignment. */
#include "test.h"

#define NOWHERE 0x40000000          /* nothing is mapped there on -M spike */

	.text
	.globl main
main:
	TEST 1          /* illegal 32-bit opcode: tval = the instruction */
	EXPECT_TRAP
1:	.word 0x0000000b            /* custom-0 */
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_TVAL 0x0000000b
	CHECK_EPC 1b
	CHECK_FROM 3

	TEST 2          /* illegal compressed: all-zero and c.lui with imm 0, tval = 16 bits */
	EXPECT_TRAP
	.2byte 0x0000
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_TVAL 0
	EXPECT_TRAP
1:	.2byte 0x6081
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_TVAL 0x6081
	CHECK_EPC 1b
	.balign 4

	TEST 3          /* writes to read-only CSRs are illegal, reads are fine */
	csrr a0, mvendorid
	csrr a0, cycle
	csrrs a0, mhartid, zero
	EXPECT_TRAP
1:	csrw mhartid, a0
	CHECK_CAUSE CAUSE_ILLEGAL
	lwu t0, 1b
	CHECK_TVAL_R t0
	EXPECT_TRAP
	csrrsi a0, mimpid, 1
	CHECK_CAUSE CAUSE_ILLEGAL
	li a1, 1
	EXPECT_TRAP
	csrrc a0, cycle, a1
	CHECK_CAUSE CAUSE_ILLEGAL
	EXPECT_TRAP
	csrrwi a0, instret, 0
	CHECK_CAUSE CAUSE_ILLEGAL

	TEST 4          /* CSRs that do not exist: odd pmpcfg on RV64, an unassigned number */
	EXPECT_TRAP
1:	csrr a0, pmpcfg1
	CHECK_CAUSE CAUSE_ILLEGAL
	lwu t0, 1b
	CHECK_TVAL_R t0
	EXPECT_TRAP
	csrr a0, 0x7ff
	CHECK_CAUSE CAUSE_ILLEGAL

	TEST 5          /* ecall from M */
	EXPECT_TRAP
1:	ecall
	CHECK_CAUSE CAUSE_ECALL_M
	CHECK_TVAL 0
	CHECK_EPC 1b

	TEST 6          /* ebreak: tval is 0 or the pc */
	EXPECT_TRAP
1:	ebreak
	CHECK_CAUSE CAUSE_BREAKPOINT
	CHECK_EPC 1b
	ld t0, trap_tval
	beqz t0, 2f
	la t1, 1b
	bne t0, t1, fail
2:
	TEST 7          /* load / store access faults, tval = address */
	li s0, NOWHERE + 8
	EXPECT_TRAP
1:	ld a0, 0(s0)
	CHECK_CAUSE CAUSE_LOAD_ACCESS
	CHECK_TVAL_R s0
	CHECK_EPC 1b
	EXPECT_TRAP
	sw a0, 4(s0)
	CHECK_CAUSE CAUSE_STORE_ACCESS
	addi t0, s0, 4
	CHECK_TVAL_R t0
	EXPECT_TRAP
	lbu a0, -1(s0)
	CHECK_CAUSE CAUSE_LOAD_ACCESS
	addi t0, s0, -1
	CHECK_TVAL_R t0
	EXPECT_TRAP
	amoadd.d a0, a0, (s0)       /* store/AMO access fault; QEMU 7.2 reports a load fault */
	ld t0, trap_cause
	li t1, CAUSE_LOAD_ACCESS
	beq t0, t1, 1f
	CHECK_CAUSE CAUSE_STORE_ACCESS
1:	CHECK_TVAL_R s0
	li s1, 0
	EXPECT_TRAP
	sd a0, 0(s1)                /* address 0: nothing there */
	CHECK_CAUSE CAUSE_STORE_ACCESS
	CHECK_TVAL 0

	TEST 8          /* instruction access fault: mepc = tval = target */
	li s0, NOWHERE
	EXPECT_TRAP_AT 1f
	jalr ra, 0(s0)
1:	CHECK_CAUSE CAUSE_FETCH_ACCESS
	CHECK_TVAL_R s0
	ld t0, trap_epc
	CHECKR t0, s0

	TEST 9          /* misaligned load/store: performed, or address-misaligned / access fault
	                   with tval = address; the data must be right when performed */
	la s0, buf
	li a0, 0x1122334455667788
	sd a0, 0(s0)
	sd zero, 8(s0)
	addi s1, s0, 3
	EXPECT_TRAP
	ld a1, 0(s1)
	ld t0, trap_cause
	li t1, -1
	bne t0, t1, 1f
	sd zero, trap_expected, t0
	CHECK a1, 0x0000001122334455
	j 2f
1:	li t1, CAUSE_MISALIGNED_LOAD
	beq t0, t1, 3f
	li t1, CAUSE_LOAD_ACCESS
	bne t0, t1, fail
3:	CHECK_TVAL_R s1
2:	addi s1, s0, 5
	li a0, 0xaabbccdd
	EXPECT_TRAP
	sw a0, 0(s1)
	ld t0, trap_cause
	li t1, -1
	bne t0, t1, 1f
	sd zero, trap_expected, t0
	ld a1, 0(s0)
	CHECK a1, 0xbbccdd4455667788
	ld a1, 8(s0)
	CHECK a1, 0xaa
	j 2f
1:	li t1, CAUSE_MISALIGNED_STORE
	beq t0, t1, 3f
	li t1, CAUSE_STORE_ACCESS
	bne t0, t1, fail
3:	CHECK_TVAL_R s1
2:
	TEST 10         /* mtvec holds the base (mepc[0] is not checked: QEMU 7.2 keeps it) */
	csrr t0, mtvec
	la t1, trap_entry
	CHECKR t0, t1

	TEST 11         /* mscratch survives, mcause/mtval are writable */
	li t0, 0x123456789
	csrr s2, mscratch
	csrrw t1, mscratch, t0
	CHECKR t1, s2
	csrrw t1, mscratch, s2
	CHECK t1, 0x123456789
	li t0, 0x8000000000000007
	csrw mcause, t0
	csrr t1, mcause
	CHECKR t1, t0
	csrw mtval, t0
	csrr t1, mtval
	CHECKR t1, t0

	TEST 12         /* reserved encodings are illegal, tval = the bits */
	.macro ILLEGAL32 bits
	EXPECT_TRAP
	.word \bits
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_TVAL \bits
	.endm
	.macro ILLEGAL16 bits
	EXPECT_TRAP
	.2byte \bits
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_TVAL \bits
	.endm
	ILLEGAL32 0x0205151b        /* slliw with shamt[5] = 1 */
	ILLEGAL32 0x4205551b        /* sraiw with shamt[5] = 1 */
	ILLEGAL32 0x00a54023        /* store with funct3 = 4 */
	ILLEGAL32 0x00057503        /* load with funct3 = 7 */
	ILLEGAL32 0x06000053        /* fadd.q: no Q */
	ILLEGAL32 0x0005202f | (0x1f << 27)   /* AMO funct5 = 0x1f */
	ILLEGAL32 0x0000002f        /* AMO width 0 */
	ILLEGAL32 0x00052063        /* branch funct3 = 2 */
	ILLEGAL32 0x00001067        /* jalr funct3 = 1 */
	ILLEGAL32 0x02a5553b | (1 << 30)      /* divuw with a stray funct7 bit */
	.balign 2
	ILLEGAL16 0x8002            /* c.jr x0 */
	ILLEGAL16 0x4002            /* c.lwsp x0 */
	ILLEGAL16 0x6002            /* c.ldsp x0 */
	ILLEGAL16 0x6101            /* c.addi16sp 0 */
	.balign 4

	j pass

	.data
	.balign 8
buf:	.dword 0, 0
