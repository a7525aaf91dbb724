/*
 * S-mode guest for tests/accel/kvm/test_riscv_kvm.py (real RISC-V KVM only).
 * Loaded at the start of RAM (0x80000000); entry points at fixed offsets.
 * MMIO window: 0x10000000 (no memory slot there, every access exits).
 * Build: riscv64-linux-gnu-gcc -nostdlib -static -march=rv64imac_zicsr -mabi=lp64
 *   -Wl,-Ttext=0x80000000 -Wl,--build-id=none -o g.elf riscv_kvm_guest.S
 *   && riscv64-linux-gnu-objcopy -O binary -j .text g.elf riscv_kvm_guest.bin
 */
    .option norvc
    .section .text
    .globl _start
_start:
/* 0x000: exits in order, see the test */
    li      t0, 0x80001000
    li      t1, 0x1234
    sd      t1, 0(t0)               /* RAM: no exit */
    li      t2, 0x10000000
    lw      t3, 4(t2)               /* MMIO read, 4 bytes */
    sw      t3, 8(t2)               /* MMIO write of the loaded value (sign-extended) */
    sb      a0, 0(t2)               /* hartid, 1 byte */
    sd      a1, 16(t2)              /* a1 (FDT address), 8 bytes */
    li      a7, 1                   /* legacy console_putchar('K') */
    li      a0, 'K'
    ecall
    sw      a0, 12(t2)              /* its a0 */
    li      a7, 0x4442434E          /* DBCN console_write_byte('D') */
    li      a6, 2
    li      a0, 'D'
    ecall
    sd      a0, 24(t2)              /* its a0 (error) */
    li      a7, 0x53525354          /* SRST system_reset(shutdown, no reason) */
    li      a6, 0
    li      a0, 0
    li      a1, 0
    ecall
1:  j       1b

    .org 0x200
/* 0x200: external interrupt: enable SEIE + SIE, spin; the handler reports scause */
    lla     t0, irq_handler
    csrw    stvec, t0
    li      t0, 0x200               /* sie.SEIE */
    csrw    sie, t0
    csrsi   sstatus, 2              /* sstatus.SIE */
2:  j       2b

    .org 0x300
/* 0x300: secondary hart entry (SBI HSM hart_start): report a0 and a1 */
    li      t2, 0x10000000
    sd      a0, 0x40(t2)
    sd      a1, 0x48(t2)
3:  j       3b

    .org 0x400
/* 0x400: spin without exits (kick test) */
4:  j       4b

    .org 0x500
/* 0x500: start hart 1 at 0x80000300 with opaque 0x5a5a through SBI HSM */
    li      a7, 0x48534D
    li      a6, 0
    li      a0, 1
    li      a1, 0x80000300
    li      a2, 0x5a5a
    ecall
    li      t2, 0x10000000
    sd      a0, 0x30(t2)
5:  j       5b

    .org 0x580
/* 0x580: SRST cold reboot with reason 0x42 */
    li      a7, 0x53525354
    li      a6, 0
    li      a0, 1
    li      a1, 0x42
    ecall
7:  j       7b

    .org 0x600
irq_handler:
    csrr    t0, scause
    li      t2, 0x10000000
    sd      t0, 0x20(t2)
6:  j       6b
