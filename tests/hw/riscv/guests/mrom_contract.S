/*
 * mrom_contract: an M-mode payload for `-bios none` checking what the boot ROM hands over.
 *
 * QEMU's reset vector at 0x1000 jumps to DRAM base in M-mode with a0 = mhartid,
 * a1 = FDT address, a2 = &fw_dynamic_info (0x1028).  Hart 0 checks: a0 == mhartid, the FDT
 * magic at a1, fw_dynamic_info's magic/version/next_mode at a2, that a1 is 2 MiB aligned, then
 * prints "mrom-contract: ok" on the ns16550a and exits through sifive_test with PASS (status 0).
 * A failed check exits with FAIL and code N (process status N). Other harts park.
 * Build: tests/hw/riscv/guests/build.
 */
#define UART      0x10000000
#define TEST      0x100000

    .section .text.start
    .globl _start
_start:
    csrr    t0, mhartid
    bne     a0, t0, fail1
    bnez    a0, park
    /* FDT magic 0xd00dfeed, big-endian in memory */
    lwu     t1, 0(a1)
    li      t2, 0xedfe0dd0
    bne     t1, t2, fail2
    li      t2, 0x1fffff
    and     t1, a1, t2
    bnez    t1, fail3
    /* fw_dynamic_info: magic "OSBI", version 2, next_mode S (1) */
    li      t2, 0x1028
    bne     a2, t2, fail4
    ld      t1, 0(a2)
    li      t2, 0x4942534f
    bne     t1, t2, fail4
    ld      t1, 8(a2)
    li      t2, 2
    bne     t1, t2, fail5
    ld      t1, 24(a2)
    li      t2, 1
    bne     t1, t2, fail5
    la      a0, msg
    li      t3, UART
1:  lbu     t1, 0(a0)
    beqz    t1, 3f
2:  lbu     t2, 5(t3)               /* LSR.THRE */
    andi    t2, t2, 0x20
    beqz    t2, 2b
    sb      t1, 0(t3)
    addi    a0, a0, 1
    j       1b
3:  li      t0, TEST
    li      t1, 0x5555              /* PASS */
    sw      t1, 0(t0)
park:
    wfi
    j       park

fail1: li a0, 1; j fail
fail2: li a0, 2; j fail
fail3: li a0, 3; j fail
fail4: li a0, 4; j fail
fail5: li a0, 5; j fail
fail:
    slli    a0, a0, 16
    li      t1, 0x3333              /* FAIL, code in the high half */
    or      a0, a0, t1
    li      t0, TEST
    sw      a0, 0(t0)
    j       park

    .section .rodata
msg: .asciz "mrom-contract: ok\n"
