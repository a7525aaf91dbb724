/*
 * pci_fuzz: throw random and malformed accesses at the PCIe host bridge of -M virt and at the
 * virtio-pci functions behind it; the VMM must log them and go on.
 *
 *   kvmpy -M virt -m 128M -bios none -kernel pci_fuzz.elf -device virtio-rng-pci
 *         -device virtio-serial-pci -drive file=IMG,if=virtio,format=raw -d guest_errors
 *
 * An M-mode program (-bios none: the reset vector jumps here, at DRAM base).  A xorshift64
 * generator with a fixed seed makes every run the same.  Phases, each announced on the UART:
 *
 *   config  ECAM: every aligned offset and every size (1, 2, 4 and 8, which the ECAM refuses)
 *           of every function that answers on bus 0, every 4th offset of the empty functions
 *           of bus 0 and of a few functions on other buses, random writes each read back;
 *           then the last bytes of the ECAM window.
 *   bars    per virtio function: garbage in the BAR and command registers, BAR sizing, the BARs
 *           mapped in the windows (I/O BAR0, MSI-X BAR1, modern BAR4) with I/O, memory and bus
 *           master decode on, every offset of each BAR hammered with random writes of every
 *           size, random accesses through the VIRTIO_PCI_CAP_PCI_CFG window; then BARs
 *           overlapping each other, at 0, outside the windows, across a window's end, and
 *           in the 64-bit window.
 *   queues  virtqueues with rings outside RAM, in MMIO, across the end of RAM, queue sizes 0,
 *           odd, 1024, too large; descriptor chains that loop, leave their table, point outside
 *           RAM or at MMIO, nest indirect tables; random rings; each notified through the
 *           modern notify region and, in legacy mode, through the I/O BAR.
 *   msi-x   MSI-X messages aimed at the function's own notify register, its own config space
 *           and MSI-X table, the UART, the sifive_test finisher (a FAIL code: if it were
 *           written, the run would end with status 7), unmapped addresses, and RAM (checked:
 *           "msi-x to RAM ok"); masked vectors and their pending bits ("msi-x pending ok"),
 *           the function mask, refused access widths, vectors out of range, no bus mastering,
 *           INTx; then random table and control writes.
 *
 * A trap (an access to an address nothing decodes) skips the instruction.  The program ends by
 * printing "pci-fuzz: alive" and writing PASS (0x5555) to the sifive_test finisher.  Before the
 * bars, queues and msi-x phases, and before hammering the BARs, it waits 1.1 s of mtime, so
 * that the first guest errors of each open a fresh rate-limit window of -d guest_errors.
 * Build: tests/hw/guests/build.sh.
 */
    .option norvc

#define UART        0x10000000
#define TEST        0x100000
#define MTIME       0x0200bff8
#define ECAM        0x30000000
#define ECAM_SIZE   0x10000000
#define PIO         0x03000000          /* I/O window: bus I/O address 0 */
#define MMIO32      0x40000000          /* 32-bit window: bus address = CPU address */
#define MMIO64      0x400000000         /* 64-bit window above 128 MiB of RAM */
#define RAM_END     0x88000000          /* -m 128M */

#define SCRATCH     0x800f0000          /* trap handler: saved t1, trap count */
#define STACK       0x80100000
#define DEVS        0x80200000          /* u64 count, then the devfns of the virtio functions */
#define MSI_BOX     0x80300000          /* MSI-X messages aimed at RAM land here */
#define Q           0x80400000          /* rings: descriptors */
#define AVAIL       0x80404000
#define USED        0x80405000
#define IND         0x80408000          /* an indirect descriptor table */
#define BUF         0x80410000          /* buffers: BUF .. BUF + 0x12000 */
#define MAX_DEVS    8
#ifndef SEED                            /* -DSEED=n: another run of the same program */
#define SEED        0x9e3779b97f4a7c15
#endif

/* Per function i: I/O BAR0 at 0x1000 + 0x100 i, MSI-X BAR1 at MMIO32 + 0x10000 i, modern
   BAR4 at MMIO32 + 0x1000000 + 0x10000 i (dev_select puts the CPU addresses in s2, s3, s4
   and the function's ECAM space in s1). */
#define IO_BASE     0x1000
#define MODERN32    (MMIO32 + 0x1000000)

/* Legacy I/O registers (virtio 0.9.5). */
#define L_HOST_FEATURES 0
#define L_GUEST_FEATURES 4
#define L_QUEUE_PFN     8
#define L_QUEUE_SEL     14
#define L_QUEUE_NOTIFY  16
#define L_STATUS        18
#define L_ISR           19

/* Modern BAR4: common config (virtio 1.2 §4.1.4.3), ISR, device config, notify. */
#define C_DFSELECT  0x00
#define C_DF        0x04
#define C_GFSELECT  0x08
#define C_GF        0x0c
#define C_MSIX      0x10
#define C_NUMQ      0x12
#define C_STATUS    0x14
#define C_Q_SELECT  0x16
#define C_Q_SIZE    0x18
#define C_Q_MSIX    0x1a
#define C_Q_ENABLE  0x1c
#define C_Q_DESCLO  0x20
#define C_Q_DESCHI  0x24
#define C_Q_AVAILLO 0x28
#define C_Q_AVAILHI 0x2c
#define C_Q_USEDLO  0x30
#define C_Q_USEDHI  0x34
#define ISR_OFF     0x1000
#define NOTIFY_OFF  0x3000

#define F_NEXT      1
#define F_WRITE     2
#define F_INDIRECT  4
#define NKINDS      20
#define NSETS       8
#define NSIZES      7
#define KIND_SELF   2                   /* kinds[]: k_self, k_valid */
#define KIND_VALID  15

/* ra and s0-s10 are saved by every non-leaf routine. */
.macro ENTER
    addi    sp, sp, -96
    sd      ra, 0(sp)
    sd      s0, 8(sp)
    sd      s1, 16(sp)
    sd      s2, 24(sp)
    sd      s3, 32(sp)
    sd      s4, 40(sp)
    sd      s5, 48(sp)
    sd      s6, 56(sp)
    sd      s7, 64(sp)
    sd      s8, 72(sp)
    sd      s9, 80(sp)
    sd      s10, 88(sp)
.endm
.macro LEAVE
    ld      ra, 0(sp)
    ld      s0, 8(sp)
    ld      s1, 16(sp)
    ld      s2, 24(sp)
    ld      s3, 32(sp)
    ld      s4, 40(sp)
    ld      s5, 48(sp)
    ld      s6, 56(sp)
    ld      s7, 64(sp)
    ld      s8, 72(sp)
    ld      s9, 80(sp)
    ld      s10, 88(sp)
    addi    sp, sp, 96
    ret
.endm
.macro PUTS label
    la      a0, \label
    call    puts
.endm
.macro SWEEP base, length, full
    li      a0, \base
    li      a1, \length
    li      a2, \full
    call    sweep
.endm
.macro DESC table, idx, addr, len, flags, next
    li      a0, \table
    li      a1, \idx
    li      a2, \addr
    li      a3, \len
    li      a4, \flags
    li      a5, \next
    call    put_desc
.endm
.macro ALL_BARS io, msix, modern
    li      a0, \io
    li      a1, \msix
    li      a2, \modern
    call    all_bars
.endm
/* for each virtio function: s0 = index, s1-s4 its addresses (clobbers t0) */
.macro FOR_DEVS label_end
    li      s0, 0
1000:
    li      t0, DEVS
    ld      t0, 0(t0)
    bge     s0, t0, \label_end
    mv      a0, s0
    call    dev_select
.endm
.macro NEXT_DEV
    addi    s0, s0, 1
    j       1000b
.endm

    .section .text.start
    .globl _start
_start:
    csrr    t0, mhartid
    bnez    t0, park
    la      t0, trap
    csrw    mtvec, t0
    li      t0, SCRATCH
    csrw    mscratch, t0
    sd      zero, 8(t0)
    li      sp, STACK
    li      s11, SEED                   /* generator state */
    li      t0, UART
    sb      zero, 1(t0)                 /* IER = 0 */
    li      t1, 3
    sb      t1, 3(t0)                   /* LCR = 8N1, DLAB off */
    sb      zero, 4(t0)                 /* MCR = 0 */

    PUTS    msg_config
    call    phase_config
    call    find_devices
    call    wait_window
    PUTS    msg_bars
    call    phase_bars
    call    wait_window
    call    phase_hammer
    call    phase_badmap
    call    wait_window
    PUTS    msg_queues
    call    phase_queues
    call    wait_window
    PUTS    msg_msix
    call    phase_msix

    PUTS    msg_traps
    li      t0, SCRATCH
    ld      a0, 8(t0)
    call    put_hex
    PUTS    msg_alive
    li      t0, TEST
    li      t1, 0x5555
    sw      t1, 0(t0)
park:
    wfi
    j       park

/* Any trap: step over the (4-byte) instruction, count it. */
    .balign 4
trap:
    csrrw   t0, mscratch, t0
    sd      t1, 0(t0)
    csrr    t1, mepc
    addi    t1, t1, 4
    csrw    mepc, t1
    ld      t1, 8(t0)
    addi    t1, t1, 1
    sd      t1, 8(t0)
    ld      t1, 0(t0)
    csrrw   t0, mscratch, t0
    mret

/* -- helpers ------------------------------------------------------------------------------ */

/* a0 = the next xorshift64 value (state in s11) */
rand:
    slli    t0, s11, 13
    xor     s11, s11, t0
    srli    t0, s11, 7
    xor     s11, s11, t0
    slli    t0, s11, 17
    xor     s11, s11, t0
    mv      a0, s11
    ret

/* store a2 at a0, a1 bytes (1, 2, 4, 8) */
store:
    li      t0, 1
    beq     a1, t0, 1f
    li      t0, 2
    beq     a1, t0, 2f
    li      t0, 4
    beq     a1, t0, 4f
    sd      a2, 0(a0)
    ret
1:  sb      a2, 0(a0)
    ret
2:  sh      a2, 0(a0)
    ret
4:  sw      a2, 0(a0)
    ret

/* a0 = the a1 bytes (1, 2, 4, 8) at a0 */
load:
    mv      t1, a0
    li      a0, 0
    li      t0, 1
    beq     a1, t0, 1f
    li      t0, 2
    beq     a1, t0, 2f
    li      t0, 4
    beq     a1, t0, 4f
    ld      a0, 0(t1)
    ret
1:  lbu     a0, 0(t1)
    ret
2:  lhu     a0, 0(t1)
    ret
4:  lwu     a0, 0(t1)
    ret

/* a random value of a1 bytes written at a0, then read back */
rw:
    ENTER
    mv      s0, a0
    mv      s1, a1
    call    rand
    mv      a2, a0
    mv      a0, s0
    mv      a1, s1
    call    store
    mv      a0, s0
    mv      a1, s1
    call    load
    LEAVE

/* sweep(a0 base, a1 length, a2 full): full: rw at every offset with every size that is
   aligned there; otherwise every 4th offset, with a random size. */
sweep:
    ENTER
    mv      s5, a0
    mv      s6, a1
    mv      s7, a2
    li      s8, 0                       /* offset */
1:  bgeu    s8, s6, 9f
    beqz    s7, 5f
    li      s9, 1                       /* size */
2:  addi    t0, s9, -1
    and     t0, t0, s8
    bnez    t0, 3f
    add     t0, s8, s9
    bgtu    t0, s6, 3f
    add     a0, s5, s8
    mv      a1, s9
    call    rw
3:  slli    s9, s9, 1
    li      t0, 8
    bleu    s9, t0, 2b
    addi    s8, s8, 1
    j       1b
5:  call    rand
    andi    t0, a0, 3
    li      s9, 1
    sll     s9, s9, t0
    li      t0, 8
    bne     s9, t0, 6f
    andi    t0, s8, 4
    beqz    t0, 6f
    li      s9, 4
6:  add     a0, s5, s8
    mv      a1, s9
    call    rw
    addi    s8, s8, 4
    j       1b
9:  LEAVE

/* print the NUL-terminated string at a0 */
puts:
    li      t1, UART
1:  lbu     t0, 0(a0)
    beqz    t0, 2f
    sb      t0, 0(t1)
    addi    a0, a0, 1
    j       1b
2:  ret

/* print a0 as 16 hex digits and a newline */
put_hex:
    li      t1, UART
    li      t2, 60
1:  srl     t0, a0, t2
    andi    t0, t0, 15
    li      t3, 10
    blt     t0, t3, 2f
    addi    t0, t0, 'a' - 10
    j       3f
2:  addi    t0, t0, '0'
3:  sb      t0, 0(t1)
    addi    t2, t2, -4
    bgez    t2, 1b
    li      t0, '\n'
    sb      t0, 0(t1)
    ret

/* busy-wait 1.1 s of mtime (10 MHz), or 2^21 reads of a clock that does not move */
wait_window:
    li      t0, MTIME
    ld      t1, 0(t0)
    li      t2, 11000000
    add     t1, t1, t2
    li      t3, 1 << 21
1:  ld      t2, 0(t0)
    addi    t3, t3, -1
    beqz    t3, 2f
    bltu    t2, t1, 1b
2:  ret

/* -- phase 1: configuration space --------------------------------------------------------- */

phase_config:
    ENTER
    li      s0, 0                       /* devfn */
1:  li      s1, ECAM
    slli    t0, s0, 12
    add     s1, s1, t0
    lw      t0, 0(s1)
    li      t1, -1
    mv      a0, s1
    li      a1, 0x1000
    li      a2, 1                       /* a function answers: everything */
    bne     t0, t1, 2f
    li      a2, 0
2:  call    sweep
    addi    s0, s0, 1
    li      t0, 256
    blt     s0, t0, 1b
    la      s0, other_functions
3:  lwu     t0, 0(s0)
    beqz    t0, 4f
    li      a0, ECAM
    add     a0, a0, t0
    li      a1, 0x1000
    li      a2, 0
    call    sweep
    addi    s0, s0, 4
    j       3b
4:  SWEEP   ECAM + ECAM_SIZE - 0x10, 0x10, 1
    LEAVE

/* DEVS: the functions of bus 0 with the virtio vendor ID */
find_devices:
    li      t0, DEVS
    sd      zero, 0(t0)
    li      t1, 0
1:  li      t2, ECAM
    slli    t3, t1, 12
    add     t2, t2, t3
    lhu     t3, 0(t2)
    li      t4, 0x1af4
    bne     t3, t4, 2f
    ld      t5, 0(t0)
    slli    t6, t5, 3
    add     t6, t6, t0
    sd      t1, 8(t6)
    addi    t5, t5, 1
    sd      t5, 0(t0)
    li      t6, MAX_DEVS
    bge     t5, t6, 3f
2:  addi    t1, t1, 1
    li      t3, 256
    blt     t1, t3, 1b
3:  ret

/* s1 = ECAM space, s2 = I/O BAR0, s3 = MSI-X BAR1, s4 = modern BAR4 (CPU addresses) of
   virtio function a0 */
dev_select:
    li      t0, DEVS
    slli    t1, a0, 3
    add     t1, t1, t0
    ld      t1, 8(t1)
    slli    t1, t1, 12
    li      s1, ECAM
    add     s1, s1, t1
    slli    t1, a0, 8
    li      s2, PIO + IO_BASE
    add     s2, s2, t1
    slli    t1, a0, 16
    li      s3, MMIO32
    add     s3, s3, t1
    li      s4, MODERN32
    add     s4, s4, t1
    ret

/* -- phase 2: BARs ------------------------------------------------------------------------ */

/* map the selected function's BARs where dev_select says, decode and bus master on */
bar_map:
    sh      zero, 4(s1)
    li      t0, PIO
    sub     t0, s2, t0
    ori     t0, t0, 1
    sw      t0, 0x10(s1)
    sw      s3, 0x14(s1)
    sw      s4, 0x20(s1)
    srli    t0, s4, 32
    sw      t0, 0x24(s1)
    li      t0, 7                       /* I/O, memory, bus master */
    sh      t0, 4(s1)
    ret

/* BAR0 = a0, BAR1 = a1, BAR4/5 = a2 (64-bit) for the selected function, decode on */
set_bars:
    sw      a0, 0x10(s1)
    sw      a1, 0x14(s1)
    sw      a2, 0x20(s1)
    srli    t0, a2, 32
    sw      t0, 0x24(s1)
    li      t0, 7
    sh      t0, 4(s1)
    ret

/* set_bars(a0, a1, a2) on every virtio function */
all_bars:
    ENTER
    mv      s5, a0
    mv      s6, a1
    mv      s7, a2
    FOR_DEVS 2f
    mv      a0, s5
    mv      a1, s6
    mv      a2, s7
    call    set_bars
    NEXT_DEV
2:  LEAVE

/* a0 = offset of the first capability with ID a0 (and, if a1 >= 0, cfg_type a1 at +3) in
   the selected function's list, or 0 */
find_cap:
    mv      t3, a0
    lbu     t0, 0x34(s1)
    li      t4, 48
1:  beqz    t4, 3f
    addi    t4, t4, -1
    andi    t0, t0, 0xfc
    beqz    t0, 3f
    add     t1, s1, t0
    lbu     t2, 0(t1)
    bne     t2, t3, 2f
    bltz    a1, 4f
    lbu     t2, 3(t1)
    beq     t2, a1, 4f
2:  lbu     t0, 1(t1)
    j       1b
3:  li      a0, 0
    ret
4:  mv      a0, t0
    ret

phase_bars:
    ENTER
    FOR_DEVS 9f
    /* garbage in the command, BAR and ROM registers, read back */
    li      s5, 16
1:  addi    a0, s1, 4
    li      a1, 2
    li      a2, 1
    call    sweep
    addi    a0, s1, 0x10
    li      a1, 0x18
    li      a2, 1
    call    sweep
    addi    a0, s1, 0x30
    li      a1, 4
    li      a2, 1
    call    sweep
    addi    s5, s5, -1
    bnez    s5, 1b
    /* sizing: decode off, all ones, read the mask, restore */
    sh      zero, 4(s1)
    li      t1, 0x10
2:  add     t2, s1, t1
    lw      t3, 0(t2)
    li      t4, -1
    sw      t4, 0(t2)
    lw      t4, 0(t2)
    sw      t3, 0(t2)
    addi    t1, t1, 4
    li      t5, 0x28
    blt     t1, t5, 2b
    call    bar_map
    NEXT_DEV
9:  LEAVE

/* every offset of each BAR (and the unmapped rest of the I/O slot) with random writes of every
   size, then the VIRTIO_PCI_CAP_PCI_CFG window */
phase_hammer:
    ENTER
    FOR_DEVS 9f
    mv      a0, s2
    li      a1, 0x100
    li      a2, 1
    call    sweep
    mv      a0, s3
    li      a1, 0x1000
    li      a2, 1
    call    sweep
    mv      a0, s4
    li      a1, 0x4000
    li      a2, 1
    call    sweep
    /* VIRTIO_PCI_CAP_PCI_CFG: random BAR, offset, length; data written or read */
    li      a0, 9
    li      a1, 5
    call    find_cap
    beqz    a0, 8f
    add     s6, s1, a0
    li      s5, 2000
3:  call    rand
    mv      s7, a0
    andi    t0, s7, 1
    li      t1, 4
    bnez    t0, 4f
    srli    t1, s7, 8
4:  sb      t1, 4(s6)                   /* bar */
    srli    t0, s7, 16
    li      t1, 0x3fff
    and     t0, t0, t1
    andi    t1, s7, 2
    beqz    t1, 5f
    srli    t0, s7, 20                  /* any offset */
5:  sw      t0, 8(s6)
    srli    t0, s7, 34
    andi    t0, t0, 7
    la      t1, cfg_lengths
    slli    t0, t0, 2
    add     t1, t1, t0
    lw      t0, 0(t1)
    sw      t0, 12(s6)                  /* length */
    srli    t0, s7, 40
    andi    t0, t0, 3
    li      a1, 1
    sll     a1, a1, t0
    li      t0, 8
    bne     a1, t0, 6f
    li      a1, 4
6:  addi    a0, s6, 16                  /* data */
    andi    t0, s7, 4
    beqz    t0, 7f
    call    rw
    j       71f
7:  call    load
71: addi    s5, s5, -1
    bnez    s5, 3b
8:  NEXT_DEV
9:  LEAVE

/* BARs where they should not be; then back where they belong */
phase_badmap:
    ENTER
    /* every BAR1 and BAR4 at the start of the 32-bit window, every BAR0 at I/O 0x1000 */
    ALL_BARS 0x1001, MMIO32, MMIO32
    SWEEP   MMIO32, 0x4000, 0
    SWEEP   MMIO32, 0x40, 1
    SWEEP   PIO + 0x1000, 0x40, 1
    /* at 0 */
    ALL_BARS 0, 0, 0
    SWEEP   MMIO32, 0x40, 1
    SWEEP   PIO, 0x40, 1
    /* past 4 GiB (32-bit BARs) and past 2^64 (the 64-bit BAR) */
    ALL_BARS 0xffffffe1, 0xfffff000, 0xffffffffffffc000
    SWEEP   MMIO32, 0x40, 1
    SWEEP   PIO + 0xffe0, 0x20, 1
    /* across the end of the I/O window and of the 32-bit window; BAR1 below the window */
    ALL_BARS 0xfff1, 0x3ffff000, 0x7fffe000
    SWEEP   PIO + 0xff00, 0x100, 1
    SWEEP   0x7fffe000, 0x2000, 0
    SWEEP   0x7ffffff0, 0x10, 1
    /* BAR4 in the 64-bit window, BAR1 at a RAM address */
    ALL_BARS 0x2001, 0x80000000, MMIO64
    SWEEP   MMIO64, 0x100, 1
    SWEEP   MMIO64 + NOTIFY_OFF, 0x100, 1
    SWEEP   MMIO64 + 0x3fff0, 0x10, 1
    /* random command registers over the overlapping mapping */
    ALL_BARS 0x1001, MMIO32, MMIO32
    FOR_DEVS 2f
    call    rand
    sh      a0, 4(s1)
    NEXT_DEV
2:  SWEEP   MMIO32, 0x40, 1
    SWEEP   PIO + 0x1000, 0x40, 1
    FOR_DEVS 3f
    call    bar_map
    NEXT_DEV
3:  LEAVE

/* -- phase 3: virtqueues ------------------------------------------------------------------ */

/* descriptor a1 of table a0 = {a2 addr, a3 len, a4 flags, a5 next} */
put_desc:
    slli    t0, a1, 4
    add     t0, t0, a0
    sd      a2, 0(t0)
    sw      a3, 8(t0)
    sh      a4, 12(t0)
    sh      a5, 14(t0)
    ret

/* the avail ring offers head a0 (ring[0], idx 1) */
post:
    li      t0, AVAIL
    sh      zero, 0(t0)
    sh      a0, 4(t0)
    li      t1, 1
    sh      t1, 2(t0)
    ret

/* zero the descriptors, rings and the indirect table */
ring_clear:
    li      t0, Q
    li      t1, IND + 0x1000
1:  sd      zero, 0(t0)
    addi    t0, t0, 8
    bltu    t0, t1, 1b
    ret

/* a1 random descriptors in table a0: mostly into BUF, one in four anywhere */
junk_table:
    ENTER
    mv      s5, a0
    mv      s6, a1
    li      s7, 0
1:  bgeu    s7, s6, 3f
    call    rand
    mv      s8, a0
    li      t0, 0xffff
    and     s9, s8, t0
    li      t0, BUF
    add     s9, s9, t0
    li      t0, 0x300
    and     t0, s8, t0
    bnez    t0, 2f
    call    rand
    mv      s9, a0
2:  mv      a0, s5
    mv      a1, s7
    mv      a2, s9
    li      t0, 0x1fff
    srli    a3, s8, 20
    and     a3, a3, t0
    srli    a4, s8, 36
    andi    a4, a4, 7
    srli    a5, s8, 40
    andi    a5, a5, 0x3ff
    call    put_desc
    addi    s7, s7, 1
    j       1b
3:  LEAVE

/* ring contents number a0 (0 .. NKINDS - 1) */
fill_kind:
    ENTER
    la      t0, kinds
    slli    t1, a0, 3
    add     t0, t0, t1
    ld      t0, 0(t0)
    jr      t0
k_none:                                 /* nothing posted */
    j       k_done
k_uart:                                 /* a buffer in the UART */
    DESC    Q, 0, UART, 16, F_WRITE, 0
    j       k_post0
k_self:                                 /* a chain that loops on itself */
    DESC    Q, 0, BUF, 16, F_NEXT | F_WRITE, 0
    j       k_post0
k_cycle:                                /* 0 -> 1 -> 0 */
    DESC    Q, 0, BUF, 16, F_NEXT, 1
    DESC    Q, 1, BUF + 16, 16, F_NEXT, 0
    j       k_post0
k_huge:                                 /* 4 GiB from the start of RAM */
    DESC    Q, 0, 0x80000000, 0xffffffff, F_WRITE, 0
    j       k_post0
k_ahead:                                /* avail idx far ahead of the device */
    li      t0, AVAIL
    li      t1, 0x8000
    sh      t1, 2(t0)
    j       k_done
k_head:                                 /* head past the table */
    li      a0, 0xffff
    call    post
    j       k_done
k_ind_out:                              /* indirect table outside RAM */
    DESC    Q, 0, 0x20000000, 0x100, F_INDIRECT, 0
    j       k_post0
k_ind_len:                              /* indirect table of 17 bytes */
    DESC    Q, 0, IND, 17, F_INDIRECT, 0
    j       k_post0
k_ind_loop:                             /* a loop inside an indirect table */
    DESC    Q, 0, IND, 0x40, F_INDIRECT, 0
    DESC    IND, 0, BUF, 16, F_NEXT | F_WRITE, 0
    j       k_post0
k_ind_nest:                             /* an indirect table in an indirect table */
    DESC    Q, 0, IND, 0x40, F_INDIRECT, 0
    DESC    IND, 0, IND, 0x40, F_INDIRECT, 0
    j       k_post0
k_next:                                 /* next past the table */
    DESC    Q, 0, BUF, 16, F_NEXT, 0xffff
    j       k_post0
k_order:                                /* readable after writable */
    DESC    Q, 0, BUF, 16, F_NEXT | F_WRITE, 1
    DESC    Q, 1, BUF + 16, 16, 0, 0
    j       k_post0
k_wrap:                                 /* a buffer that wraps around 2^64 */
    DESC    Q, 0, 0xfffffffffffffff0, 0x20, F_WRITE, 0
    j       k_post0
k_ecam:                                 /* a buffer in the ECAM window */
    DESC    Q, 0, ECAM, 0x1000, F_WRITE, 0
    j       k_post0
k_valid:                                /* a plain writable buffer */
    DESC    Q, 0, BUF, 0x100, F_WRITE, 0
    j       k_post0
k_request:                              /* header, data, status (a virtio-blk read) */
    DESC    Q, 0, BUF, 16, F_NEXT, 1
    DESC    Q, 1, BUF + 0x100, 0x200, F_NEXT | F_WRITE, 2
    DESC    Q, 2, BUF + 0x400, 1, F_WRITE, 0
    j       k_post0
k_over_desc:                            /* the device writes over the descriptor table */
    DESC    Q, 0, Q, 0x100, F_WRITE, 0
    j       k_post0
k_over_used:                            /* ... and over the used ring */
    DESC    Q, 0, USED, 0x2000, F_WRITE, 0
    j       k_post0
k_junk:                                 /* random descriptors and rings */
    li      a0, Q
    li      a1, 1024
    call    junk_table
    li      a0, IND
    li      a1, 256
    call    junk_table
    li      s5, 0
1:  call    rand
    li      t0, AVAIL + 4
    slli    t1, s5, 1
    add     t0, t0, t1
    andi    a0, a0, 0x3ff
    sh      a0, 0(t0)
    addi    s5, s5, 1
    li      t0, 1024
    blt     s5, t0, 1b
    call    rand
    li      t0, AVAIL
    andi    t1, a0, 1
    sh      t1, 0(t0)                   /* flags */
    srli    t1, a0, 8
    andi    t1, t1, 7
    sh      t1, 2(t0)                   /* idx: a few requests */
    srli    t1, a0, 16
    li      t0, AVAIL + 4 + 2 * 1024
    sh      t1, 0(t0)                   /* used_event, after ring[1024] */
    j       k_done
k_post0:
    li      a0, 0
    call    post
k_done:
    LEAVE

/* The selected function, modern interface: reset, every offered feature, queues 0 .. 3 at
   desc a0, avail a1, used a2 with size a3, DRIVER_OK.  a0 = the number of queues set up. */
vq_setup:
    ENTER
    mv      s5, a0
    mv      s6, a1
    mv      s7, a2
    mv      s8, a3
    sb      zero, C_STATUS(s4)
    li      t0, 1
    sb      t0, C_STATUS(s4)
    li      t0, 3
    sb      t0, C_STATUS(s4)
    li      s9, 0
1:  sw      s9, C_DFSELECT(s4)
    lw      t0, C_DF(s4)
    sw      s9, C_GFSELECT(s4)
    sw      t0, C_GF(s4)
    addi    s9, s9, 1
    li      t1, 2
    blt     s9, t1, 1b
    li      t0, 0xb
    sb      t0, C_STATUS(s4)
    lhu     s10, C_NUMQ(s4)
    li      t0, 4
    bleu    s10, t0, 2f
    li      s10, 4
2:  li      s9, 0
3:  bgeu    s9, s10, 4f
    sh      s9, C_Q_SELECT(s4)
    sh      s8, C_Q_SIZE(s4)
    sw      s5, C_Q_DESCLO(s4)
    srli    t0, s5, 32
    sw      t0, C_Q_DESCHI(s4)
    sw      s6, C_Q_AVAILLO(s4)
    srli    t0, s6, 32
    sw      t0, C_Q_AVAILHI(s4)
    sw      s7, C_Q_USEDLO(s4)
    srli    t0, s7, 32
    sw      t0, C_Q_USEDHI(s4)
    li      t0, 1
    sh      t0, C_Q_ENABLE(s4)
    addi    s9, s9, 1
    j       3b
4:  li      t0, 0xf
    sb      t0, C_STATUS(s4)
    mv      a0, s10
    LEAVE

/* notify queues 0 .. a0-1 of the selected function, then queues that do not exist */
notify_all:
    li      t1, 0
    li      t2, NOTIFY_OFF
    add     t2, t2, s4
1:  bgeu    t1, a0, 2f
    slli    t0, t1, 2
    add     t0, t0, t2
    sh      t1, 0(t0)
    addi    t1, t1, 1
    j       1b
2:  li      t0, 4 * 63
    add     t0, t0, t2
    sw      zero, 0(t0)
    li      t0, 4 * 1023
    add     t0, t0, t2
    sw      zero, 0(t0)
    ret

/* one case: ring contents a2 (kind), addresses a0 (set), queue size a1 (index in sizes) */
vq_case:
    ENTER
    mv      s5, a0
    mv      s6, a1
    mv      s7, a2
    call    ring_clear
    mv      a0, s7
    call    fill_kind
    la      t0, addr_sets
    slli    t1, s5, 5
    add     t0, t0, t1
    ld      a0, 0(t0)
    ld      a1, 8(t0)
    ld      a2, 16(t0)
    ld      t1, 24(t0)
    beqz    t1, 1f
    li      a1, NOTIFY_OFF              /* avail ring on the function's own notify register */
    add     a1, a1, s4
1:  la      t0, queue_sizes
    slli    t1, s6, 2
    add     t0, t0, t1
    lwu     a3, 0(t0)
    call    vq_setup
    call    notify_all
    LEAVE

/* the selected function in legacy mode: queue PFNs a0, ring contents a1 */
legacy_case:
    ENTER
    mv      s5, a0
    mv      s6, a1
    lhu     s7, C_NUMQ(s4)
    li      t0, 4
    bleu    s7, t0, 1f
    li      s7, 4
1:  call    ring_clear
    mv      a0, s6
    call    fill_kind
    sb      zero, L_STATUS(s2)
    lw      t0, L_HOST_FEATURES(s2)
    sw      t0, L_GUEST_FEATURES(s2)
    li      s8, 0
2:  bgeu    s8, s7, 3f
    sh      s8, L_QUEUE_SEL(s2)
    sw      s5, L_QUEUE_PFN(s2)
    addi    s8, s8, 1
    j       2b
3:  li      t0, 7
    sb      t0, L_STATUS(s2)
    li      s8, 0
4:  bgeu    s8, s7, 5f
    sh      s8, L_QUEUE_NOTIFY(s2)
    addi    s8, s8, 1
    j       4b
5:  li      t0, 1000
    sh      t0, L_QUEUE_NOTIFY(s2)
    lbu     t0, L_ISR(s2)
    LEAVE

phase_queues:
    ENTER
    FOR_DEVS 9f
    li      s5, 0                       /* address set */
1:  li      s6, 0                       /* size */
2:  li      s7, 0                       /* kind */
3:  mv      a0, s5
    mv      a1, s6
    mv      a2, s7
    call    vq_case
    addi    s7, s7, 1
    li      t0, NKINDS
    blt     s7, t0, 3b
    addi    s6, s6, 1
    li      t0, NSIZES
    blt     s6, t0, 2b
    addi    s5, s5, 1
    li      t0, NSETS
    blt     s5, t0, 1b
    /* random rings, valid addresses */
    li      s5, 40
4:  call    rand
    andi    a1, a0, 3                   /* sizes 8, 0, 1, 3 */
    li      a0, 0
    li      a2, NKINDS - 1
    call    vq_case
    addi    s5, s5, -1
    bnez    s5, 4b
    /* queue_enable 0 (a driver error) */
    li      a0, Q
    li      a1, AVAIL
    li      a2, USED
    li      a3, 8
    call    vq_setup
    sh      zero, C_Q_ENABLE(s4)
    /* legacy: every PFN with every ring contents */
    la      s5, legacy_pfns
5:  lwu     s6, 0(s5)
    beqz    s6, 8f
    li      s7, 0
6:  mv      a0, s6
    mv      a1, s7
    call    legacy_case
    addi    s7, s7, 1
    li      t0, NKINDS
    blt     s7, t0, 6b
    addi    s5, s5, 4
    j       5b
8:  sb      zero, C_STATUS(s4)          /* back to modern, reset */
    NEXT_DEV
9:  LEAVE

/* -- phase 4: MSI-X ----------------------------------------------------------------------- */

/* MSI-X table entry a0 of the selected function = {a1 address, a2 data, a3 control} */
msix_entry:
    slli    t0, a0, 4
    add     t0, t0, s3
    sw      a1, 0(t0)
    srli    t1, a1, 32
    sw      t1, 4(t0)
    sw      a2, 8(t0)
    sw      a3, 12(t0)
    ret

/* both vectors (0: the queues, 1: config) to address a0, data a1, unmasked */
msix_both:
    ENTER
    mv      s5, a0
    mv      s6, a1
    li      a0, 0
    mv      a1, s5
    mv      a2, s6
    li      a3, 0
    call    msix_entry
    li      a0, 1
    mv      a1, s5
    mv      a2, s6
    li      a3, 0
    call    msix_entry
    LEAVE

/* a used buffer (a0 = k_valid) or a broken queue (a0 = k_self: config interrupt) with the
   config vector 1 and every queue on vector 0 */
trigger:
    ENTER
    mv      s5, a0
    call    ring_clear
    mv      a0, s5
    call    fill_kind
    li      a0, Q
    li      a1, AVAIL
    li      a2, USED
    li      a3, 8
    call    vq_setup
    mv      s6, a0
    li      t0, 1
    sh      t0, C_MSIX(s4)
    li      s7, 0
1:  bgeu    s7, s6, 2f
    sh      s7, C_Q_SELECT(s4)
    sh      zero, C_Q_MSIX(s4)
    addi    s7, s7, 1
    j       1b
2:  mv      a0, s6
    call    notify_all
    LEAVE

/* both kinds of interrupt */
trigger_both:
    ENTER
    li      a0, KIND_VALID
    call    trigger
    li      a0, KIND_SELF
    call    trigger
    LEAVE

/* messages to a0 with data a1, both interrupts */
aim:
    ENTER
    call    msix_both
    call    trigger_both
    LEAVE

phase_msix:
    ENTER
    FOR_DEVS 9f
    li      a0, 0x11
    li      a1, -1
    call    find_cap
    beqz    a0, 8f
    add     s5, s1, a0
    addi    s5, s5, 2                   /* the message control word */
    li      t0, 0x8000
    sh      t0, 0(s5)                   /* MSI-X enable */
    /* the function's own notify registers: must not loop back into the function */
    li      a0, NOTIFY_OFF
    add     a0, a0, s4
    li      a1, 0
    call    aim
    li      a0, NOTIFY_OFF + 4
    add     a0, a0, s4
    li      a1, 1
    call    aim
    /* the finisher with a FAIL code, the UART, the command register, the MSI-X table and
       control, unmapped space */
    li      a0, TEST
    li      a1, 0x00073333
    call    aim
    li      a0, UART
    li      a1, '!'
    call    aim
    addi    a0, s1, 4
    li      a1, 0
    call    aim
    li      t0, 7
    sh      t0, 4(s1)
    mv      a0, s3
    li      a1, 0
    call    aim
    mv      a0, s5
    li      a1, 0
    call    aim
    li      t0, 0x8000
    sh      t0, 0(s5)
    li      a0, 0xdead00000000
    li      a1, 0x1234
    call    aim
    /* RAM: the message lands */
    li      s6, MSI_BOX
    slli    t0, s0, 3
    add     s6, s6, t0
    sd      zero, 0(s6)
    li      s7, 0xc0de0000
    add     s7, s7, s0
    li      a0, 1
    mv      a1, s6
    mv      a2, s7
    li      a3, 0
    call    msix_entry
    li      a0, 0
    addi    a1, s6, 4
    li      a2, 0xbeef
    li      a3, 0
    call    msix_entry
    li      a0, KIND_SELF
    call    trigger
    lwu     t0, 0(s6)
    bne     t0, s7, 1f
    PUTS    msg_msix_ram
    /* masked: pending, sent on unmask */
1:  sd      zero, 0(s6)
    li      a0, 1
    mv      a1, s6
    mv      a2, s7
    li      a3, 1
    call    msix_entry
    li      a0, KIND_SELF
    call    trigger
    lwu     t0, 0(s6)
    bnez    t0, 2f
    li      t0, 0x800                   /* pending bits */
    add     t0, t0, s3
    lwu     t0, 0(t0)
    andi    t0, t0, 2
    beqz    t0, 2f
    sw      zero, 16 + 12(s3)           /* unmask vector 1 */
    lwu     t0, 0(s6)
    bne     t0, s7, 2f
    PUTS    msg_msix_pending
    /* the function mask */
2:  li      t0, 0xc000
    sh      t0, 0(s5)
    li      a0, KIND_SELF
    call    trigger
    li      t0, 0x8000
    sh      t0, 0(s5)
    /* widths the MSI-X BAR refuses, and 8-byte accesses it takes */
    lb      t0, 0(s3)
    lh      t0, 2(s3)
    sb      zero, 8(s3)
    sh      zero, 12(s3)
    ld      t0, 0(s3)
    sd      t0, 0(s3)
    li      t1, 0x800
    add     t1, t1, s3
    ld      t0, 0(t1)
    sd      t0, 0(t1)
    sw      t0, 0x7fc(s3)
    /* vectors that do not exist */
    li      t0, 5
    sh      t0, C_MSIX(s4)
    lhu     t0, C_MSIX(s4)
    li      t0, 0x8000
    sh      t0, C_MSIX(s4)
    sh      zero, C_Q_SELECT(s4)
    li      t0, 0x7ff
    sh      t0, C_Q_MSIX(s4)
    /* no bus mastering */
    li      t0, 3
    sh      t0, 4(s1)
    call    trigger_both
    li      t0, 7
    sh      t0, 4(s1)
    /* INTx: MSI-X off, INTx disabled and enabled, ISR read */
    sh      zero, 0(s5)
    call    trigger_both
    li      t0, 0x407
    sh      t0, 4(s1)
    li      t0, ISR_OFF
    add     t0, t0, s4
    lbu     t1, 0(t0)
    li      t0, 7
    sh      t0, 4(s1)
    /* random table entries and control words */
    li      s8, 100
3:  call    rand
    mv      s9, a0
    call    rand
    andi    a1, s9, 0x1c
    add     a1, a1, s3
    sw      a0, 0(a1)
    srli    t0, s9, 8
    sh      t0, 0(s5)
    andi    t0, s9, 0x60
    bnez    t0, 4f
    call    trigger_both
4:  addi    s8, s8, -1
    bnez    s8, 3b
    sh      zero, 0(s5)
    sb      zero, C_STATUS(s4)
8:  NEXT_DEV
9:  LEAVE

/* -- data --------------------------------------------------------------------------------- */

    .section .rodata
    .balign 8
kinds:
    .dword  k_none, k_uart, k_self, k_cycle, k_huge, k_ahead, k_head, k_ind_out, k_ind_len
    .dword  k_ind_loop, k_ind_nest, k_next, k_order, k_wrap, k_ecam, k_valid, k_request
    .dword  k_over_desc, k_over_used, k_junk
/* {desc, avail, used, avail on the function's own notify register} */
addr_sets:
    .dword  Q, AVAIL, USED, 0
    .dword  0, 0, 0, 0
    .dword  UART, UART, UART, 0
    .dword  0xfffffffffffff000, 0xfffffffffffff800, 0xfffffffffffffc00, 0
    .dword  RAM_END - 0x10, RAM_END - 4, RAM_END - 2, 0
    .dword  Q, AVAIL, ECAM, 0
    .dword  Q, 0, USED, 1
    .dword  Q, AVAIL, RAM_END - 4, 0
queue_sizes:
    .word   8, 0, 1, 3, 1024, 1025, 0xffff
legacy_pfns:                            /* QueuePFN values (addresses >> 12); 0 ends */
    .word   0x80400, 0xffffffff, 0x10000, 0x87fff, 1, 0x30000, 0
cfg_lengths:
    .word   1, 2, 4, 0, 3, 8, 0xffffffff, 4
/* ECAM offsets (bus << 20 | devfn << 12) swept on other buses; 0 ends */
other_functions:
    .word   1 << 20, (1 << 20) | (8 << 12), (2 << 20) | (0xff << 12), 0x7f << 20
    .word   (0xff << 20) | (0xff << 12), 0

msg_config:         .asciz "pci-fuzz: config\n"
msg_bars:           .asciz "pci-fuzz: bars\n"
msg_queues:         .asciz "pci-fuzz: queues\n"
msg_msix:           .asciz "pci-fuzz: msi-x\n"
msg_msix_ram:       .asciz "pci-fuzz: msi-x to RAM ok\n"
msg_msix_pending:   .asciz "pci-fuzz: msi-x pending ok\n"
msg_traps:          .asciz "pci-fuzz: traps "
msg_alive:          .asciz "pci-fuzz: alive\n"
