/*
 * kvmpy tcg: the RV64GC interpreter core, its public interface and shared structs.
 *
 * One engine (struct tcg_engine, opaque here) holds every hart of a VM, the guest RAM mapping,
 * the machine timer and the MMIO holes; nothing is global, so several VMs can live in one
 * process.  tcg_run() runs one hart for a slice and returns an exit record shaped like KVM's
 * kvm_run: an MMIO access outside RAM (stopped before it retires), an SBI call (built-in
 * firmware mode), a halt (WFI with nothing pending), a kick or the end of the slice.
 *
 * This header is also the cffi cdef (kvmpy/accel/tcg/_build.py reads the part between the
 * CDEF markers), so that part uses plain declarations only.
 */
#ifndef KVMPY_TCG_ENGINE_H
#define KVMPY_TCG_ENGINE_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
typedef struct tcg_engine tcg_engine;

/* tcg_exit.kind */
#define TCG_EXIT_NONE 0       /* the slice ended (or a kick): IntrExit */
#define TCG_EXIT_MMIO 1       /* gpa, size, is_write, value */
#define TCG_EXIT_SBI 2        /* args[0..5] = a0..a5, args[6] = a6 (fid), args[7] = a7 (eid) */
#define TCG_EXIT_HALT 3       /* deadline_ns (-1: none) */
#define TCG_EXIT_STOPPED 4    /* the hart is powered off (SBI HSM) */
#define TCG_EXIT_TRACE 5      /* the trace buffer is full: drain it and run again */
#define TCG_EXIT_ERROR 6      /* message */
#define TCG_EXIT_DEBUG 7      /* value = TCG_DEBUG_*; a watchpoint: gpa = its address, size =
                                 the access's, is_write = its TCG_WATCH_* type, args[0] = the
                                 accessed virtual address, args[1] = its index */

/* TCG_EXIT_DEBUG reasons.  A breakpoint and a watchpoint stop before the instruction (or the
 * access) executes; a single step stops after one instruction, or after a trap was taken
 * instead (pc is then the trap vector). */
#define TCG_DEBUG_BREAKPOINT 1
#define TCG_DEBUG_STEP 2
#define TCG_DEBUG_WATCHPOINT 3

/* watchpoint types (bit 0: writes, bit 1: reads) */
#define TCG_WATCH_WRITE 1
#define TCG_WATCH_READ 2
#define TCG_WATCH_ACCESS 3
#define TCG_MAX_BREAKPOINTS 256
#define TCG_MAX_WATCHPOINTS 32

typedef struct tcg_exit {
    uint32_t kind;
    uint32_t size;
    uint32_t is_write;
    uint32_t pad;
    uint64_t gpa;
    uint64_t value;
    uint64_t args[8];
    int64_t deadline_ns;
    char message[96];
} tcg_exit;

/* Trace record kinds (tcg_set_trace flags are 1 << kind). */
#define TCG_TRACE_INT 0       /* pc, a = cause (bit 63: interrupt), b = tval, c = from/to priv */
#define TCG_TRACE_IN_ASM 1    /* pc, a = instruction bits, c = length: one per decoded insn */
#define TCG_TRACE_EXEC 2      /* pc: one per executed block */

typedef struct tcg_trace_rec {
    uint32_t kind;
    uint32_t hart;
    uint64_t pc;
    uint64_t a;
    uint64_t b;
    uint64_t c;
} tcg_trace_rec;

/* Register ids for tcg_get_reg / tcg_set_reg (CSRs: TCG_REG_CSR + number, accessed with
 * M-mode rights and no side effects).  MTIMECMP is the hart's ACLINT compare (raises MTIP);
 * SBI_TIMECMP is the built-in firmware's SBI TIME compare (raises STIP, no M-mode code
 * involved); STOPPED is the SBI HSM power state; INSTRET counts retired instructions. */
#define TCG_REG_X0 0
#define TCG_REG_F0 32
#define TCG_REG_PC 64
#define TCG_REG_PRIV 65
#define TCG_REG_MTIMECMP 66
#define TCG_REG_SBI_TIMECMP 67
#define TCG_REG_STOPPED 68
#define TCG_REG_INSTRET 69
#define TCG_REG_HALTED 70     /* read-only: in WFI, waiting for an interrupt */
#define TCG_REG_CSR 4096

/* Harts of one engine run on one thread (round-robin) unless tcg_set_multithread turned
 * thread=multi on (before any tcg_run; -1 with -icount): then each hart may run tcg_run on a
 * thread of its own, WFI sleeps inside tcg_run (until an interrupt or a kick), and while a
 * hart runs, other threads may only call tcg_kick, tcg_set_irq, tcg_flush_tlb (waits until a
 * running hart has flushed), tcg_set_reg of MTIMECMP / SBI_TIMECMP, tcg_get_reg and
 * tcg_read_mtime on it; everything else needs the harts stopped.  In either mode tcg_kick
 * and tcg_set_irq may be called from any thread at any time. */
tcg_engine *tcg_engine_new(uint8_t *ram, uint64_t ram_base, uint64_t ram_size, int num_harts);
void tcg_engine_free(tcg_engine *e);
int tcg_add_memory(tcg_engine *e, uint64_t gpa, uint8_t *host, uint64_t size, int writable);
int tcg_add_mmio_hole(tcg_engine *e, uint64_t gpa, uint64_t size);
int tcg_add_mmio_window(tcg_engine *e, uint64_t gpa, uint64_t size);
/* Device windows served in C (kvmpy/hw/c_mmio.h; c_mmio.c): a load or store that would exit
 * as MMIO is first offered to the window's function, and completes at once when it accepts
 * it.  The table is the caller's, and outlives its use by the engine; set (or NULL) while
 * no hart runs; tcg_c_mmio_add returns -1 when full or on an overlap.  fn is a c_mmio_fn. */
typedef struct c_mmio_table tcg_c_mmio;
tcg_c_mmio *tcg_c_mmio_new(void);
void tcg_c_mmio_free(tcg_c_mmio *t);
int tcg_c_mmio_add(tcg_c_mmio *t, uint64_t gpa, uint64_t size, void *fn, void *opaque);
void tcg_set_c_mmio(tcg_engine *e, tcg_c_mmio *t);
void tcg_set_builtin_firmware(tcg_engine *e, int on);
int tcg_set_multithread(tcg_engine *e, int on);
void tcg_set_icount(tcg_engine *e, int shift);
/* The translating tier (x86-64 hosts): tcg_jit_available says whether it is built here;
 * tcg_set_jit turns it on or off (off: every block is interpreted) and returns whether it
 * is on.  Breakpoints, watchpoints, single steps and in_asm/exec tracing run on the
 * interpreter meanwhile. */
int tcg_jit_available(void);
int tcg_set_jit(tcg_engine *e, int on);
uint64_t tcg_jit_translated(tcg_engine *e); /* blocks translated so far */
/* How many times a block is looked up (interpreted) before it is translated (default 32;
 * 1: every block at once, which tests use to run all code translated). */
void tcg_set_jit_threshold(tcg_engine *e, uint32_t n);
void tcg_set_trace(tcg_engine *e, uint32_t flags);
size_t tcg_trace_drain(tcg_engine *e, tcg_trace_rec *out, size_t max);

int tcg_run(tcg_engine *e, int hart, uint64_t max_insns, tcg_exit *out);
void tcg_complete_mmio_read(tcg_engine *e, int hart, uint64_t value);
void tcg_complete_sbi(tcg_engine *e, int hart, int64_t error, int64_t value);
void tcg_kick(tcg_engine *e, int hart);
/* Forget a kick that arrived while the hart was not running (the pause it was for is over). */
void tcg_cancel_kick(tcg_engine *e, int hart);
void tcg_set_irq(tcg_engine *e, int hart, int irq, int level);
int tcg_get_reg(tcg_engine *e, int hart, int reg, uint64_t *value);
int tcg_set_reg(tcg_engine *e, int hart, int reg, uint64_t value);
void tcg_reset_hart(tcg_engine *e, int hart, uint64_t pc, int priv, uint64_t a0, uint64_t a1,
                    int stopped);
void tcg_flush_tlb(tcg_engine *e, int hart);
uint64_t tcg_read_mtime(tcg_engine *e);
void tcg_write_mtime(tcg_engine *e, uint64_t value);
int64_t tcg_mtime_to_ns(tcg_engine *e, uint64_t mtime);

const char *tcg_isa_extension(int index);
uint64_t tcg_misa(void);
int tcg_csr_number(const char *name);

/* Debugger support (gdbstub).  Breakpoints are virtual pcs checked before each instruction of
 * every hart; watchpoints are virtual address ranges checked on every load/store (their pages
 * are kept out of the soft TLB).  Both replace the whole previous set; call them while no hart
 * runs.  With no breakpoint, watchpoint or step set, the interpreter runs as without them.
 * Return -1 when n exceeds TCG_MAX_*. */
int tcg_set_breakpoints(tcg_engine *e, const uint64_t *pcs, int n);
int tcg_set_watchpoints(tcg_engine *e, const uint64_t *addrs, const uint64_t *lens,
                        const uint32_t *types, int n);
/* Single-step mode of one hart: tcg_run stops (TCG_DEBUG_STEP) once one instruction retired
 * or a trap was taken since this call; interrupts are not taken meanwhile, and breakpoints are
 * not checked (QEMU's SSTEP_NOIRQ, and "single-step overrides breakpoints"). */
void tcg_set_single_step(tcg_engine *e, int hart, int on);

/* VM state (save/restore, migration): the whole architectural state of a hart, with the
 * machine-level extras that make a hart resume exactly (device-driven mip pins, timer
 * compares, HSM stopped, WFI, LR/SC reservation, retired-instruction count).  Call while no
 * hart runs.  tcg_set_hart_state returns -1 for an invalid privilege or tselect; it drops
 * the decoded code of the whole engine, as RAM is expected to have been replaced. */
#define TCG_NUM_PMP 16
#define TCG_NUM_TRIGGERS 2
typedef struct tcg_hart_state {
    uint64_t x[32];
    uint64_t f[32];
    uint64_t pc, priv, fflags, frm;
    uint64_t mstatus, medeleg, mideleg, mie, mtvec, mscratch, mepc, mcause, mtval;
    uint64_t stvec, sscratch, sepc, scause, stval, satp;
    uint64_t mcounteren, scounteren, menvcfg, senvcfg, mcountinhibit;
    uint64_t mip_sw;     /* software-set SSIP, STIP, SEIP */
    uint64_t mip_pins;   /* levels driven by devices */
    uint64_t mtimecmp, stimecmp, sbi_timecmp;
    uint64_t mcycle, minstret, insns;
    uint64_t pmpcfg[16], pmpaddr[16];
    uint64_t tselect, tdata1[2], tdata2[2], tcontrol;
    uint64_t stopped, halted, resv_valid, resv_pa;
} tcg_hart_state;
int tcg_get_hart_state(tcg_engine *e, int hart, tcg_hart_state *s);
int tcg_set_hart_state(tcg_engine *e, int hart, const tcg_hart_state *s);

/* Dirty logging of RAM for live migration: one bit per page (bit n of byte n / 8, least
 * significant first, as KVM_GET_DIRTY_LOG).  collect copies the log to out (at least
 * tcg_dirty_log_bytes) and clears it; call it while no hart runs. */
int tcg_dirty_log_start(tcg_engine *e);
size_t tcg_dirty_log_bytes(tcg_engine *e);
int tcg_dirty_log_collect(tcg_engine *e, uint8_t *out, size_t len);
void tcg_dirty_log_stop(tcg_engine *e);
/* CDEF-END */

#endif
