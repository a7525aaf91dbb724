/* Runtime shared by the ISA test programs: reset entry, a recording trap handler, HTIF
 * console and exit.  Linked into every test; the test provides `main` (M-mode, returns
 * nothing: it ends with `j pass` or `j fail`). */
#include "test.h"

#ifndef CRT_LIB_ONLY    /* the differential harness brings its own start and trap handler */
	.section .text.init
	.globl _start
_start:
	/* Harts other than 0 wait until hart 0 stores an entry point in secondary_entry,
	   then call it with a0 = mhartid on a stack of their own (4 KiB below hart 0's). */
	csrr a0, mhartid
	beqz a0, 2f
	la t1, secondary_entry
1:	ld t2, 0(t1)
	beqz t2, 1b
	la sp, stack_top
	slli t3, a0, 12
	sub sp, sp, t3
	li t0, (1 << 13)
	csrs mstatus, t0
	jalr ra, 0(t2)
3:	j 3b
2:	la t0, trap_entry
	csrw mtvec, t0
	la t0, trap_save
	csrw mscratch, t0
	la sp, stack_top
	/* PMP entry 15 covers everything with RWX, so S and U have memory access
	   (privileged spec 3.7.1: with PMP implemented and no entry matching, S/U fail). */
	li t0, -1
	csrw pmpaddr15, t0
	li t0, (0x1f << 56)
	csrw pmpcfg2, t0
	/* FP on, caches of FS state "initial". */
	li t0, (1 << 13)
	csrs mstatus, t0
	csrwi fcsr, 0
	li gp, 0
	j main

	.text
/* Trap handler.  Records mcause/mtval/mepc/previous mode, then:
 *   - an ecall with t6 == ENTER_M_MAGIC returns to M-mode after the ecall, one with
 *     t6 == RESUME_M_MAGIC continues in M-mode at m_resume;
 *   - an expected trap (trap_expected != 0) resumes at trap_resume in M-mode when set,
 *     else skips the trapping instruction (exceptions) or returns to mepc (interrupts;
 *     mie is cleared so the source need not be silenced first, and a wfi at mepc is
 *     stepped over);
 *   - anything else prints the trap and fails with the current subtest number. */
	.balign 4
	.globl trap_entry
trap_entry:
	csrrw t0, mscratch, t0
	sd t1, 0(t0)
	sd t2, 8(t0)
	sd t3, 16(t0)
	csrr t1, mscratch
	sd t1, 24(t0)
	csrw mscratch, t0

	csrr t1, mcause
	li t2, CAUSE_ECALL_U
	bltu t1, t2, 2f
	li t2, CAUSE_ECALL_M
	bgtu t1, t2, 2f
	li t2, RESUME_M_MAGIC
	bne t6, t2, 1f
	/* on to m_resume in M-mode */
	ld t1, m_resume
	csrw mepc, t1
	li t1, MSTATUS_MPP
	csrs mstatus, t1
	j 9f
1:	li t2, ENTER_M_MAGIC
	bne t6, t2, 2f
	/* back to M-mode after the ecall */
	csrr t1, mepc
	addi t1, t1, 4
	csrw mepc, t1
	li t1, MSTATUS_MPP
	csrs mstatus, t1
	j 9f

2:	la t0, trap_cause
	csrr t1, mcause
	sd t1, 0(t0)
	csrr t1, mtval
	sd t1, 8(t0)
	csrr t1, mepc
	sd t1, 16(t0)
	csrr t1, mstatus
	srli t1, t1, 11
	andi t1, t1, 3
	sd t1, 24(t0)
	ld t1, 32(t0)           /* trap_count */
	addi t1, t1, 1
	sd t1, 32(t0)
	ld t1, 40(t0)           /* trap_expected */
	beqz t1, unexpected_trap
	sd zero, 40(t0)
	csrr t1, mcause
	bgez t1, 6f
	csrw mie, zero          /* interrupt: mask them all so it is not taken again */
6:	ld t1, 48(t0)           /* trap_resume */
	beqz t1, 3f
	sd zero, 48(t0)
	csrw mepc, t1
	li t1, MSTATUS_MPP
	csrs mstatus, t1
	j 9f
3:	csrr t1, mcause
	bgez t1, 5f
	/* interrupt: return to mepc, or past it when it is a wfi (mie is now clear, so that
	   wfi would never wake: the interrupt arrived just before the guest went idle) */
	csrr t1, mepc
	lhu t2, 0(t1)
	lhu t3, 2(t1)
	slli t3, t3, 16
	or t2, t2, t3
	li t3, 0x10500073       /* wfi */
	bne t2, t3, 9f
	addi t1, t1, 4
	csrw mepc, t1
	j 9f
5:	csrr t1, mepc
	lhu t2, 0(t1)
	andi t2, t2, 3
	li t3, 3
	addi t1, t1, 2
	bne t2, t3, 4f
	addi t1, t1, 2
4:	csrw mepc, t1
9:	csrr t0, mscratch
	ld t1, 0(t0)
	ld t2, 8(t0)
	ld t3, 16(t0)
	ld t0, 24(t0)
	mret

unexpected_trap:
	la a0, msg_trap
	call puts
	csrr a0, mcause
	call puthex
	la a0, msg_epc
	call puts
	csrr a0, mepc
	call puthex
	la a0, msg_tval
	call puts
	csrr a0, mtval
	call puthex
	li a0, '\n'
	call putchar
	j fail
#endif

/* HTIF console: device 1, command 1, one character.  The host clears tohost once it has
 * taken the request (and answers in fromhost). */
	.globl putchar
putchar:
	la t0, tohost
1:	ld t1, 0(t0)
	bnez t1, 1b
	li t1, (1 << 56) | (1 << 48)
	andi a0, a0, 0xff
	or t1, t1, a0
	sd t1, 0(t0)
2:	ld t1, 0(t0)
	bnez t1, 2b
	la t0, fromhost
	sd zero, 0(t0)
	ret

/* Print the NUL-terminated string at a0. */
	.globl puts
puts:
	addi sp, sp, -16
	sd ra, 0(sp)
	sd s0, 8(sp)
	mv s0, a0
1:	lbu a0, 0(s0)
	beqz a0, 2f
	call putchar
	addi s0, s0, 1
	j 1b
2:	ld ra, 0(sp)
	ld s0, 8(sp)
	addi sp, sp, 16
	ret

/* Print a0 as 16 hex digits. */
	.globl puthex
puthex:
	addi sp, sp, -32
	sd ra, 0(sp)
	sd s0, 8(sp)
	sd s1, 16(sp)
	mv s0, a0
	li s1, 60
1:	srl a0, s0, s1
	andi a0, a0, 15
	addi a0, a0, '0'
	li t0, '9'
	ble a0, t0, 2f
	addi a0, a0, 'a' - '9' - 1
2:	call putchar
	addi s1, s1, -4
	bgez s1, 1b
	ld ra, 0(sp)
	ld s0, 8(sp)
	ld s1, 16(sp)
	addi sp, sp, 32
	ret

	.globl pass
pass:
	la a0, msg_pass
	call puts
	li t1, 1
	la t0, tohost
	sd t1, 0(t0)
1:	j 1b

	.globl fail
fail:
	mv s0, gp
	la a0, msg_fail
	call puts
	mv a0, s0
	call puthex
	li a0, '\n'
	call putchar
	slli t1, s0, 1
	ori t1, t1, 1
	la t0, tohost
	sd t1, 0(t0)
1:	j 1b

	.section .rodata
msg_trap: .asciz "unexpected trap: mcause="
msg_epc:  .asciz " mepc="
msg_tval: .asciz " mtval="
msg_pass: .asciz "PASS\n"
msg_fail: .asciz "FAIL subtest "

	.section .tohost, "aw", @progbits
	.balign 64
	.globl tohost
	.type tohost, @object
	.size tohost, 8
tohost: .dword 0
	.balign 64
	.globl fromhost
	.type fromhost, @object
	.size fromhost, 8
fromhost: .dword 0

	.data
	.balign 8
	.globl trap_cause, trap_tval, trap_epc, trap_mpp, trap_count, trap_expected, trap_resume
trap_cause:    .dword 0     /* +0  */
trap_tval:     .dword 0     /* +8  */
trap_epc:      .dword 0     /* +16 */
trap_mpp:      .dword 0     /* +24 */
trap_count:    .dword 0     /* +32 */
trap_expected: .dword 0     /* +40 */
trap_resume:   .dword 0     /* +48 */
trap_save:     .dword 0, 0, 0, 0
	.globl m_resume
m_resume:      .dword 0
	.globl secondary_entry
secondary_entry: .dword 0

	.bss
	.balign 16
	.space 16384
	.globl stack_top
stack_top:
