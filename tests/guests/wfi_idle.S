/* An idle guest: WFI until a machine timer interrupt two seconds (20 M ticks of the 10 MHz
 * CLINT) away.  test_isa.py also checks that kvmpy sleeps meanwhile instead of spinning. */
#include "test.h"

	.text
	.globl main
main:
	TEST 1
	li s0, CLINT_MTIME
	li s1, CLINT_MTIMECMP
	ld s2, 0(s0)
	li t0, 20000000
	add s2, s2, t0
	sd s2, 0(s1)
	li t0, 1 << 7
	csrw mie, t0
	li s3, 0                    /* wfi wake-ups */
	EXPECT_TRAP_AT 2f           /* the handler resumes at 2 (it masks mie: no wfi after) */
	csrsi mstatus, MSTATUS_MIE
1:	wfi
	addi s3, s3, 1
	j 1b
2:	csrci mstatus, MSTATUS_MIE
	CHECK_CAUSE INTR | 7
	TEST 2          /* not early */
	ld t0, 0(s0)
	bltu t0, s2, fail
	li t0, -1
	sd t0, 0(s1)
	j pass
