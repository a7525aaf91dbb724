/* Interrupts: CLINT msip and mtimecmp, mip/mie, priority among pending interrupts
 * (MEI > MSI > MTI > SEI > SSI > STI), vectored mtvec, interrupts taken from lower modes
 * whatever mstatus.MIE, delegation to S, WFI wake-up, Sstc stimecmp. */
#include "test.h"

#define MIP_SSIP (1 << 1)
#define MIP_MSIP (1 << 3)
#define MIP_STIP (1 << 5)
#define MIP_MTIP (1 << 7)
#define MIP_SEIP (1 << 9)

	.text
	.globl main
main:
	li s10, CLINT_MSIP
	li s11, CLINT_MTIMECMP
	li t0, -1
	sd t0, 0(s11)               /* no timer interrupt pending */
	la t0, s_handler
	csrw stvec, t0

	TEST 1          /* msip drives mip.MSIP */
	csrr t0, mip
	andi t0, t0, MIP_MSIP
	CHECK t0, 0
	li t0, 1
	sw t0, 0(s10)
	lw t1, 0(s10)
	CHECK t1, 1
	csrr t0, mip
	andi t0, t0, MIP_MSIP
	CHECK t0, MIP_MSIP

	TEST 2          /* taken when mie.MSIE and mstatus.MIE: cause, epc */
	li t0, MIP_MSIP
	csrw mie, t0
	EXPECT_TRAP
	csrsi mstatus, MSTATUS_MIE
1:	nop
	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 3
	ld t0, trap_epc             /* taken right after the enabling csrs */
	la t1, 1b
	CHECKR t0, t1
	sw zero, 0(s10)
	csrr t0, mip
	andi t0, t0, MIP_MSIP
	CHECK t0, 0

	TEST 3          /* machine timer: mtimecmp in the past is pending, future is not */
	li t0, CLINT_MTIME
	ld a0, 0(t0)
	ld a1, 0(t0)
	bltu a1, a0, fail
	sd zero, 0(s11)
	csrr t0, mip
	andi t0, t0, MIP_MTIP
	CHECK t0, MIP_MTIP
	li t0, -1
	sd t0, 0(s11)
	csrr t0, mip
	andi t0, t0, MIP_MTIP
	CHECK t0, 0

	TEST 4          /* timer interrupt after a short delay, waited for with wfi */
	li t0, CLINT_MTIME
	ld a0, 0(t0)
	addi a0, a0, 1000           /* 100 us at 10 MHz */
	sd a0, 0(s11)
	li t0, MIP_MTIP
	csrw mie, t0
	EXPECT_TRAP_AT 2f           /* the deadline may pass before the wfi: resume at 2 */
	csrsi mstatus, MSTATUS_MIE
1:	wfi                         /* may return early (a hint): wait until the trap */
	j 1b
2:	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 7
	li t0, CLINT_MTIME
	ld a1, 0(t0)
	bltu a1, a0, fail
	li t0, -1
	sd t0, 0(s11)

	TEST 5          /* priority: MSI before MTI */
	li t0, 1
	sw t0, 0(s10)
	sd zero, 0(s11)
	li t0, MIP_MSIP | MIP_MTIP
	csrw mie, t0
	EXPECT_TRAP
	csrsi mstatus, MSTATUS_MIE
	nop
	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 3
	sw zero, 0(s10)
	li t0, -1
	sd t0, 0(s11)

	TEST 6          /* software-written S-level pending bits; SSI before STI (the orders
	                   across levels are in spec_strict.S: QEMU 7.2 gets them wrong) */
	li t0, MIP_SSIP | MIP_STIP | MIP_SEIP
	csrs mip, t0
	csrr t1, mip
	and t1, t1, t0
	CHECKR t1, t0
	li t0, MIP_SEIP
	csrw mie, t0
	EXPECT_TRAP
	csrsi mstatus, MSTATUS_MIE
	nop
	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 9
	li t0, MIP_SEIP
	csrc mip, t0
	li t0, MIP_SSIP | MIP_STIP
	csrw mie, t0
	EXPECT_TRAP
	csrsi mstatus, MSTATUS_MIE
	nop
	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 1
	li t0, MIP_SSIP
	csrc mip, t0
	li t0, MIP_STIP
	csrw mie, t0
	EXPECT_TRAP
	csrsi mstatus, MSTATUS_MIE
	nop
	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 5
	li t0, MIP_STIP
	csrc mip, t0
	csrr t1, mip
	andi t1, t1, MIP_SSIP | MIP_STIP | MIP_SEIP
	CHECK t1, 0

	TEST 7          /* vectored mtvec: interrupts at base + 4 * cause, exceptions at base */
	la t0, vectors
	ori t0, t0, 1
	csrw mtvec, t0
	csrr t1, mtvec
	CHECKR t1, t0
	li t5, 0
	li t0, 1
	sw t0, 0(s10)
	li t0, MIP_MSIP
	csrw mie, t0
	EXPECT_TRAP
	csrsi mstatus, MSTATUS_MIE
	nop
	csrci mstatus, MSTATUS_MIE
	CHECK t5, 3                 /* set by vector entry 3 */
	CHECK_CAUSE INTR | 3
	sw zero, 0(s10)
	li t5, 0
	EXPECT_TRAP
	ecall
	CHECK t5, 0x10              /* set by entry 0 */
	CHECK_CAUSE CAUSE_ECALL_M
	la t0, trap_entry
	csrw mtvec, t0

	TEST 8          /* from U-mode, M interrupts are taken even with mstatus.MIE = 0 */
	csrci mstatus, MSTATUS_MIE
	li t0, MSTATUS_MPIE
	csrc mstatus, t0
	li t0, MIP_MSIP
	csrw mie, t0
	ENTER_MODE 0
	EXPECT_TRAP_AT 2f
	li t0, 1
	sw t0, 0(s10)               /* U-mode raises msip itself (bare mode, PMP allows) */
1:	j 1b
2:	sw zero, 0(s10)
	CHECK_CAUSE INTR | 3
	CHECK_FROM 0

	TEST 9          /* an interrupt delegated to S is not taken in M-mode, is taken in S */
	li t0, MIP_SSIP
	csrw mideleg, t0
	csrw mie, t0
	csrs mip, t0
	csrsi mstatus, MSTATUS_MIE
	nop
	nop
	csrci mstatus, MSTATUS_MIE
	ld t0, trap_cause
	li t1, INTR | 1
	beq t0, t1, fail
	sd zero, s_count, t0
	ENTER_MODE 1
	csrsi sstatus, MSTATUS_SIE  /* taken here */
	nop
	ENTER_M
	ld t0, s_count
	CHECK t0, 1
	ld t0, s_cause
	CHECK t0, INTR | 1
	csrr t0, mip
	andi t0, t0, MIP_SSIP
	CHECK t0, 0
	csrw mideleg, zero

	TEST 10         /* wfi returns when an enabled interrupt is pending even with MIE = 0 */
	csrci mstatus, MSTATUS_MIE
	li t0, MIP_MSIP
	csrw mie, t0
	li t0, 1
	sw t0, 0(s10)
	ld s0, trap_count
	wfi
	ld s1, trap_count
	CHECKR s0, s1
	sw zero, 0(s10)
	csrw mie, zero

	TEST 11         /* Sstc: stimecmp drives mip.STIP when menvcfg.STCE = 1 */
	li t0, 1
	slli t0, t0, 63
	csrs menvcfg, t0
	csrr t1, menvcfg
	bgez t1, 9f                 /* no Sstc: skip */
	EXPECT_TRAP                 /* QEMU 7.2's spike has Sstc but no time source: illegal */
	csrw stimecmp, zero
	ld t0, trap_cause
	bgez t0, 8f
	sd zero, trap_expected, t0
	csrr t0, mip
	andi t0, t0, MIP_STIP
	CHECK t0, MIP_STIP
	li t0, -1
	csrw stimecmp, t0
	csrr t0, mip
	andi t0, t0, MIP_STIP
	CHECK t0, 0
	csrwi mcounteren, 2         /* TM: S may read time and write stimecmp */
	li t0, MIP_STIP             /* STI delegated, S programs its own deadline */
	csrw mideleg, t0
	csrw mie, t0
	sd zero, s_count, t0
	li t0, MSTATUS_SPIE         /* (SIE stays 0 in M; set in S below) */
	csrc mstatus, t0
	ENTER_MODE 1
	rdtime t0
	addi t0, t0, 1000           /* 100 us */
	csrw stimecmp, t0
1:	ld t0, s_count              /* SIE = 0 while looking: no wake-up lost before wfi */
	bnez t0, 2f
	wfi                         /* wakes on a pending STI whatever SIE */
	csrsi sstatus, MSTATUS_SIE  /* the trap is taken here */
	csrci sstatus, MSTATUS_SIE
	j 1b
2:	ENTER_M
	ld t0, s_cause
	CHECK t0, INTR | 5
	csrw mideleg, zero
	csrw mie, zero
	csrw mcounteren, zero
	li t0, -1
	csrw stimecmp, t0
8:	li t0, 1
	slli t0, t0, 63
	csrc menvcfg, t0
9:
	TEST 12         /* a timer interrupt arrives in the middle of a busy loop */
	csrci mstatus, MSTATUS_MIE  /* (the mret of ENTER_M may have set it) */
	EXPECT_TRAP                 /* armed first: the deadline may pass before the loop */
	li t0, CLINT_MTIME
	ld a0, 0(t0)
	addi a0, a0, 2000           /* 200 us */
	sd a0, 0(s11)
	li t0, MIP_MTIP
	csrw mie, t0
	li s2, 0
	li s3, 200000000
	csrsi mstatus, MSTATUS_MIE
	li t1, -1
1:	addi s2, s2, 1
	ld t0, trap_cause           /* -1 until the trap */
	beq t0, t1, 2f
	j 3f
2:	bne s2, s3, 1b
	j fail                      /* never came */
3:	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 7
	li t0, -1
	sd t0, 0(s11)

	TEST 13         /* mret that sets MIE with an interrupt pending: taken at the target */
	li t0, 1
	sw t0, 0(s10)
	li t0, MIP_MSIP
	csrw mie, t0
	li t0, MSTATUS_MPP
	csrs mstatus, t0            /* MPP = M */
	li t0, MSTATUS_MPIE
	csrs mstatus, t0
	la t0, 4f
	csrw mepc, t0
	EXPECT_TRAP
	mret
4:	nop
	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 3
	CHECK_EPC 4b
	sw zero, 0(s10)

	TEST 14         /* CLINT registers in 32-bit halves */
	li t0, -1
	sd t0, 0(s11)
	li t1, 0x12345678
	sw t1, 0(s11)               /* mtimecmp low */
	ld t2, 0(s11)
	CHECK t2, 0xffffffff12345678
	li t1, 0x9abcdef0
	sw t1, 4(s11)               /* mtimecmp high */
	ld t2, 0(s11)
	CHECK t2, 0x9abcdef012345678
	lwu t2, 4(s11)
	CHECK t2, 0x9abcdef0
	lw t2, 0(s11)
	CHECK t2, 0x12345678
	li t0, CLINT_MTIME
	ld a0, 0(t0)
	lwu a1, 4(t0)               /* high half of mtime: same or one more */
	srli a2, a0, 32
	bltu a1, a2, fail
	addi a2, a2, 1
	bltu a2, a1, fail
	li t0, -1
	sd t0, 0(s11)
	lw t1, 0(s10)               /* msip reads 0 in bits 31:1 */
	CHECK t1, 0
	li t1, 0xfffffffe           /* only bit 0 is writable */
	sw t1, 0(s10)
	lw t1, 0(s10)
	CHECK t1, 0

	TEST 15         /* wfi in S-mode (TW = 0) is woken by an M timer interrupt, taken to M */
	csrci mstatus, MSTATUS_MIE
	EXPECT_TRAP_AT 2f           /* armed first: the deadline may pass before the wfi */
	li t0, CLINT_MTIME
	ld a0, 0(t0)
	addi a0, a0, 1000
	sd a0, 0(s11)
	li t0, MIP_MTIP
	csrw mie, t0
	ENTER_MODE 1
1:	wfi
	j 1b
2:	CHECK_CAUSE INTR | 7        /* back in M-mode */
	CHECK_FROM 1
	li t0, -1
	sd t0, 0(s11)

	TEST 16         /* an interrupt that became pending while nothing looked (no timer
	                   check since the compare passed) is taken right after the wfi */
	EXPECT_TRAP                 /* QEMU 7.2's spike has no time CSR: illegal, skip */
	rdtime a0
	ld t0, trap_cause
	bgez t0, 9f
	sd zero, trap_expected, t0
	addi a0, a0, 1000           /* 100 us: passes while the hart runs, not inside the store */
	li t0, MIP_MTIP
	csrw mie, t0
	li s4, 0
	EXPECT_TRAP_AT 3f           /* wherever it is taken, the handler resumes at 3 */
	sd a0, 0(s11)
	csrsi mstatus, MSTATUS_MIE
1:	rdtime a1                   /* (a CSR read: no exit to the VMM, no timer check) */
	bltu a1, a0, 1b
	wfi                         /* pending now: a no-op, and the trap comes next */
	li s4, 1                    /* never runs */
	j fail
3:	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 7
	CHECK s4, 0
	li t0, -1
	sd t0, 0(s11)
9:
	j pass

/* Vector table for TEST 7: entry 0 (exceptions) and entry 3 (MSI) mark t5. */
	.balign 64
	.option push
	.option norvc
vectors:
	j vec0
	j trap_entry
	j trap_entry
	j vec3
	j trap_entry
	j trap_entry
	j trap_entry
	j trap_entry
	j trap_entry
	j trap_entry
	j trap_entry
	j trap_entry
vec0:	li t5, 0x10
	j trap_entry
vec3:	li t5, 3
	j trap_entry
	.option pop

/* S-mode handler for TEST 9: records scause, clears sip.SSIP, back. */
	.balign 4
s_handler:
	csrw sscratch, t0
	li t0, ENTER_M_MAGIC
	bne t6, t0, 1f
	csrr t0, sscratch
	ecall
	csrr t5, sepc
	addi t5, t5, 4
	jr t5
1:	la t0, s_cause
	csrr t6, scause
	sd t6, 0(t0)
	ld t6, 8(t0)
	addi t6, t6, 1
	sd t6, 8(t0)
	csrci sip, MIP_SSIP
	csrr t6, scause
	li t0, INTR | 5
	bne t6, t0, 2f              /* STI: push the deadline away (Sstc) */
	li t0, -1
	csrw stimecmp, t0
2:	csrr t0, sepc               /* step over a wfi the interrupt arrived at */
	lhu t6, 0(t0)
	lhu t5, 2(t0)
	slli t5, t5, 16
	or t6, t6, t5
	li t5, 0x10500073
	bne t6, t5, 3f
	addi t0, t0, 4
	csrw sepc, t0
3:	csrr t0, sscratch
	sret

	.data
	.balign 8
s_cause: .dword 0
s_count: .dword 0
