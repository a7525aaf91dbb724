/* Sdtrig (debug spec 1.0) triggers from M-mode software: tselect/tinfo/tdata enumeration,
 * WARL read-backs of mcontrol (type 2) and mcontrol6 (type 6), execute triggers in S and U,
 * load/store/AMO triggers, privilege filtering, cause/epc/tval of the breakpoint exception,
 * and, where tcontrol exists, M-mode triggers gated by tcontrol.mte.
 *
 * Accepted both ways: mtval of a trigger's breakpoint is 0 or the address (QEMU 7.2 gives
 * 0); `hit` may be unimplemented (read-only 0, as in QEMU 7.2); tcontrol may be absent
 * (QEMU 7.2), in which case no M-mode trigger is armed; match 2/3 (>=, <) may read back
 * as 0.  What the spec requires and QEMU 7.2 does not do is in spec_strict. */
#include "test.h"

#define TYPE2       (2 << 60)
#define TYPE6       (6 << 60)
#define T_LOAD      (1 << 0)
#define T_STORE     (1 << 1)
#define T_EXEC      (1 << 2)
#define T_U         (1 << 3)
#define T_S         (1 << 4)
#define T_M         (1 << 6)
#define T_MATCH(m)  ((m) << 7)
#define T_CHAIN     (1 << 11)
#define T_ACTION(a) ((a) << 12)
#define T2_SIZELO(s) ((s) << 16)
#define T2_TIMING   (1 << 18)
#define T2_SELECT   (1 << 19)
#define T2_HIT      (1 << 20)
#define T2_SIZEHI(s) ((s) << 21)
#define T2_MASKMAX  (0x3f << 53)
#define T6_SIZE(s)  ((s) << 16)
#define T6_HIT      (1 << 22)
#define DMODE       (1 << 59)
#define TCONTROL_MTE  (1 << 3)
#define TCONTROL_MPTE (1 << 7)

/* tselect = n; tdata1 = disarmed type 2; tdata2 = address of `label` */
.macro ARM n, label, ctl
	li t0, \n
	csrw tselect, t0
	li t0, TYPE2
	csrw tdata1, t0
	la t0, \label
	csrw tdata2, t0
	li t0, \ctl
	csrw tdata1, t0
.endm

.macro DISARM n
	li t0, \n
	csrw tselect, t0
	li t0, TYPE2
	csrw tdata1, t0
	csrw tdata2, zero
.endm

/* Call target_fn (its first instruction adds 1 to a0) and fail unless the trigger on it
 * fired (a0 unchanged, breakpoint at target_fn from `mode`) or did not (a0 + 1). */
.macro CALL_FIRES mode
	li a0, 0
	EXPECT_TRAP
	call target_fn
	CHECK a0, 0
	CHECK_CAUSE CAUSE_BREAKPOINT
	CHECK_EPC target_fn
	CHECK_FROM \mode
	la t0, target_fn
	call check_tval
.endm

.macro CALL_QUIET
	li a0, 0
	call target_fn
	CHECK a0, 1
.endm

	.text
	.globl main
main:
	TEST 1          /* two triggers, both mcontrol with nothing armed at reset; tselect
	                   keeps its value when written past the last; tinfo lists 2 and 6 */
	csrw tselect, zero
	csrr a0, tselect
	CHECK a0, 0
	csrr a0, tdata1
	CHECK a0, TYPE2
	csrr a0, tdata2
	CHECK a0, 0
	csrr a0, tinfo
	andi a0, a0, (1 << 2) | (1 << 6)
	CHECK a0, (1 << 2) | (1 << 6)
	li t0, 1
	csrw tselect, t0
	csrr a0, tselect
	CHECK a0, 1
	csrr a0, tdata1
	CHECK a0, TYPE2
	csrr a0, tdata2
	CHECK a0, 0
	li t0, 2
	csrw tselect, t0
	csrr a0, tselect
	CHECK a0, 1
	csrr a0, tinfo
	andi a0, a0, (1 << 2) | (1 << 6)
	CHECK a0, (1 << 2) | (1 << 6)
	li t0, 1 << 62
	csrw tselect, t0
	csrr a0, tselect
	CHECK a0, 1
	csrw tselect, zero
	li t0, 0x12345678           /* tdata2 is the full address */
	csrw tdata2, t0
	csrr a0, tdata2
	CHECK a0, 0x12345678
	csrw tdata2, zero

	TEST 2          /* mcontrol WARL: dmode, chain, action, timing, select, maskmax read 0
	                   (no debug mode, no chaining, breakpoint exception only, before,
	                   address); napot match (1) is not kept; s/u/m/execute are */
	li t0, TYPE2 | DMODE | T2_MASKMAX | T2_SELECT | T2_TIMING | T_ACTION(1) | T_CHAIN | T_MATCH(1) | T_M | T_S | T_U | T_EXEC
	csrw tdata1, t0
	csrr a0, tdata1
	CHECK a0, TYPE2 | T_M | T_S | T_U | T_EXEC
	li t0, TYPE2 | T2_SIZELO(3) | T_LOAD | T_S    /* 32-bit accesses */
	csrw tdata1, t0
	csrr a0, tdata1
	CHECK a0, TYPE2 | T2_SIZELO(3) | T_LOAD | T_S
	li t0, TYPE2 | T2_SIZEHI(1) | T2_SIZELO(1) | T_LOAD | T_S /* 64-bit */
	csrw tdata1, t0
	csrr a0, tdata1
	CHECK a0, TYPE2 | T2_SIZEHI(1) | T2_SIZELO(1) | T_LOAD | T_S
	li t0, TYPE2 | T2_SIZEHI(1) | T_STORE | T_U   /* 48-bit: unsupported, any size */
	csrw tdata1, t0
	csrr a0, tdata1
	CHECK a0, TYPE2 | T_STORE | T_U
	li t0, TYPE2 | T_ACTION(1) | T_STORE | T_U    /* action 1 (debug mode): 0 */
	csrw tdata1, t0
	csrr a0, tdata1
	CHECK a0, TYPE2 | T_STORE | T_U
	li t0, TYPE2
	csrw tdata1, t0

	TEST 3          /* mcontrol6 WARL: the same, with its 4-bit size field */
	li t0, TYPE6 | DMODE | T6_SIZE(5) | T_ACTION(1) | T_CHAIN | T_MATCH(1) | T_M | T_S | T_U | T_EXEC
	csrw tdata1, t0
	csrr a0, tdata1
	CHECK a0, TYPE6 | T6_SIZE(5) | T_M | T_S | T_U | T_EXEC
	li t0, TYPE6 | T6_SIZE(6) | T_LOAD | T_STORE | T_U  /* 80-bit: any size */
	csrw tdata1, t0
	csrr a0, tdata1
	CHECK a0, TYPE6 | T_LOAD | T_STORE | T_U
	li t0, TYPE2
	csrw tdata1, t0
	csrr a0, tdata1
	CHECK a0, TYPE2

	TEST 4          /* a type that is not supported is never kept (icount, 3) */
	li t0, (3 << 60) | (1 << 10) | T_M | T_S | T_U
	csrw tdata1, t0
	csrr a0, tdata1
	srli a0, a0, 60
	li t1, 3
	beq a0, t1, fail
	li t0, TYPE2
	csrw tdata1, t0
	csrr a0, tdata1
	CHECK a0, TYPE2

	TEST 5          /* an execute trigger for S fires before the instruction in S-mode
	                   only: cause 3, epc = the instruction, which has not run */
	ARM 0, target_fn, TYPE2 | T_EXEC | T_S
	ENTER_MODE 1
	CALL_FIRES 1
	ENTER_M
	call check_hit
	ENTER_MODE 0
	CALL_QUIET
	ENTER_M
	CALL_QUIET
	ld s0, trap_count           /* other addresses do not fire */
	ENTER_MODE 1
	call other_fn
	ENTER_M
	ld s1, trap_count
	CHECKR s0, s1

	TEST 6          /* the same trigger on the second slot, for U-mode, as mcontrol6 */
	DISARM 0
	ARM 1, target_fn, TYPE6 | T_EXEC | T_U
	ENTER_MODE 0
	CALL_FIRES 0
	ENTER_M
	ENTER_MODE 1
	CALL_QUIET
	ENTER_M
	CALL_QUIET
	li t0, TYPE6 | T_EXEC | T_U | T_S   /* both modes */
	csrw tdata1, t0
	ENTER_MODE 1
	CALL_FIRES 1
	ENTER_M
	ENTER_MODE 0
	CALL_FIRES 0
	ENTER_M
	li t0, TYPE6 | T_EXEC               /* no mode bit: never */
	csrw tdata1, t0
	ENTER_MODE 1
	CALL_QUIET
	ENTER_M
	DISARM 1

	TEST 7          /* a load trigger fires before the load, in S-mode, also on a page
	                   the data TLB already holds; stores and other addresses do not */
	la s0, data
	ENTER_MODE 1
	ld a1, 16(s0)               /* the page is in the TLB */
	ld a1, 16(s0)
	ENTER_M
	ARM 0, data, TYPE2 | T_LOAD | T_S | T_U
	ENTER_MODE 1
	li a1, 0x77
	EXPECT_TRAP
1:	ld a1, 0(s0)
	ENTER_M
	CHECK a1, 0x77
	CHECK_CAUSE CAUSE_BREAKPOINT
	CHECK_EPC 1b
	CHECK_FROM 1
	la t0, data
	call check_tval
	call check_hit
	ld s1, trap_count
	ENTER_MODE 1
	li t0, 0x55
	sd t0, 0(s0)                /* a store: not watched */
	ld a1, 8(s0)                /* another address */
	ld a1, 16(s0)
	lw a1, 32(s0)
	ENTER_M
	ld s2, trap_count
	CHECKR s1, s2
	ld a0, data
	CHECK a0, 0x55
	ENTER_MODE 0                /* U too, any width */
	li a1, 0x77
	EXPECT_TRAP
	lbu a1, 0(s0)
	ENTER_M
	CHECK a1, 0x77
	CHECK_CAUSE CAUSE_BREAKPOINT
	CHECK_FROM 0
	ENTER_MODE 0                /* an AMO loads too */
	li a1, 0x77
	EXPECT_TRAP
1:	amoor.d a1, a1, (s0)
	ENTER_M
	CHECK a1, 0x77
	CHECK_CAUSE CAUSE_BREAKPOINT
	CHECK_EPC 1b
	ld a1, data
	CHECK a1, 0x55
	lb a1, 0(s0)                /* M-mode is not enabled */
	CHECK a1, 0x55
	DISARM 0

	TEST 8          /* a store trigger (mcontrol6) fires before stores and AMOs in U-mode;
	                   the memory keeps its value */
	ARM 1, data, TYPE6 | T_STORE | T_U
	la s0, data
	sd zero, 0(s0)
	ENTER_MODE 0
	li t0, 0x99
	EXPECT_TRAP
1:	sd t0, 0(s0)
	ENTER_M
	CHECK_CAUSE CAUSE_BREAKPOINT
	CHECK_EPC 1b
	CHECK_FROM 0
	la t0, data
	call check_tval
	ENTER_MODE 0
	li t0, 0x99
	EXPECT_TRAP
	sw t0, 0(s0)
	ENTER_M
	CHECK_CAUSE CAUSE_BREAKPOINT
	ENTER_MODE 0
	li t0, 0x99
	EXPECT_TRAP
1:	amoadd.d a0, t0, (s0)
	ENTER_M
	CHECK_CAUSE CAUSE_BREAKPOINT
	CHECK_EPC 1b
	ld a0, data
	CHECK a0, 0
	ld s1, trap_count
	ENTER_MODE 0
	ld a1, 0(s0)                /* loads are not watched */
	sd t0, 8(s0)                /* nor other addresses */
	ENTER_M
	ld s2, trap_count
	CHECKR s1, s2
	ENTER_MODE 1                /* nor S-mode */
	sd t0, 0(s0)
	ENTER_M
	ld a0, data
	CHECK a0, 0x99
	DISARM 1

	TEST 9          /* size: a 32-bit load trigger fires on a 32-bit load at its address */
	ARM 0, data, TYPE2 | T2_SIZELO(3) | T_LOAD | T_S
	la s0, data
	ENTER_MODE 1
	EXPECT_TRAP
	lw a1, 0(s0)
	ENTER_M
	CHECK_CAUSE CAUSE_BREAKPOINT
	ld s1, trap_count
	ENTER_MODE 1
	lw a1, 8(s0)
	ENTER_M
	ld s2, trap_count
	CHECKR s1, s2
	DISARM 0

	TEST 10         /* both triggers at once: each fires for its own address */
	ARM 0, target_fn, TYPE2 | T_EXEC | T_S
	ARM 1, data, TYPE2 | T_STORE | T_S
	la s0, data
	ENTER_MODE 1
	CALL_FIRES 1
	EXPECT_TRAP
1:	sd zero, 0(s0)
	ENTER_M
	CHECK_EPC 1b
	DISARM 0
	DISARM 1

	TEST 11         /* match 2 (>=) and 3 (<) when kept: loads at or above / below tdata2 */
	csrw tselect, zero
	la t0, data + 64
	csrw tdata2, t0
	li t0, TYPE2 | T_MATCH(2) | T_LOAD | T_S
	csrw tdata1, t0
	csrr a0, tdata1
	li t1, TYPE2 | T_LOAD | T_S
	beq a0, t1, 2f              /* not kept: match 0 */
	CHECKR a0, t0
	la s0, data
	ld s1, trap_count
	ENTER_MODE 1
	ld a1, 0(s0)
	ld a1, 56(s0)
	ENTER_M
	ld s2, trap_count
	CHECKR s1, s2
	ENTER_MODE 1
	EXPECT_TRAP
	ld a1, 64(s0)
	EXPECT_TRAP
	ld a1, 128(s0)
	ENTER_M
	CHECK_CAUSE CAUSE_BREAKPOINT
	addi s1, s1, 2
	ld s2, trap_count
	CHECKR s1, s2
	li t0, TYPE2 | T_MATCH(3) | T_LOAD | T_S
	csrw tdata1, t0
	ENTER_MODE 1
	EXPECT_TRAP
	ld a1, 56(s0)
	ENTER_M
	CHECK_CAUSE CAUSE_BREAKPOINT
	la t0, data + 56
	call check_tval
2:	DISARM 0

	TEST 12         /* tcontrol, when present: M-mode triggers fire only with mte = 1; a
	                   trap into M-mode moves mte to mpte and clears it, mret restores it */
	EXPECT_TRAP
	csrr a0, tcontrol
	ld t0, trap_cause
	li t1, -1
	bne t0, t1, 9f              /* no tcontrol (QEMU 7.2): no M-mode triggers armed */
	sd zero, trap_expected, t0
	CHECK a0, 0
	ARM 0, target_fn, TYPE2 | T_EXEC | T_M
	CALL_QUIET                  /* mte = 0 */
	csrwi tcontrol, TCONTROL_MTE
	csrr a0, tcontrol
	CHECK a0, TCONTROL_MTE
	CALL_FIRES 3
	csrr a0, tcontrol           /* mpte = 1 by the trap, mte = 1 again by its mret */
	CHECK a0, TCONTROL_MTE | TCONTROL_MPTE
	ARM 0, data, TYPE2 | T_LOAD | T_M
	la s0, data
	li a1, 0x77
	EXPECT_TRAP
1:	ld a1, 0(s0)
	CHECK a1, 0x77
	CHECK_EPC 1b
	CHECK_FROM 3
	li t0, TCONTROL_MPTE   /* mte = 0: quiet */
	csrw tcontrol, t0
	ld a1, 0(s0)
	CHECK a1, 0x99
	DISARM 0
	ARM 0, trap_entry, TYPE2 | T_EXEC | T_M  /* the handler runs with mte = 0 */
	csrwi tcontrol, TCONTROL_MTE
	EXPECT_TRAP
	ebreak
	CHECK_CAUSE CAUSE_BREAKPOINT
	csrr a0, tcontrol
	CHECK a0, TCONTROL_MTE | TCONTROL_MPTE
	li t0, TCONTROL_MPTE   /* mret: mte = mpte */
	csrw tcontrol, t0
	la t0, 1f
	csrw mepc, t0
	li t0, MSTATUS_MPP
	csrs mstatus, t0
	mret
1:	csrr a0, tcontrol
	CHECK a0, TCONTROL_MTE | TCONTROL_MPTE
	csrwi tcontrol, 0
	DISARM 0
9:
	j pass

/* Fail unless the last trap's tval is 0 or t0. */
check_tval:
	ld t1, trap_tval
	beqz t1, 1f
	bne t1, t0, fail
1:	ret

/* Fail unless the selected trigger's hit bit is set, or hit is not implemented
 * (it stays 0 when written); clears it. */
check_hit:
	csrr t0, tdata1
	srli t1, t0, 60
	li t2, T2_HIT
	li t3, 2
	beq t1, t3, 1f
	li t2, T6_HIT
1:	and t1, t0, t2
	bnez t1, 2f
	or t1, t0, t2
	csrw tdata1, t1
	csrr t1, tdata1
	and t1, t1, t2
	bnez t1, fail
2:	not t2, t2
	and t0, t0, t2
	csrw tdata1, t0
	ret

	.balign 4
target_fn:
	addi a0, a0, 1
	ret
other_fn:
	addi a0, a0, 1
	ret

	.data
	.balign 4096
data:	.fill 32, 8, 0
