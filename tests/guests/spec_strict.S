/* Behaviour the specifications fix but QEMU 7.2 gets wrong, so this program fails on
 * qemu-system-riscv64 7.2 (at subtest 1) and must pass on kvmpy.  Each subtest names the
 * QEMU behaviour it rules out. */
#include "test.h"

#define MIP_SSIP (1 << 1)
#define MIP_MSIP (1 << 3)
#define MIP_STIP (1 << 5)
#define MIP_MTIP (1 << 7)
#define MIP_SEIP (1 << 9)

/* Enable the interrupts in `bits` (already pending), open MIE for one instruction and
 * fail unless the one taken has cause `cause`. */
.macro TAKE_ONE bits, cause
	li t0, \bits
	csrw mie, t0
	EXPECT_TRAP
	csrsi mstatus, MSTATUS_MIE
	nop
	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | \cause
.endm

	.text
	.globl main
main:
	li s10, CLINT_MSIP
	li s11, CLINT_MTIMECMP
	li t0, -1
	sd t0, 0(s11)

	TEST 1          /* priority across levels: MEI > MSI > MTI > SEI > SSI > STI
	                   (privileged spec 3.1.9); QEMU 7.2 without AIA takes the
	                   lowest-numbered pending interrupt */
	li t0, 1
	sw t0, 0(s10)
	li t0, MIP_SSIP
	csrs mip, t0
	TAKE_ONE MIP_MSIP | MIP_SSIP, 3
	sw zero, 0(s10)
	sd zero, 0(s11)
	li t0, MIP_STIP
	csrs mip, t0
	TAKE_ONE MIP_MTIP | MIP_STIP, 7
	TAKE_ONE MIP_MTIP | MIP_SSIP, 7
	li t0, -1
	sd t0, 0(s11)
	li t0, MIP_SEIP
	csrs mip, t0
	TAKE_ONE MIP_SEIP | MIP_SSIP | MIP_STIP, 9
	li t0, MIP_SEIP | MIP_SSIP | MIP_STIP
	csrc mip, t0
	csrw mie, zero

	TEST 2          /* ctzw looks at the low word only (Zbb): 32 when it is zero;
	                   QEMU 7.2 counts into the upper word */
	li a0, 0x0000100000000000
	ctzw a1, a0
	CHECK a1, 32

	TEST 3          /* a misaligned AMO raises a store/AMO exception (A spec 8.4):
	                   address-misaligned or access fault, never a load cause */
	la s0, buf
	addi s1, s0, 2
	EXPECT_TRAP
	amoor.w a0, a0, (s1)
	ld t0, trap_cause
	li t1, CAUSE_MISALIGNED_STORE
	beq t0, t1, 1f
	CHECK_CAUSE CAUSE_STORE_ACCESS
1:	CHECK_TVAL_R s1

	TEST 4          /* an AMO where nothing is mapped is a store/AMO access fault */
	li s1, 0x40000000
	EXPECT_TRAP
	amoadd.d a0, a0, (s1)
	CHECK_CAUSE CAUSE_STORE_ACCESS

	TEST 5          /* mepc[0] is always zero (privileged spec 3.1.14) */
	csrr s2, mepc
	li t0, 0x80001235
	csrw mepc, t0
	csrr t1, mepc
	CHECK t1, 0x80001234
	csrw mepc, s2

	TEST 6          /* minstret counts retired instructions exactly (QEMU 7.2 without
	                   -icount counts host ticks): 10 nops + the first csrr = 11 */
	csrr s0, minstret
	nop
	nop
	nop
	nop
	nop
	nop
	nop
	nop
	nop
	nop
	csrr s1, minstret
	sub t0, s1, s0
	CHECK t0, 11
	rdinstret s0                /* the unprivileged alias too */
	addi zero, zero, 0
	rdinstret s1
	sub t0, s1, s0
	CHECK t0, 2

	TEST 7          /* a write to minstret is done instead of the writing instruction's
	                   increment: the next instruction reads exactly the value written
	                   (Zicsr, "CSR Instructions"); QEMU 7.2 reads the value + 1 even
	                   with -icount (host ticks later without) */
	li t0, 1000000
	csrw minstret, t0
	csrr a0, minstret
	CHECKR a0, t0
	li t0, 2000000
	csrrw a1, minstret, t0
	rdinstret a0
	CHECKR a0, t0

	TEST 8          /* an inhibited counter holds exactly the value written to it, and the
	                   aliases read it too (privileged spec 3.1.13); QEMU 7.2 stops it only
	                   until it was first uninhibited (test 5 of csr_counters passes there,
	                   this one does not: counter->started is never cleared) */
	li t0, 5
	csrw mcountinhibit, t0
	li t0, 0x123456789
	csrw minstret, t0
	csrr a0, minstret
	CHECKR a0, t0
	rdinstret a0
	CHECKR a0, t0
	li t1, 0x987654321
	csrw mcycle, t1
	nop
	csrr a0, mcycle
	CHECKR a0, t1
	rdcycle a0
	CHECKR a0, t1
	csrr a0, minstret
	CHECKR a0, t0
	csrw mcountinhibit, zero    /* counting resumes from the values held */
	nop
	csrr a0, minstret
	bleu a0, t0, fail
	li t2, 0x10000
	add t2, t2, t0
	bgeu a0, t2, fail

	TEST 9          /* mcountinhibit bit 1 (there is no time bit) is read-only zero
	                   (privileged spec 3.1.13); QEMU 7.2 keeps every bit written */
	li t0, 2
	csrw mcountinhibit, t0
	csrr a0, mcountinhibit
	andi a0, a0, 2
	CHECK a0, 0
	csrw mcountinhibit, zero
	TEST 10         /* writing 0 to tdata1 disables the trigger (debug spec 1.0, tdata1);
	                   QEMU 7.2 ignores the write and the trigger stays armed */
	csrw tselect, zero
	la t0, trig_fn
	csrw tdata2, t0
	li t0, (2 << 60) | (1 << 2) | (1 << 4)     /* mcontrol, execute, S */
	csrw tdata1, t0
	csrw tdata1, zero
	ENTER_MODE 1
	li a0, 0
	call trig_fn
	ENTER_M
	CHECK a0, 1

	TEST 11         /* mcontrol size 32-bit matches 32-bit accesses only (debug spec,
	                   mcontrol.size); QEMU 7.2 watches 4 bytes, so a 64-bit load of
	                   them fires too */
	li t0, 2 << 60
	csrw tdata1, t0
	la s0, buf
	csrw tdata2, s0
	li t0, (2 << 60) | (3 << 16) | (1 << 4) | 1  /* mcontrol, 32-bit, S, load */
	csrw tdata1, t0
	ld s1, trap_count
	ENTER_MODE 1
	ld a1, 0(s0)
	ENTER_M
	ld s2, trap_count
	CHECKR s1, s2
	ENTER_MODE 1
	EXPECT_TRAP
	lw a1, 0(s0)
	ENTER_M
	CHECK_CAUSE CAUSE_BREAKPOINT
	li t0, 2 << 60
	csrw tdata1, t0
	csrw tdata2, zero

	j pass

trig_fn:
	addi a0, a0, 1
	ret

	.data
	.balign 8
buf:	.dword 0, 0
