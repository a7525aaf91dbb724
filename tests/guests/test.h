/* Shared macros of the ISA test programs (see crt.S for the runtime they rely on).
 *
 * Conventions: gp holds the current subtest number, which is the failure code reported
 * through HTIF; t5 and t6 are scratch registers of these macros; tests start at `main`
 * in M-mode with mtvec pointing at the runtime's trap handler. */
#ifndef TEST_H
#define TEST_H

#define ENTER_M_MAGIC 0x454e544552     /* t6 value that marks the "back to M-mode" ecall */
#define RESUME_M_MAGIC 0x524553554d    /* t6 value of the "resume at m_resume in M-mode" ecall */

#define MSTATUS_SIE   (1 << 1)
#define MSTATUS_MIE   (1 << 3)
#define MSTATUS_SPIE  (1 << 5)
#define MSTATUS_MPIE  (1 << 7)
#define MSTATUS_SPP   (1 << 8)
#define MSTATUS_MPP   (3 << 11)
#define MSTATUS_FS    (3 << 13)
#define MSTATUS_MPRV  (1 << 17)
#define MSTATUS_SUM   (1 << 18)
#define MSTATUS_MXR   (1 << 19)
#define MSTATUS_TVM   (1 << 20)
#define MSTATUS_TW    (1 << 21)
#define MSTATUS_TSR   (1 << 22)

#define CAUSE_MISALIGNED_FETCH 0
#define CAUSE_FETCH_ACCESS     1
#define CAUSE_ILLEGAL          2
#define CAUSE_BREAKPOINT       3
#define CAUSE_MISALIGNED_LOAD  4
#define CAUSE_LOAD_ACCESS      5
#define CAUSE_MISALIGNED_STORE 6
#define CAUSE_STORE_ACCESS     7
#define CAUSE_ECALL_U          8
#define CAUSE_ECALL_S          9
#define CAUSE_ECALL_M          11
#define CAUSE_FETCH_PAGE       12
#define CAUSE_LOAD_PAGE        13
#define CAUSE_STORE_PAGE       15
#define INTR                   (1 << 63)

#define CLINT_MSIP      0x2000000
#define CLINT_MTIMECMP  0x2004000
#define CLINT_MTIME     0x200bff8

/* Start subtest n: its number is the failure code from here on. */
.macro TEST n
	li gp, \n
.endm

/* Fail unless reg == 64-bit constant val. */
.macro CHECK reg, val
	li t6, \val
	bne \reg, t6, fail
.endm

/* Fail unless the two registers are equal. */
.macro CHECKR ra, rb
	bne \ra, \rb, fail
.endm

/* The next instruction is expected to trap; the handler skips it (pc + its length) and
 * returns to the privilege mode it came from. */
.macro EXPECT_TRAP
	li t6, -1
	sd t6, trap_cause, t5
	li t6, 1
	sd t6, trap_expected, t5
.endm

/* The next trap is expected; the handler resumes at `label` in M-mode. */
.macro EXPECT_TRAP_AT label
	li t6, -1
	sd t6, trap_cause, t5
	li t6, 1
	sd t6, trap_expected, t5
	la t6, \label
	sd t6, trap_resume, t5
.endm

/* Fail unless the last trap had this mcause. */
.macro CHECK_CAUSE cause
	ld t6, trap_cause
	li t5, \cause
	bne t6, t5, fail
.endm

/* Fail unless the last trap's mtval equals reg. */
.macro CHECK_TVAL_R reg
	ld t6, trap_tval
	bne t6, \reg, fail
.endm

.macro CHECK_TVAL val
	ld t6, trap_tval
	li t5, \val
	bne t6, t5, fail
.endm

/* Fail unless the last trap's mepc equals the address of `label`. */
.macro CHECK_EPC label
	ld t6, trap_epc
	la t5, \label
	bne t6, t5, fail
.endm

/* Fail unless the last trap came from privilege mode `mode` (mstatus.MPP at trap time). */
.macro CHECK_FROM mode
	ld t6, trap_mpp
	li t5, \mode
	bne t6, t5, fail
.endm

/* Continue at the next instruction in privilege `mode` (0 U, 1 S), from M-mode. */
.macro ENTER_MODE mode
	li t6, MSTATUS_MPP
	csrc mstatus, t6
	li t6, (\mode << 11)
	csrs mstatus, t6
	la t6, .Lenter_mode\@
	csrw mepc, t6
	mret
.Lenter_mode\@:
.endm

/* From U- or S-mode: continue at the next instruction in M-mode (an ecall the runtime's
 * handler recognises by t6). */
.macro ENTER_M
	li t6, ENTER_M_MAGIC
	ecall
.endm

/* From U- or S-mode code that may not run in M-mode (e.g. at a virtual address):
 * continue in M-mode at the address stored in m_resume. */
.macro RESUME_M
	li t6, RESUME_M_MAGIC
	ecall
.endm

/* Set the M-mode address where RESUME_M continues. */
.macro SET_M_RESUME label
	la t6, \label
	sd t6, m_resume, t5
.endm

#endif
