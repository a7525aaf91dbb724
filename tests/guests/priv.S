/* Privilege transitions: mret/sret field updates, ecall from U/S, delegation through
 * medeleg to an S-mode handler, TSR/TVM/TW, privileged instructions and CSRs from lower
 * modes, the sstatus/sie views. */
#include "test.h"

	.text
	.globl main
main:
	la t0, s_handler
	csrw stvec, t0

	TEST 1          /* mret: MIE <- MPIE, MPIE <- 1, MPP <- U */
	li t0, MSTATUS_MIE | MSTATUS_MPP
	csrc mstatus, t0
	li t0, MSTATUS_MPIE | MSTATUS_MPP
	csrs mstatus, t0
	la t0, 1f
	csrw mepc, t0
	mret
1:	csrr t0, mstatus
	li t1, MSTATUS_MIE | MSTATUS_MPIE | MSTATUS_MPP
	and t0, t0, t1
	CHECK t0, MSTATUS_MIE | MSTATUS_MPIE
	li t0, MSTATUS_MIE
	csrc mstatus, t0

	TEST 2          /* ecall from S and from U reach M with the right cause and MPP */
	ENTER_MODE 1
	EXPECT_TRAP
1:	ecall
	ENTER_M
	CHECK_CAUSE CAUSE_ECALL_S
	CHECK_FROM 1
	CHECK_EPC 1b
	ENTER_MODE 0
	EXPECT_TRAP
1:	ecall
	ENTER_M
	CHECK_CAUSE CAUSE_ECALL_U
	CHECK_FROM 0
	CHECK_EPC 1b
	CHECK_TVAL 0

	TEST 3          /* medeleg: ecall from U handled in S; sret returns to U */
	li t0, 1 << CAUSE_ECALL_U
	csrw medeleg, t0
	csrr t1, medeleg
	CHECKR t1, t0
	sd zero, s_count, t0
	ENTER_MODE 0
1:	ecall
	ENTER_M
	ld t0, s_count
	CHECK t0, 1
	ld t0, s_cause
	CHECK t0, CAUSE_ECALL_U
	ld t0, s_epc
	la t1, 1b
	CHECKR t0, t1
	ld t0, s_status             /* sstatus at trap: SPP = 0 */
	andi t0, t0, MSTATUS_SPP
	CHECK t0, 0

	TEST 4          /* delegated illegal instruction from S: stval has the bits, SPP = 1 */
	li t0, 1 << CAUSE_ILLEGAL
	csrs medeleg, t0
	sd zero, s_count, t0
	ENTER_MODE 1
	li t0, MSTATUS_SIE
	csrs sstatus, t0
1:	.word 0x0000000b
	ENTER_M
	ld t0, s_count
	CHECK t0, 1
	ld t0, s_cause
	CHECK t0, CAUSE_ILLEGAL
	ld t0, s_tval
	CHECK t0, 0x0000000b
	ld t0, s_epc
	la t1, 1b
	CHECKR t0, t1
	ld t0, s_status             /* SPP = 1, SPIE = old SIE = 1, SIE = 0 */
	andi t0, t0, MSTATUS_SPP | MSTATUS_SPIE | MSTATUS_SIE
	CHECK t0, MSTATUS_SPP | MSTATUS_SPIE

	TEST 5          /* a delegated cause raised in M-mode still traps to M */
	sd zero, s_count, t0
	EXPECT_TRAP
	.word 0x0000000b
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_FROM 3
	ld t0, s_count
	CHECK t0, 0
	csrw medeleg, zero

	TEST 6          /* sret: SIE <- SPIE, SPIE <- 1, SPP <- U, to the mode in SPP */
	ENTER_MODE 1
	li t0, MSTATUS_SIE | MSTATUS_SPP
	csrc sstatus, t0
	li t0, MSTATUS_SPIE
	csrs sstatus, t0
	la t0, 1f
	csrw sepc, t0
	sret                        /* to U */
1:	EXPECT_TRAP                 /* in U: sstatus is not accessible */
	csrr t0, sstatus
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_FROM 0
	csrr t0, mstatus
	andi t0, t0, MSTATUS_SPP | MSTATUS_SPIE | MSTATUS_SIE
	CHECK t0, MSTATUS_SPIE | MSTATUS_SIE
	li t0, MSTATUS_SIE
	csrc mstatus, t0

	TEST 7          /* from S: mret, M CSRs are illegal; from U: sret, mret, S CSRs */
	ENTER_MODE 1
	EXPECT_TRAP
	mret
	EXPECT_TRAP
	csrr t0, mstatus
	EXPECT_TRAP
	csrw mscratch, zero
	ENTER_M
	ld t0, trap_count
	ENTER_MODE 0
	EXPECT_TRAP
	sret
	EXPECT_TRAP
	mret
	EXPECT_TRAP
	csrr t1, sscratch
	EXPECT_TRAP
	csrr t1, satp
	EXPECT_TRAP
	sfence.vma
	ENTER_M
	ld t1, trap_count
	sub t1, t1, t0
	CHECK t1, 5
	CHECK_CAUSE CAUSE_ILLEGAL

	TEST 8          /* TSR: sret from S is illegal; TVM: satp and sfence.vma are illegal */
	li t0, MSTATUS_TSR
	csrs mstatus, t0
	ENTER_MODE 1
	EXPECT_TRAP
	sret
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_FROM 1
	li t0, MSTATUS_TSR
	csrc mstatus, t0
	li t0, MSTATUS_TVM
	csrs mstatus, t0
	ENTER_MODE 1
	EXPECT_TRAP
1:	csrr t1, satp
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	lwu t0, 1b
	CHECK_TVAL_R t0
	ENTER_MODE 1
	EXPECT_TRAP
	sfence.vma
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	li t0, MSTATUS_TVM
	csrc mstatus, t0
	ENTER_MODE 1                /* TVM off: both allowed */
	csrr t1, satp
	sfence.vma
	ENTER_M

	TEST 9          /* TW: wfi in S is illegal; wfi in U is illegal regardless */
	li t0, MSTATUS_TW
	csrs mstatus, t0
	ENTER_MODE 1
	EXPECT_TRAP
	wfi
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_FROM 1
	li t0, MSTATUS_TW
	csrc mstatus, t0
	ENTER_MODE 0
	EXPECT_TRAP
	wfi
	ENTER_M
	CHECK_CAUSE CAUSE_ILLEGAL
	CHECK_FROM 0

	TEST 10         /* sstatus is a view of mstatus */
	li t0, MSTATUS_SUM
	csrs sstatus, t0
	csrr t1, mstatus
	and t1, t1, t0
	CHECKR t1, t0
	csrc mstatus, t0
	csrr t1, sstatus
	and t1, t1, t0
	CHECK t1, 0
	li t0, MSTATUS_MIE | MSTATUS_TVM
	csrc mstatus, t0
	li t0, MSTATUS_MPP | MSTATUS_MIE | MSTATUS_TVM
	csrs sstatus, t0            /* M-only fields are not writable through sstatus */
	csrr t1, sstatus
	and t1, t1, t0
	CHECK t1, 0
	csrr t1, mstatus
	li t0, MSTATUS_MIE | MSTATUS_TVM
	and t1, t1, t0
	CHECK t1, 0
	csrr t1, sstatus            /* UXL reads 2 (64-bit) */
	srli t1, t1, 32
	andi t1, t1, 3
	CHECK t1, 2

	TEST 11         /* sie / sip are the mideleg'ed part of mie / mip */
	csrw mie, zero
	li t0, 0x222
	csrw mideleg, t0
	csrr t1, mideleg            /* (with H, VS bits read as delegated: look at 0x222 only) */
	andi t1, t1, 0x2aa
	CHECK t1, 0x222
	li t0, -1
	csrw sie, t0
	csrr t1, mie
	CHECK t1, 0x222
	csrr t1, sie
	CHECK t1, 0x222
	csrw sie, zero
	csrr t1, mie
	CHECK t1, 0
	li t0, 0x888                /* M-level bits are not delegable */
	csrs mideleg, t0
	csrr t1, mideleg
	andi t1, t1, 0x2aa
	CHECK t1, 0x222
	csrw mideleg, zero

	j pass

/* S-mode trap handler: records scause/stval/sepc/sstatus, skips the instruction, sret.
 * An ecall carrying ENTER_M_MAGIC in t6 goes on to M-mode, which resumes after it. */
	.balign 4
s_handler:
	csrw sscratch, t0
	li t0, ENTER_M_MAGIC
	bne t6, t0, 1f
	csrr t0, sscratch
	ecall                       /* from S: the M handler returns here in M-mode */
	csrr t5, sepc
	addi t5, t5, 4
	jr t5
1:	la t0, s_cause
	csrr t6, scause
	sd t6, 0(t0)
	csrr t6, stval
	sd t6, 8(t0)
	csrr t6, sepc
	sd t6, 16(t0)
	csrr t6, sstatus
	sd t6, 24(t0)
	ld t6, 32(t0)
	addi t6, t6, 1
	sd t6, 32(t0)
	csrr t6, sepc
	lhu t5, 0(t6)
	andi t5, t5, 3
	addi t6, t6, 2
	li t0, 3
	bne t5, t0, 2f
	addi t6, t6, 2
2:	csrw sepc, t6
	csrr t0, sscratch
	sret

	.data
	.balign 8
s_cause:  .dword 0
s_tval:   .dword 0
s_epc:    .dword 0
s_status: .dword 0
s_count:  .dword 0
