/* Physical memory protection: NA4, NAPOT and TOR entries, priority of the lowest entry,
 * enforcement for S and U and not for M, fetch faults, the lock bit (also binding M and
 * freezing the entry). */
#include "test.h"

#define PMP_R 0x01
#define PMP_W 0x02
#define PMP_X 0x04
#define PMP_TOR   0x08
#define PMP_NA4   0x10
#define PMP_NAPOT 0x18
#define PMP_L 0x80

	.text
	.globl main
main:
	la s0, region               /* D: 4 pages, 4 KiB aligned */
	srli t0, s0, 2
	csrw pmpaddr0, t0           /* entry 0: NA4 at D, R */
	li t1, 0x1000
	add t1, s0, t1
	srli t1, t1, 2
	ori t1, t1, 0x1ff
	csrw pmpaddr1, t1           /* entry 1: NAPOT D+4K, 4 KiB, no access */
	li t1, 0x2000
	add t1, s0, t1
	srli t1, t1, 2
	csrw pmpaddr2, t1           /* entry 2: OFF, the bottom of entry 3 */
	li t1, 0x3000
	add t1, s0, t1
	srli t1, t1, 2
	csrw pmpaddr3, t1           /* entry 3: TOR [D+8K, D+12K), X only */
	li t0, (PMP_NA4 | PMP_R) | (PMP_NAPOT << 8) | ((PMP_TOR | PMP_X) << 24)
	csrw pmpcfg0, t0
	li s1, 0x1000
	add s1, s0, s1
	li s2, 0x2000
	add s2, s0, s2
	li s3, 0x3000
	add s3, s0, s3

	TEST 1          /* the registers read back */
	csrr t1, pmpcfg0
	CHECKR t1, t0
	csrr t1, pmpaddr0
	srli t2, s0, 2
	CHECKR t1, t2
	csrr t1, pmpaddr1
	srli t2, s1, 2
	ori t2, t2, 0x1ff
	CHECKR t1, t2

	TEST 2          /* S-mode: NA4 read-only word, its neighbour falls through to entry 15 */
	ENTER_MODE 1
	lw a0, 0(s0)
	EXPECT_TRAP
	sw a0, 0(s0)
	CHECK_CAUSE CAUSE_STORE_ACCESS
	CHECK_TVAL_R s0
	CHECK_FROM 1
	EXPECT_TRAP
	sb a0, 3(s0)
	CHECK_CAUSE CAUSE_STORE_ACCESS
	sw a0, 4(s0)
	lw a0, 4(s0)

	TEST 3          /* NAPOT with no permission: loads, stores, AMOs fault */
	EXPECT_TRAP
	ld a0, 0(s1)
	CHECK_CAUSE CAUSE_LOAD_ACCESS
	CHECK_TVAL_R s1
	li s4, 0xff8
	add s4, s4, s1
	EXPECT_TRAP
	sd a0, 0(s4)                /* last dword of the region */
	CHECK_CAUSE CAUSE_STORE_ACCESS
	CHECK_TVAL_R s4
	EXPECT_TRAP
	amoswap.w a0, a0, (s1)
	ld t0, trap_cause           /* store/AMO fault (QEMU 7.2: load fault) */
	li t1, CAUSE_LOAD_ACCESS
	beq t0, t1, 1f
	CHECK_CAUSE CAUSE_STORE_ACCESS
1:
	TEST 4          /* TOR execute-only: data accesses fault, its top bound is exclusive */
	EXPECT_TRAP
	ld a0, 0(s2)
	CHECK_CAUSE CAUSE_LOAD_ACCESS
	li s4, 0xff8
	add s4, s4, s2
	EXPECT_TRAP
	ld a0, 0(s4)
	CHECK_CAUSE CAUSE_LOAD_ACCESS
	ld a0, 0(s3)
	sd a0, 0(s3)

	TEST 5          /* fetch from a region without X: instruction access fault */
	EXPECT_TRAP_AT 1f
	jalr ra, 0(s1)
1:	CHECK_CAUSE CAUSE_FETCH_ACCESS
	CHECK_TVAL_R s1
	CHECK_FROM 1

	TEST 6          /* U-mode is checked the same way */
	ENTER_MODE 0
	EXPECT_TRAP
	sw a0, 0(s0)
	EXPECT_TRAP
	lw a0, 0(s1)
	ENTER_M
	CHECK_CAUSE CAUSE_LOAD_ACCESS
	CHECK_FROM 0

	TEST 7          /* M-mode ignores unlocked entries */
	li a0, 0x12345678
	sw a0, 0(s0)
	lw a1, 0(s0)
	CHECKR a0, a1
	sd a0, 0(s1)
	sd a0, 0(s2)

	TEST 8          /* changing an entry takes effect at once */
	li t0, 0xff << 8
	csrc pmpcfg0, t0
	li t0, (PMP_NAPOT | PMP_R | PMP_W) << 8
	csrs pmpcfg0, t0
	ENTER_MODE 1
	ld a0, 0(s1)
	CHECK a0, 0x12345678
	ENTER_M

	TEST 9          /* lock: binds M-mode too, and the entry can no longer change */
	li t0, PMP_L
	csrs pmpcfg0, t0
	lw a0, 0(s0)                /* R still allowed */
	EXPECT_TRAP
	sw a0, 0(s0)
	CHECK_CAUSE CAUSE_STORE_ACCESS
	CHECK_FROM 3
	csrr s4, pmpaddr0
	addi t0, s4, 16
	csrw pmpaddr0, t0
	csrr t1, pmpaddr0
	CHECKR t1, s4
	csrr s5, pmpcfg0
	li t0, 0xff
	csrc pmpcfg0, t0            /* locked byte does not change */
	csrr t1, pmpcfg0
	CHECKR t1, s5
	li t0, 0xff << 8            /* an unlocked byte does */
	csrc pmpcfg0, t0
	csrr t1, pmpcfg0
	srli t1, t1, 8
	andi t1, t1, 0xff
	CHECK t1, 0

	j pass

	.bss
	.balign 4096
region:	.space 4096 * 4
