/*
 * sbi_smoke: an S-mode payload for the virt board that uses the SBI the way Linux does.
 *
 * Entered on hart 0 in S-mode with a0 = hartid, a1 = FDT (OpenSBI fw_dynamic, kvmpy's
 * -bios builtin, KVM).  It prints through the legacy console call, checks BASE, TIME (a
 * supervisor timer interrupt seen in sip), IPI (SSIP on itself), starts every other hart with
 * HSM hart_start (each one marks itself present and stops), then powers off with SRST.
 * Output on success, one line each:
 *   sbi-smoke: hart 0 up
 *   sbi-smoke: spec 0xMMmmmmmm
 *   sbi-smoke: timer ok
 *   sbi-smoke: ipi ok
 *   sbi-smoke: N harts
 *   sbi-smoke: done
 * Any failure prints "sbi-smoke: FAIL <what>" and shuts down with SRST reason 1.
 * Build: tests/hw/riscv/guests/build (riscv64-unknown-elf-gcc).
 */

#define EID_PUTCHAR 0x01
#define EID_BASE    0x10
#define EID_TIME    0x54494D45
#define EID_IPI     0x735049
#define EID_HSM     0x48534D
#define EID_SRST    0x53525354
#define MAX_HARTS   64

    .section .text.start
    .globl _start
_start:
    /* stack: 1 KiB per hart below stack_top */
    la      sp, stack_top
    slli    t0, a0, 10
    sub     sp, sp, t0
    bnez    a0, secondary

    la      a0, msg_up
    call    puts

    /* BASE: spec version must be >= 0.2 (not legacy-only) */
    li      a7, EID_BASE
    li      a6, 0
    ecall
    bnez    a0, fail_base
    mv      s0, a1
    la      a0, msg_spec
    call    puts
    mv      a0, s0
    call    puthex
    call    newline
    srli    t0, s0, 24
    bnez    t0, 1f
    andi    t0, s0, 0xff
    li      t1, 2
    blt     t0, t1, fail_base
1:
    /* BASE probe TIME, IPI, HSM, SRST */
    la      s1, probe_list
2:  ld      a0, 0(s1)
    beqz    a0, 3f
    li      a7, EID_BASE
    li      a6, 3
    ecall
    beqz    a1, fail_probe
    addi    s1, s1, 8
    j       2b
3:
    /* TIME: a timer 1 ms ahead, wait for sip.STIP */
    li      t0, 1 << 5
    csrs    sie, t0
    rdtime  a0
    li      t0, 10000
    add     a0, a0, t0
    li      a7, EID_TIME
    li      a6, 0
    ecall
    bnez    a0, fail_timer
    rdtime  s2                      /* 5 s limit */
    li      t0, 50000000
    add     s2, s2, t0
4:  csrr    t0, sip
    andi    t0, t0, 1 << 5
    bnez    t0, 5f
    wfi
    rdtime  t0
    bgeu    t0, s2, fail_timer
    j       4b
5:  li      a0, -1                  /* next timer far away: STIP drops */
    li      a7, EID_TIME
    li      a6, 0
    ecall
    csrr    t0, sip
    andi    t0, t0, 1 << 5
    bnez    t0, fail_timer
    li      t0, 1 << 5
    csrc    sie, t0
    la      a0, msg_timer
    call    puts

    /* IPI to ourselves: sip.SSIP */
    li      a0, 1
    li      a1, 0
    li      a7, EID_IPI
    li      a6, 0
    ecall
    bnez    a0, fail_ipi
    rdtime  s2
    li      t0, 50000000
    add     s2, s2, t0
6:  csrr    t0, sip
    andi    t0, t0, 1 << 1
    bnez    t0, 7f
    rdtime  t0
    bgeu    t0, s2, fail_ipi
    j       6b
7:  csrci   sip, 1 << 1
    la      a0, msg_ipi
    call    puts

    /* HSM: start harts 1.. until the SBI says the id is invalid */
    li      s3, 1                   /* harts counted (hart 0) */
    li      s4, 1                   /* next hart id */
8:  li      t0, MAX_HARTS
    bgeu    s4, t0, 10f
    mv      a0, s4
    la      a1, _start
    mv      a2, s4
    li      a7, EID_HSM
    li      a6, 0
    ecall
    li      t0, -3                  /* SBI_ERR_INVALID_PARAM: no such hart */
    beq     a0, t0, 10f
    bnez    a0, fail_hsm
    la      t1, present
    add     t1, t1, s4
    rdtime  s2                      /* give it 5 s (10 MHz timebase) */
    li      t0, 50000000
    add     s2, s2, t0
9:  lb      t2, 0(t1)
    bnez    t2, 11f
    rdtime  t0
    bgeu    t0, s2, fail_hsm
    j       9b
11: /* wait for it to be STOPPED again */
    mv      a0, s4
    li      a7, EID_HSM
    li      a6, 2
    ecall
    bnez    a0, fail_hsm
    li      t0, 1
    beq     a1, t0, 12f
    rdtime  t0
    bgeu    t0, s2, fail_hsm
    j       11b
12:
    addi    s3, s3, 1
    addi    s4, s4, 1
    j       8b
10:
    la      a0, msg_harts
    call    puts
    mv      a0, s3
    call    putdec
    la      a0, msg_harts2
    call    puts
    la      a0, msg_done
    call    puts
    li      a0, 0                   /* shutdown */
    li      a1, 0                   /* no reason */
    li      a7, EID_SRST
    li      a6, 0
    ecall
    j       hang

secondary:
    /* a0 = hartid, a1 = opaque (= hartid) */
    bne     a0, a1, hang
    la      t1, present
    add     t1, t1, a0
    fence
    li      t2, 1
    sb      t2, 0(t1)
    fence
    li      a7, EID_HSM
    li      a6, 1                   /* hart_stop */
    ecall
hang:
    wfi
    j       hang

fail_base:  la a0, f_base;  j fail
fail_probe: la a0, f_probe; j fail
fail_timer: la a0, f_timer; j fail
fail_ipi:   la a0, f_ipi;   j fail
fail_hsm:   la a0, f_hsm;   j fail
fail:
    mv      s0, a0
    la      a0, msg_fail
    call    puts
    mv      a0, s0
    call    puts
    li      a0, 0
    li      a1, 1                   /* system failure */
    li      a7, EID_SRST
    li      a6, 0
    ecall
    j       hang

/* puts(a0): legacy console putchar per byte */
puts:
    mv      t3, a0
1:  lbu     a0, 0(t3)
    beqz    a0, 2f
    li      a7, EID_PUTCHAR
    ecall
    addi    t3, t3, 1
    j       1b
2:  ret

newline:
    li      a0, '\n'
    li      a7, EID_PUTCHAR
    ecall
    ret

/* puthex(a0): 0x + 8 hex digits of the low 32 bits */
puthex:
    mv      t4, a0
    li      a0, '0'
    li      a7, EID_PUTCHAR
    ecall
    li      a0, 'x'
    ecall
    li      t5, 28
1:  srl     a0, t4, t5
    andi    a0, a0, 0xf
    li      t6, 10
    blt     a0, t6, 2f
    addi    a0, a0, 'a' - 10 - '0'
2:  addi    a0, a0, '0'
    li      a7, EID_PUTCHAR
    ecall
    addi    t5, t5, -4
    bgez    t5, 1b
    ret

/* putdec(a0): 0..99 */
putdec:
    li      t6, 10
    divu    t4, a0, t6
    remu    t5, a0, t6
    beqz    t4, 1f
    addi    a0, t4, '0'
    li      a7, EID_PUTCHAR
    ecall
1:  addi    a0, t5, '0'
    li      a7, EID_PUTCHAR
    ecall
    ret

    .section .rodata
    .balign 8
probe_list:
    .dword EID_TIME, EID_IPI, EID_HSM, EID_SRST, 0
msg_up:     .asciz "sbi-smoke: hart 0 up\n"
msg_spec:   .asciz "sbi-smoke: spec "
msg_timer:  .asciz "sbi-smoke: timer ok\n"
msg_ipi:    .asciz "sbi-smoke: ipi ok\n"
msg_harts:  .asciz "sbi-smoke: "
msg_harts2: .asciz " harts\n"
msg_done:   .asciz "sbi-smoke: done\n"
msg_fail:   .asciz "sbi-smoke: FAIL "
f_base:     .asciz "base\n"
f_probe:    .asciz "probe\n"
f_timer:    .asciz "timer\n"
f_ipi:      .asciz "ipi\n"
f_hsm:      .asciz "hsm\n"

    .section .bss
    .balign 16
present:    .space MAX_HARTS
    .balign 16
stack:      .space 1024 * MAX_HARTS
stack_top:
