/* gdbtest entry at DRAM base (-bios none): a stack per hart, hart 0 to main, others wait. */
    .section .text.start
    .globl _start
_start:
    csrr t0, mhartid
    la sp, stack_top
    slli t1, t0, 12
    sub sp, sp, t1
    bnez t0, 1f
    call main
1:  call secondary
2:  j 2b

    .bss
    .balign 16
    .space 4096 * 2
stack_top:
