/*
 * mmio_probe: replay a table of MMIO accesses on -M virt and report what the guest saw.
 *
 * Run with -bios none; the table is loaded at 0x80100000 (e.g. QEMU's
 * -device loader,file=table.bin,addr=0x80100000,force-raw=on).  Each 24-byte entry is
 * {u64 gpa, u64 value, u32 size, u32 op} with op 0 = read, 1 = write, 2 = end, 3 = poll
 * (read until the value equals "value", for devices that complete asynchronously, at most
 * 2^26 tries; the last value read is recorded).  For every
 * entry two u64 are recorded at 0x80200000: the value read (0 for writes) and mip after the
 * access.  A faulting access records 0xdead0000 | mcause as its value.  The results are then printed on the
 * UART after a "==" line, one 16-digit hex number per line, and the sifive_test finisher
 * ends the run (PASS).
 */
    .option norvc
    .equ TABLE,   0x80100000
    .equ RESULTS, 0x80200000
    .equ UART,    0x10000000
    .equ TEST,    0x100000

    .section .text.start
    .globl _start
_start:
    la      t0, trap
    csrw    mtvec, t0
    li      s0, TABLE
    li      s1, RESULTS
    li      s2, 0                   /* entries done */
next:
    ld      t0, 0(s0)               /* gpa */
    ld      t1, 8(s0)               /* value */
    lwu     t2, 16(s0)              /* size */
    lwu     t3, 20(s0)              /* op */
    li      t4, 2
    beq     t3, t4, dump
    li      t5, 0
    li      t6, 0
    li      t4, 3
    beq     t3, t4, do_poll
    bnez    t3, do_write
    li      t4, 1
    beq     t2, t4, r1
    li      t4, 2
    beq     t2, t4, r2
    li      t4, 4
    beq     t2, t4, r4
r8: ld      t5, 0(t0)
    j       record
r1: lbu     t5, 0(t0)
    j       record
r2: lhu     t5, 0(t0)
    j       record
r4: lwu     t5, 0(t0)
    j       record
do_poll:
    li      a1, 1 << 26
poll_again:
    li      t4, 1
    beq     t2, t4, p1
    li      t4, 2
    beq     t2, t4, p2
    lwu     t5, 0(t0)
    j       poll_check
p1: lbu     t5, 0(t0)
    j       poll_check
p2: lhu     t5, 0(t0)
poll_check:
    beq     t5, t1, record
    addi    a1, a1, -1
    bnez    a1, poll_again
    j       record
do_write:
    li      t4, 1
    beq     t2, t4, w1
    li      t4, 2
    beq     t2, t4, w2
    li      t4, 4
    beq     t2, t4, w4
w8: sd      t1, 0(t0)
    j       record
w1: sb      t1, 0(t0)
    j       record
w2: sh      t1, 0(t0)
    j       record
w4: sw      t1, 0(t0)
record:
    csrr    t6, mip
    sd      t5, 0(s1)
    sd      t6, 8(s1)
    addi    s1, s1, 16
    addi    s0, s0, 24
    addi    s2, s2, 1
    j       next

    /* A faulting access: record 0xdead0000 | mcause and go on with the next entry. */
    .align 4
trap:
    csrr    t5, mcause
    li      t4, 0xdead0000
    or      t5, t5, t4
    la      t4, record
    csrw    mepc, t4
    mret

dump:
    li      a0, UART
    sb      zero, 1(a0)             /* IER = 0 */
    li      t0, 3
    sb      t0, 3(a0)               /* LCR = 8N1, DLAB off */
    sb      zero, 4(a0)             /* MCR = 0: loopback off */
    li      t0, '='                 /* marker: the dump starts after "==\n" */
    sb      t0, 0(a0)
    sb      t0, 0(a0)
    li      t0, '\n'
    sb      t0, 0(a0)
    li      s1, RESULTS
    slli    s2, s2, 1               /* two words per entry */
dump_word:
    beqz    s2, finish
    ld      t0, 0(s1)
    li      t1, 60
dump_nibble:
    srl     t2, t0, t1
    andi    t2, t2, 15
    li      t3, 10
    blt     t2, t3, digit
    addi    t2, t2, 'a' - 10
    j       put
digit:
    addi    t2, t2, '0'
put:
    sb      t2, 0(a0)
    addi    t1, t1, -4
    bgez    t1, dump_nibble
    li      t2, '\n'
    sb      t2, 0(a0)
    addi    s1, s1, 8
    addi    s2, s2, -1
    j       dump_word
finish:
    li      t0, TEST
    li      t1, 0x5555
    sw      t1, 0(t0)
1:  wfi
    j       1b
