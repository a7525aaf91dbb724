/*
 * A tiny S-mode "kernel" for run-nested: `kvmpy -accel kvm -M virt -bios none -kernel` it.
 * Prints a line on the virt board's 16550 (0x10000000) naming its hartid (a0) and whether a1
 * points at a device tree, then asks SBI SRST for a shutdown.  Position independent.
 * Build: riscv64-linux-gnu-gcc -nostdlib -static -march=rv64imac_zicsr -mabi=lp64
 *   -Wl,-Ttext=0x80000000 -Wl,--build-id=none -o h.elf riscv_kvm_hello.S
 *   && riscv64-linux-gnu-objcopy -O binary -j .text h.elf riscv_kvm_hello.bin
 */
    .option norvc
    .section .text
    .globl _start
_start:
    li      s0, 0x10000000
    lla     a2, msg
    call    puts
    addi    t0, a0, '0'             /* hartid as a digit */
    sb      t0, 0(s0)
    lla     a2, fdt_no
    lwu     t0, 0(a1)               /* FDT magic 0xd00dfeed, big-endian */
    li      t1, 0xedfe0dd0
    bne     t0, t1, 1f
    lla     a2, fdt_yes
1:  call    puts
    li      a7, 0x53525354          /* SRST: shutdown, no reason */
    li      a6, 0
    li      a0, 0
    li      a1, 0
    ecall
2:  j       2b

puts:                               /* a2: NUL-terminated string */
    lbu     t0, 0(a2)
    beqz    t0, 3f
    sb      t0, 0(s0)
    addi    a2, a2, 1
    j       puts
3:  ret

msg:     .asciz "kvmpy-kvm-hello: hart "
fdt_yes: .asciz ", a1 -> device tree\n"
fdt_no:  .asciz ", a1 -> no device tree\n"
