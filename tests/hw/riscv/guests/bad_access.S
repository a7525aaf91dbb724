/*
 * bad_access: an S-mode payload that pokes addresses nothing decodes and uses access widths
 * devices refuse, then says it is still alive and powers off (SBI SRST).
 *
 * kvmpy logs each as a guest error (-d guest_errors) and goes on; a trap (an access fault, as
 * some boards raise) is skipped by the stvec handler, so either way the payload gets to
 *   bad-access: alive
 * Build: tests/hw/riscv/guests/build.
 */
#define EID_PUTCHAR 0x01
#define EID_SRST    0x53525354

    .section .text.start
    .globl _start
_start:
    bnez    a0, park
    la      t0, skip
    csrw    stvec, t0

    li      t1, 0x200000            /* between the RTC and the CLINT: nothing there */
    lw      t2, 0(t1)
    sw      t2, 8(t1)
    ld      t2, 0x10(t1)
    li      t1, 0x0c000000          /* PLIC: 32-bit registers only */
    lb      t2, 0(t1)
    sh      t2, 4(t1)
    sd      t2, 8(t1)
    li      t1, 0x00101000          /* goldfish RTC: 32-bit only */
    lbu     t2, 0(t1)
    li      t1, 0x00101020          /* RTC window is 0x24 bytes: a word at 0x20 fits ... */
    ld      t2, 0(t1)               /* ... 8 bytes do not */
    li      t1, 0x1000              /* boot ROM: read-only */
    sw      zero, 0(t1)
    li      t1, 0x7ff00000          /* below RAM */
    sd      zero, 0(t1)

    la      a0, msg
1:  lbu     t3, 0(a0)
    beqz    t3, 2f
    mv      t4, a0
    mv      a0, t3
    li      a7, EID_PUTCHAR
    ecall
    addi    a0, t4, 1
    j       1b
2:  li      a0, 0
    li      a1, 0
    li      a7, EID_SRST
    li      a6, 0
    ecall
park:
    wfi
    j       park

    .balign 4
skip:                               /* any trap: step over the (4-byte) faulting instruction */
    csrr    t5, sepc
    addi    t5, t5, 4
    csrw    sepc, t5
    sret

    .section .rodata
msg: .asciz "bad-access: alive\n"
