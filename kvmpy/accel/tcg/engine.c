/*
 * kvmpy tcg: the RV64GC interpreter core.
 *
 * RV64IMAFDC + Zicsr, Zifencei, Zicntr, Zihpm, Zba, Zbb, Zbs, Zihintpause, Sstc; privileged
 * architecture 1.12 (M/S/U, PMP, Sv39/48/57).  Everything hangs off struct tcg_engine: no global
 * mutable state, several VMs per process.
 *
 * Execution model.  Instructions are decoded once into blocks of ops (struct op) keyed by
 * guest-physical and virtual pc; a block ends at a jump, a system instruction, a CSR access
 * or the end of its page, and runs by threaded dispatch.  Conditional branches leave the block
 * only when taken.  Pending interrupts, kicks and timers are examined between blocks, only when
 * the `attention` flag is set or the instruction count reaches `limit` (the end of the slice or
 * the next timer check), so the hot path polls nothing.  Loads and stores go through a software
 * TLB (per privilege flavour, per access type) whose entries hold host-pointer addends; a page
 * that holds decoded code, an MMIO hole or a reservation of another hart is never writable
 * through the TLB, so stores to it take the slow path, which invalidates decoded blocks and
 * breaks reservations.
 *
 * Misaligned loads and stores to RAM are emulated here (as if by bytes), the behaviour Linux
 * and OpenSBI accept; misaligned atomics raise address-misaligned exceptions.
 *
 * On x86-64 hosts a block looked up often enough is translated to host code (jit_x86.c,
 * included below, before the interpreter loop); run_loop enters translations at next_block
 * and they chain among themselves, honouring the same limit, attention flag, TLB and code
 * invalidation as the interpreted blocks.  `-accel tcg,jit=off` interprets everything.
 *
 * Threads.  With thread=single every hart runs on one thread, in turns.  With thread=multi
 * (tcg_set_multithread) each hart runs tcg_run on a thread of its own: the code cache and the
 * translations are shared under code_mu (taken off the hot paths only), forgetting all code
 * waits for an exclusive section (mt_enter/mt_leave), AMOs and SC are host atomics, WFI sleeps
 * in mt_halt_wait, and requests from other threads (timer compares, TLB flushes) are served
 * by the hart's own thread in service().
 *
 * Debugger support costs nothing while unused.  With breakpoints set, blocks end before each
 * breakpoint, are not chained, and a hart goes through service() before each block, which
 * compares pc with the breakpoints; a single step runs one-instruction blocks and ends once an
 * instruction retired or a trap was taken.  Pages holding a watchpoint never enter the data TLB, so their loads and stores take
 * mem_slow(), which stops before a matching access.
 *
 * The guest's own Sdtrig triggers use the same paths and cost nothing while none is armed:
 * with an execute trigger armed, the hart runs one-instruction blocks and service() before
 * each compares pc with the triggers (taking a breakpoint exception, not stopping); pages a
 * load/store trigger may match stay out of that hart's data TLB, and mem_slow() and the
 * atomics check the triggers before the access.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine.h"
#include "c_mmio.h"

#include <fenv.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__GNUC__)
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define USE_COMPUTED_GOTO 1
#define ATOMIC_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ATOMIC_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ATOMIC_XCHG(p, v) __atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)
#define ATOMIC_OR(p, v) __atomic_fetch_or((p), (v), __ATOMIC_ACQ_REL)
#define ATOMIC_AND(p, v) __atomic_fetch_and((p), (v), __ATOMIC_ACQ_REL)
#define FP_BARRIER(x) __asm__ volatile("" : "+m"(x))
#else
#define likely(x) (x)
#define unlikely(x) (x)
#define USE_COMPUTED_GOTO 0
#define ATOMIC_LOAD(p) (*(volatile __typeof__(*(p)) *)(p))
#define ATOMIC_STORE(p, v) (*(p) = (v))
#define ATOMIC_XCHG(p, v) atomic_xchg_fallback((p), (v))
#define ATOMIC_OR(p, v) (*(p) |= (v))
#define ATOMIC_AND(p, v) (*(p) &= (v))
#define FP_BARRIER(x) ((void)0)
#endif

typedef __int128 int128_t;
typedef unsigned __int128 uint128_t;

/* ---------------------------------------------------------------- the ISA table ---------- */

/* The one list of what this core implements: misa and the device tree's riscv,isa both come
 * from here (single letters first, in canonical order, then multi-letter extensions). */
static const char *const isa_table[] = {
    "i", "m", "a", "f", "d", "c",
    "zicntr", "zicsr", "zifencei", "zihintpause", "zihpm",
    "zba", "zbb", "zbs", "sstc",
};

#define ISA_COUNT ((int)(sizeof(isa_table) / sizeof(isa_table[0])))

const char *tcg_isa_extension(int index)
{
    return index >= 0 && index < ISA_COUNT ? isa_table[index] : NULL;
}

uint64_t tcg_misa(void)
{
    uint64_t misa = (uint64_t)2 << 62; /* MXL = 64 */
    for (int i = 0; i < ISA_COUNT; i++)
        if (isa_table[i][1] == 0)
            misa |= (uint64_t)1 << (isa_table[i][0] - 'a');
    return misa | (1u << ('s' - 'a')) | (1u << ('u' - 'a'));
}

/* ---------------------------------------------------------------- constants ------------- */

enum { PRV_U = 0, PRV_S = 1, PRV_M = 3 };

#define MSTATUS_SIE (1ull << 1)
#define MSTATUS_MIE (1ull << 3)
#define MSTATUS_SPIE (1ull << 5)
#define MSTATUS_MPIE (1ull << 7)
#define MSTATUS_SPP (1ull << 8)
#define MSTATUS_MPP (3ull << 11)
#define MSTATUS_FS (3ull << 13)
#define MSTATUS_MPRV (1ull << 17)
#define MSTATUS_SUM (1ull << 18)
#define MSTATUS_MXR (1ull << 19)
#define MSTATUS_TVM (1ull << 20)
#define MSTATUS_TW (1ull << 21)
#define MSTATUS_TSR (1ull << 22)
#define MSTATUS_UXL (3ull << 32)
#define MSTATUS_SXL (3ull << 34)
#define MSTATUS_SD (1ull << 63)
#define MSTATUS_WMASK (MSTATUS_SIE | MSTATUS_MIE | MSTATUS_SPIE | MSTATUS_MPIE | MSTATUS_SPP | \
                       MSTATUS_MPP | MSTATUS_FS | MSTATUS_MPRV | MSTATUS_SUM | MSTATUS_MXR | \
                       MSTATUS_TVM | MSTATUS_TW | MSTATUS_TSR)
#define SSTATUS_MASK (MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_FS | MSTATUS_SUM | \
                      MSTATUS_MXR | MSTATUS_UXL | MSTATUS_SD)
#define SSTATUS_WMASK (MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_FS | MSTATUS_SUM | \
                       MSTATUS_MXR)

#define MIP_SSIP (1ull << 1)
#define MIP_MSIP (1ull << 3)
#define MIP_STIP (1ull << 5)
#define MIP_MTIP (1ull << 7)
#define MIP_SEIP (1ull << 9)
#define MIP_MEIP (1ull << 11)
#define S_INTS (MIP_SSIP | MIP_STIP | MIP_SEIP)
#define ALL_INTS (S_INTS | MIP_MSIP | MIP_MTIP | MIP_MEIP)

#define MENVCFG_FIOM 1ull
#define MENVCFG_STCE (1ull << 63)

enum {
    EXC_INSN_MISALIGNED = 0, EXC_INSN_ACCESS = 1, EXC_ILLEGAL = 2, EXC_BREAKPOINT = 3,
    EXC_LOAD_MISALIGNED = 4, EXC_LOAD_ACCESS = 5, EXC_STORE_MISALIGNED = 6, EXC_STORE_ACCESS = 7,
    EXC_ECALL_U = 8, EXC_ECALL_S = 9, EXC_ECALL_M = 11, EXC_INSN_PAGE = 12, EXC_LOAD_PAGE = 13,
    EXC_STORE_PAGE = 15,
};
#define MEDELEG_MASK 0xB3FFull /* everything delegable except ecall from M (11) */

enum { ACC_R = 0, ACC_W = 1, ACC_X = 2 };

#define PTE_V 1u
#define PTE_R 2u
#define PTE_W 4u
#define PTE_X 8u
#define PTE_U 16u
#define PTE_G 32u
#define PTE_A 64u
#define PTE_D 128u

#define PMP_R 1u
#define PMP_W 2u
#define PMP_X 4u
#define PMP_A 0x18u
#define PMP_L 0x80u
#define NUM_PMP 16

/* Sdtrig (debug spec 1.0, as QEMU 7.2: two triggers of type 2 at reset) */
#define NUM_TRIGGERS 2
#define TD_TYPE(v) ((unsigned)((v) >> 60))
#define TT_MCONTROL 2u
#define TT_MCONTROL6 6u
#define TT_DISABLED 15u
#define MC_LOAD 1u
#define MC_STORE 2u
#define MC_EXEC 4u
#define MC_U 8u
#define MC_S 16u
#define MC_M 64u
#define MC_MODES (MC_U | MC_S | MC_M)
#define MC2_SIZE ((3ull << 21) | (3ull << 16)) /* sizehi:sizelo */
#define MC2_HIT (1ull << 20)
#define MC6_SIZE (15ull << 16)
#define MC6_HIT (1ull << 22)
#define TCONTROL_MTE 8u
#define TCONTROL_MPTE 128u
#define TINFO_VALUE ((1ull << 24) | (1u << TT_MCONTROL) | (1u << TT_MCONTROL6) | (1u << TT_DISABLED))

#define PAGE_SIZE 4096u
#define PAGE_MASK (~(uint64_t)0xfff)

#define TLB_BITS 8
#define TLB_SIZE (1u << TLB_BITS)
#define TLB_MASK (TLB_SIZE - 1)
#define TLB_MODES 4 /* U, S, S+SUM, M */
#define JC_SIZE 2048u
#define BHASH_SIZE 65536u
#define BLOCK_MAX 64
#define ARENA_SIZE (32u << 20)
#define TIMER_CHECK_INTERVAL 16384
#define TRACE_CAP 8192u
#define TRACE_MARGIN 160u
#define MAX_REGIONS 8
#define MAX_HOLES 8
#define NS_PER_TICK 100 /* 10 MHz timebase */

/* Result of slow paths. */
enum { ST_OK = 0, ST_TRAP = 1, ST_EXIT = 2 };

/* What a hart is waiting for across an exit. */
enum { PEND_NONE = 0, PEND_LOAD, PEND_STORE, PEND_SBI };

/* ---------------------------------------------------------------- ops ------------------- */

#define OP_LIST(X) \
    X(end) X(illegal) X(auipc) X(jal) X(jalr) \
    X(beq) X(bne) X(blt) X(bge) X(bltu) X(bgeu) \
    X(lb) X(lh) X(lw) X(ld) X(lbu) X(lhu) X(lwu) X(sb) X(sh) X(sw) X(sd) \
    X(flw) X(fld) X(fsw) X(fsd) \
    X(addi) X(slti) X(sltiu) X(xori) X(ori) X(andi) X(slli) X(srli) X(srai) \
    X(add) X(sub) X(sll) X(slt) X(sltu) X(xor) X(srl) X(sra) X(or) X(and) \
    X(addiw) X(slliw) X(srliw) X(sraiw) X(addw) X(subw) X(sllw) X(srlw) X(sraw) \
    X(mul) X(mulh) X(mulhsu) X(mulhu) X(div) X(divu) X(rem) X(remu) \
    X(mulw) X(divw) X(divuw) X(remw) X(remuw) \
    X(amo) X(fp) X(nop) X(mv) X(li) \
    X(sh1add) X(sh2add) X(sh3add) X(adduw) X(sh1adduw) X(sh2adduw) X(sh3adduw) X(slliuw) \
    X(andn) X(orn) X(xnor) X(clz) X(clzw) X(ctz) X(ctzw) X(cpop) X(cpopw) \
    X(max) X(maxu) X(min) X(minu) X(sextb) X(sexth) X(zexth) \
    X(rol) X(rolw) X(ror) X(rori) X(roriw) X(rorw) X(orcb) X(rev8) \
    X(bclr) X(bclri) X(bext) X(bexti) X(binv) X(binvi) X(bset) X(bseti) \
    X(system) \
    X(fadd_d) X(fsub_d) X(fmul_d) X(fdiv_d) X(fadd_s) X(fsub_s) X(fmul_s) X(fdiv_s) \
    X(fmadd_d) X(fmsub_d) X(fnmsub_d) X(fnmadd_d) X(fmadd_s) X(fmsub_s) X(fnmsub_s) \
    X(fnmadd_s) X(fmv_d) X(fle_d) X(flt_d) X(feq_d) X(fcvt_d_w) X(fence)

#define OP_ENUM(n) OP_##n,
enum { OP_LIST(OP_ENUM) OP_COUNT };

/* System-class ops (OP_system), in op.rm */
enum { SYS_ECALL, SYS_EBREAK, SYS_MRET, SYS_SRET, SYS_WFI, SYS_SFENCE, SYS_FENCEI, SYS_PAUSE,
       SYS_CSRRW, SYS_CSRRS, SYS_CSRRC, SYS_CSRRWI, SYS_CSRRSI, SYS_CSRRCI };

typedef struct op {
    const void *handler; /* label address (computed goto), filled when the block is linked */
    int64_t imm;         /* immediate; raw instruction for fp; csr number for csr ops */
    uint64_t pc;         /* this instruction's pc (for end: the fall-through pc) */
    struct block *chain; /* taken/fall-through successor in the same page, once known */
    uint8_t rd, rs1, rs2, rs3;
    uint8_t len;
    uint8_t rm;
    uint16_t kind;
} op;

typedef struct block {
    uint64_t vpc, ppc;
    struct block *hnext; /* hash chain */
    struct block *pnext; /* blocks of the same physical page */
    const uint8_t *code; /* copy of the code bytes, for fence.i revalidation */
    uint32_t n;          /* instructions (ops minus the end op) */
    uint32_t nbytes;
    uint32_t epoch;
    uint8_t linked, valid;
    uint32_t jit_hot;    /* times looked up, until translated (jit_x86.c) */
    void *jit;           /* its translation, or NULL */
    op ops[];
} block;

typedef struct tlb_entry {
    uint64_t tag;      /* virtual page (low 12 bits zero), or ~0 */
    uintptr_t addend;  /* host address = va + addend */
    uint64_t ppage;    /* guest-physical page */
} tlb_entry;

typedef struct jc_entry {
    uint64_t key;
    block *b;
    uint64_t gen;
} jc_entry;

typedef struct region {
    uint64_t base, size;
    uint8_t *host;
    int writable;
} region;

typedef struct hart {
    uint64_t x[33]; /* x[32] is the sink for writes to x0 */
    uint64_t f[32];
    uint64_t pc;
    int priv;
    int id;
    struct tcg_engine *e;

    /* CSRs */
    uint64_t mstatus, medeleg, mideleg, mie, mtvec, mscratch, mepc, mcause, mtval;
    uint64_t stvec, sscratch, sepc, scause, stval, satp;
    uint64_t mcounteren, scounteren, menvcfg, senvcfg, mcountinhibit;
    uint64_t mip_sw;    /* software-writable bits: SSIP, STIP, SEIP */
    uint64_t mip_timer; /* MTIP/STIP computed from the timer compares */
    uint64_t mip_pins;  /* levels driven by devices (atomic) */
    uint64_t mip_edge;  /* SSIP raised by devices/IPIs, merged into mip_sw (atomic) */
    uint32_t fflags, frm;
    uint64_t mtimecmp, stimecmp, sbi_timecmp;
    uint64_t cycle_off, instret_off, cycle_frozen, instret_frozen;
    uint8_t pmpcfg[NUM_PMP];
    uint64_t pmpaddr[NUM_PMP];
    int pmp_active;

    /* execution state */
    uint64_t insns;       /* instructions retired */
    uint64_t limit;       /* service point: min(run_end, next_timer_check) */
    uint64_t run_end;
    uint64_t run_start;
    uint64_t next_timer_check;
    uint32_t attention;   /* atomic: look at kicks/irqs/timers before the next block */
    uint32_t kicked;      /* atomic */
    /* thread=multi: requests from other threads, served by this hart's own thread */
    uint32_t timer_req;     /* atomic: a timer compare changed */
    uint32_t tlb_flush_req; /* atomic: flush the TLB (a remote sfence) */
    uint32_t in_exec;       /* atomic: inside run_loop and not asleep */
    uint32_t sleeping;      /* atomic: waiting in WFI on sleep_cv */
    pthread_mutex_t sleep_mu;
    pthread_cond_t sleep_cv;
    int stopped;
    int halted;
    int dmode;            /* data TLB flavour */
    tlb_entry *tlb_r_cur, *tlb_w_cur;

    /* pending exit completion */
    int pend;
    uint8_t pend_rd, pend_size, pend_signed, pend_fp, pend_len;

    /* LR/SC */
    int resv_valid;
    uint64_t resv_pa;
    uint64_t resv_val;   /* what LR loaded: SC compares and swaps it (thread=multi) */
    int resv_watch;
    int single_step; /* one-instruction blocks: run_small, a step or an execute trigger */

    /* debugger: one instruction per block with service() before each (breakpoints, step) */
    int dbg_block;
    int dbg_step;         /* tcg_set_single_step */
    int step_trapped;     /* a trap was taken since the step began */
    uint64_t step_mark;   /* insns when the step began */

    tcg_exit *exit;

    uint64_t jc_gen;
    jc_entry jc[JC_SIZE];

    int run_small; /* run() asked for fewer instructions than a block may hold */
    /* Sdtrig: tselect, tdata1/tdata2 of each trigger, tcontrol */
    uint64_t tselect, tdata1[NUM_TRIGGERS], tdata2[NUM_TRIGGERS], tcontrol;
    int trig_x;  /* an execute trigger is armed: one-insn blocks, service() checks */
    int trig_rw; /* a load/store trigger is armed: its pages stay out of the TLB */
    tlb_entry tlb_r[TLB_MODES][TLB_SIZE];
    tlb_entry tlb_w[TLB_MODES][TLB_SIZE];
    tlb_entry tlb_x[TLB_MODES][TLB_SIZE];
    int tlb_has_super;
    union {
        block b;
        uint8_t bytes[sizeof(block) + 2 * sizeof(op)];
    } scratch;
    uint8_t scratch_code[4];
} hart;

struct tcg_engine {
    uint8_t *ram;
    uint64_t ram_base, ram_size;
    int num_harts;
    hart **harts;
    region regions[MAX_REGIONS];
    int nregions;
    uint64_t hole_base[MAX_HOLES], hole_size[MAX_HOLES];
    uint64_t *win_base, *win_size; /* MMIO windows; none declared: all of it exits */
    int nwins;
    int nholes;
    uint8_t *hole_pages; /* per RAM page: contains an MMIO hole */
    int builtin_fw;
    int icount_shift;     /* -1: real time */
    uint64_t icount_acc;  /* instructions retired by all harts (icount mode) */
    int64_t mtime_offset;
    uint32_t trace_flags;
    tcg_trace_rec *trace;
    size_t trace_len;

    /* decoded code */
    uint8_t *arena;
    size_t arena_used;
    block **bhash;
    block **page_blocks; /* per RAM page */
    uint32_t code_epoch;
    uint64_t gen_counter;
    uint64_t flush_gen; /* bumped when every block is forgotten (ops may be reused) */

    /* debugger (tcg_set_breakpoints / tcg_set_watchpoints) */
    int nbp, nwp;
    uint64_t bp[TCG_MAX_BREAKPOINTS];
    uint64_t wp_addr[TCG_MAX_WATCHPOINTS], wp_len[TCG_MAX_WATCHPOINTS];
    uint32_t wp_type[TCG_MAX_WATCHPOINTS];

    /* dirty logging (live migration): one bit per RAM page, NULL when off.  A write TLB
     * entry is only installed by a store that marked its page, and collecting the log drops
     * every write entry, so stores through the TLB need no check. */
    uint64_t *dirty;

    /* the translating tier (jit_x86.c) */
    struct jit_state *jit;
    int jit_on;

    struct c_mmio_table *c_mmio; /* device windows served in C (tcg_set_c_mmio), or NULL */

    /* thread=multi (tcg_set_multithread): every hart runs tcg_run on its own thread.
     * code_mu guards the decoded code and the translations (lookups that miss the jump
     * cache, decoding, invalidation, translating, chain patching); the hot paths take no
     * lock.  Forgetting all code (code_flush_all) reuses memory other harts may be running,
     * so it is requested (flush_req) and done by one hart while every other hart waits
     * outside run_loop: the exclusive section of excl_mu/excl_cv, which counts the harts
     * running (inside run_loop and awake). */
    int mt;
    pthread_mutex_t code_mu;
    pthread_mutex_t trace_mu;
    pthread_mutex_t excl_mu;
    pthread_cond_t excl_cv;
    int excl_running;
    uint32_t excl_pending; /* atomic */
    uint32_t flush_req;    /* atomic */
};

static void jit_init(tcg_engine *e);
static void jit_free(tcg_engine *e);
static void jit_reset(tcg_engine *e);

/* thread=multi locking; no-ops with every hart on one thread */
static inline void code_lock(tcg_engine *e)
{
    if (e->mt)
        pthread_mutex_lock(&e->code_mu);
}

static inline void code_unlock(tcg_engine *e)
{
    if (e->mt)
        pthread_mutex_unlock(&e->code_mu);
}

/* ---------------------------------------------------------------- small helpers --------- */

static inline uint64_t sext32(uint64_t v) { return (uint64_t)(int64_t)(int32_t)v; }

/* A guest load or store of 1, 2, 4 or 8 aligned bytes of RAM: single-copy atomic, as RVWMO
 * requires (with thread=multi a hart on another thread never sees half a store; memcpy may
 * copy byte by byte on hosts without fast misaligned access).  A plain load or store. */
static inline uint64_t ram_load(const void *p, unsigned size)
{
    switch (size) {
    case 1: return __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED);
    case 2: return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
    case 4: return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
    default: return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
    }
}

static inline void ram_store(void *p, unsigned size, uint64_t v)
{
    switch (size) {
    case 1: __atomic_store_n((uint8_t *)p, (uint8_t)v, __ATOMIC_RELAXED); break;
    case 2: __atomic_store_n((uint16_t *)p, (uint16_t)v, __ATOMIC_RELAXED); break;
    case 4: __atomic_store_n((uint32_t *)p, (uint32_t)v, __ATOMIC_RELAXED); break;
    default: __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED); break;
    }
}

static int64_t host_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t mtime_now(tcg_engine *e, const hart *running)
{
    if (e->icount_shift >= 0) {
        uint64_t n = e->icount_acc;
        if (running)
            n += running->insns - running->run_start;
        return ((n << e->icount_shift) / NS_PER_TICK) + (uint64_t)e->mtime_offset;
    }
    return (uint64_t)(host_ns() / NS_PER_TICK) + (uint64_t)e->mtime_offset;
}

static void trace_emit(tcg_engine *e, uint32_t kind, int hartid, uint64_t pc, uint64_t a,
                       uint64_t b, uint64_t c)
{
    if (e->mt)
        pthread_mutex_lock(&e->trace_mu);
    if (e->trace_len < TRACE_CAP) {
        tcg_trace_rec *r = &e->trace[e->trace_len++];
        r->kind = kind;
        r->hart = (uint32_t)hartid;
        r->pc = pc;
        r->a = a;
        r->b = b;
        r->c = c;
    }
    if (e->mt)
        pthread_mutex_unlock(&e->trace_mu);
}

static inline void set_attention(hart *h) { ATOMIC_STORE(&h->attention, 1u); }

/* ---------------------------------------------------------------- TLB and jump cache ---- */

static void jc_flush(hart *h) { h->jc_gen = __atomic_add_fetch(&h->e->gen_counter, 1, __ATOMIC_RELAXED); }

static void tlb_flush_all(hart *h)
{
    memset(h->tlb_r, 0xff, sizeof(h->tlb_r));
    memset(h->tlb_w, 0xff, sizeof(h->tlb_w));
    memset(h->tlb_x, 0xff, sizeof(h->tlb_x));
    h->tlb_has_super = 0;
    jc_flush(h);
}

static void tlb_flush_va(hart *h, uint64_t va)
{
    if (h->tlb_has_super) {
        tlb_flush_all(h);
        return;
    }
    unsigned i = (unsigned)(va >> 12) & TLB_MASK;
    for (int m = 0; m < TLB_MODES; m++) {
        h->tlb_r[m][i].tag = ~(uint64_t)0;
        h->tlb_w[m][i].tag = ~(uint64_t)0;
        h->tlb_x[m][i].tag = ~(uint64_t)0;
    }
    /* the jump cache keeps the other pages (a key is pc ^ priv << 56: bits 56 and up are
     * left out of the comparison, which may drop a few more) */
    for (unsigned k = 0; k < JC_SIZE; k++)
        if ((((h->jc[k].key ^ va) & PAGE_MASK) & ((1ull << 56) - 1)) == 0)
            h->jc[k].key = ~(uint64_t)0;
}

/* Drop every writable TLB entry (of every hart) that maps guest-physical page `ppage`. */
static void tlb_drop_writable_page(tcg_engine *e, uint64_t ppage)
{
    for (int k = 0; k < e->num_harts; k++) {
        hart *h = e->harts[k];
        for (int m = 0; m < TLB_MODES; m++)
            for (unsigned i = 0; i < TLB_SIZE; i++)
                if (h->tlb_w[m][i].ppage == ppage)
                    h->tlb_w[m][i].tag = ~(uint64_t)0;
    }
}

static void update_dmode(hart *h)
{
    int p = h->priv;
    if (p == PRV_M && (h->mstatus & MSTATUS_MPRV))
        p = (int)((h->mstatus >> 11) & 3);
    int m;
    if (p == PRV_M)
        m = 3;
    else if (p == PRV_S)
        m = (h->mstatus & MSTATUS_SUM) ? 2 : 1;
    else
        m = 0;
    h->dmode = m;
    h->tlb_r_cur = h->tlb_r[m];
    h->tlb_w_cur = h->tlb_w[m];
}

static inline int fetch_mode(int priv) { return priv == PRV_M ? 3 : priv == PRV_S ? 1 : 0; }

/* ---------------------------------------------------------------- physical memory ------- */

/* Host pointer of guest-physical `pa` when it is RAM (or an added memory region), else NULL;
 * `*avail` is how many bytes from pa stay in that memory. */
static uint8_t *phys_host(tcg_engine *e, uint64_t pa, uint64_t *avail, int *writable)
{
    if (pa - e->ram_base < e->ram_size) {
        *avail = e->ram_size - (pa - e->ram_base);
        *writable = 1;
        return e->ram + (pa - e->ram_base);
    }
    for (int i = 0; i < e->nregions; i++) {
        region *r = &e->regions[i];
        if (pa - r->base < r->size) {
            *avail = r->size - (pa - r->base);
            *writable = r->writable;
            return r->host + (pa - r->base);
        }
    }
    return NULL;
}

static int in_hole(tcg_engine *e, uint64_t pa, unsigned size)
{
    for (int i = 0; i < e->nholes; i++)
        if (pa < e->hole_base[i] + e->hole_size[i] && e->hole_base[i] < pa + size)
            return 1;
    return 0;
}

/* Is there a device at pa?  Without declared windows every non-memory address exits. */
static int mmio_present(tcg_engine *e, uint64_t pa, unsigned size)
{
    if (!e->nwins)
        return 1;
    for (int i = 0; i < e->nwins; i++)
        if (pa >= e->win_base[i] && pa + size <= e->win_base[i] + e->win_size[i])
            return 1;
    return in_hole(e, pa, size);
}

static int page_has_hole(tcg_engine *e, uint64_t ppage)
{
    if (!e->nholes)
        return 0;
    if (ppage - e->ram_base < e->ram_size)
        return e->hole_pages[(ppage - e->ram_base) >> 12];
    return in_hole(e, ppage, PAGE_SIZE);
}

/* ---------------------------------------------------------------- PMP ------------------- */

static void pmp_range(const hart *h, int i, uint64_t *lo, uint64_t *hi)
{
    unsigned a = (h->pmpcfg[i] & PMP_A) >> 3;
    uint64_t addr = h->pmpaddr[i];
    if (a == 1) { /* TOR */
        *lo = i ? h->pmpaddr[i - 1] << 2 : 0;
        *hi = addr << 2;
    } else if (a == 2) { /* NA4 */
        *lo = addr << 2;
        *hi = *lo + 4;
    } else { /* NAPOT */
        uint64_t ones = (uint64_t)__builtin_ctzll(~addr);
        if (ones >= 54) {
            *lo = 0;
            *hi = ~(uint64_t)0;
            return;
        }
        uint64_t size = (uint64_t)8 << ones;
        *lo = (addr << 2) & ~(size - 1);
        *hi = *lo + size;
    }
}

/* Permissions (PMP_R|W|X) for [pa, pa+size) at privilege `priv`, or -1 when an entry matches
 * only part of the range (privileged spec 3.7.1: the access fails). */
static int pmp_perm(const hart *h, uint64_t pa, uint64_t size, int priv)
{
    if (!h->pmp_active)
        return priv == PRV_M ? 7 : 0;
    uint64_t end = pa + size;
    for (int i = 0; i < NUM_PMP; i++) {
        uint8_t cfg = h->pmpcfg[i];
        if (!(cfg & PMP_A))
            continue;
        uint64_t lo, hi;
        pmp_range(h, i, &lo, &hi);
        if (hi <= lo || end <= lo || pa >= hi)
            continue;
        if (pa < lo || end > hi)
            return -1;
        if (priv == PRV_M && !(cfg & PMP_L))
            return 7;
        return cfg & 7;
    }
    return priv == PRV_M ? 7 : 0;
}

static int pmp_ok(const hart *h, uint64_t pa, uint64_t size, int acc, int priv)
{
    int p = pmp_perm(h, pa, size, priv);
    if (p < 0)
        return 0;
    return (p >> (acc == ACC_R ? 0 : acc == ACC_W ? 1 : 2)) & 1;
}

static void pmp_update_active(hart *h)
{
    h->pmp_active = 0;
    for (int i = 0; i < NUM_PMP; i++)
        if (h->pmpcfg[i] & PMP_A)
            h->pmp_active = 1;
}

/* ---------------------------------------------------------------- MMU ------------------- */

static int fault_cause(int acc, int page)
{
    if (page)
        return acc == ACC_X ? EXC_INSN_PAGE : acc == ACC_R ? EXC_LOAD_PAGE : EXC_STORE_PAGE;
    return acc == ACC_X ? EXC_INSN_ACCESS : acc == ACC_R ? EXC_LOAD_ACCESS : EXC_STORE_ACCESS;
}

/* Translate va for access `acc` at privilege `priv`.  Returns 0 and *pa, or the exception
 * cause.  *level is the leaf level (0: 4 KiB page). */
static int translate(hart *h, uint64_t va, int acc, int priv, uint64_t *pa, int *level)
{
    *level = 0;
    uint64_t mode = h->satp >> 60;
    if (priv == PRV_M || mode == 0) {
        *pa = va;
        return 0;
    }
    int levels = mode == 8 ? 3 : mode == 9 ? 4 : 5;
    int vabits = 12 + 9 * levels;
    int64_t sva = (int64_t)(va << (64 - vabits)) >> (64 - vabits);
    if ((uint64_t)sva != va)
        return fault_cause(acc, 1);
    tcg_engine *e = h->e;
walk:;
    uint64_t a = (h->satp & ((1ull << 44) - 1)) << 12;
    for (int i = levels - 1; i >= 0; i--) {
        uint64_t pte_pa = a + ((va >> (12 + 9 * i)) & 0x1ff) * 8;
        uint64_t avail;
        int wr;
        uint8_t *p = phys_host(e, pte_pa, &avail, &wr);
        if (!p || avail < 8 || !pmp_ok(h, pte_pa, 8, ACC_R, PRV_S))
            return fault_cause(acc, 0);
        uint64_t pte = ram_load(p, 8);
        if (!(pte & PTE_V) || (!(pte & PTE_R) && (pte & PTE_W)) || (pte >> 54))
            return fault_cause(acc, 1);
        uint64_t ppn = (pte >> 10) & ((1ull << 44) - 1);
        if (!(pte & (PTE_R | PTE_X))) {
            if (i == 0 || (pte & (PTE_A | PTE_D | PTE_U)))
                return fault_cause(acc, 1);
            a = ppn << 12;
            continue;
        }
        /* leaf */
        if (priv == PRV_U && !(pte & PTE_U))
            return fault_cause(acc, 1);
        if (priv == PRV_S && (pte & PTE_U) && (acc == ACC_X || !(h->mstatus & MSTATUS_SUM)))
            return fault_cause(acc, 1);
        if (acc == ACC_X && !(pte & PTE_X))
            return fault_cause(acc, 1);
        if (acc == ACC_R && !(pte & PTE_R) && !((h->mstatus & MSTATUS_MXR) && (pte & PTE_X)))
            return fault_cause(acc, 1);
        if (acc == ACC_W && !(pte & PTE_W))
            return fault_cause(acc, 1);
        if (i > 0 && (ppn & ((1ull << (9 * i)) - 1)))
            return fault_cause(acc, 1); /* misaligned superpage */
        uint64_t want = PTE_A | (acc == ACC_W ? PTE_D : 0);
        if ((pte & want) != want) {
            if (!wr || !pmp_ok(h, pte_pa, 8, ACC_W, PRV_S))
                return fault_cause(acc, 0);
            /* atomically, and only if the PTE is unchanged (another hart may be writing it):
             * else walk again */
            uint64_t old = pte;
            if (!__atomic_compare_exchange_n((uint64_t *)(void *)p, &old, pte | want, 0,
                                             __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
                goto walk;
            pte |= want;
            if (h->e->dirty && pte_pa - h->e->ram_base < h->e->ram_size)
                ATOMIC_OR(&h->e->dirty[(pte_pa - h->e->ram_base) >> 18],
                          1ull << (((pte_pa - h->e->ram_base) >> 12) & 63));
        }
        uint64_t off_mask = (1ull << (12 + 9 * i)) - 1;
        *pa = ((ppn << 12) & ~off_mask) | (va & off_mask);
        *level = i;
        return 0;
    }
    return fault_cause(acc, 1);
}

/* ---------------------------------------------------------------- traps ----------------- */

static void take_trap(hart *h, uint64_t cause, uint64_t tval)
{
    int interrupt = (int)(cause >> 63);
    uint64_t code = cause & 63;
    int from = h->priv;
    uint64_t deleg = interrupt ? h->mideleg : h->medeleg;
    h->step_trapped = 1;
    if (h->e->trace_flags & (1u << TCG_TRACE_INT))
        trace_emit(h->e, TCG_TRACE_INT, h->id, h->pc, cause, tval, (uint64_t)from);
    if (from <= PRV_S && ((deleg >> code) & 1)) {
        h->scause = cause;
        h->sepc = h->pc;
        h->stval = tval;
        uint64_t s = h->mstatus;
        s = (s & ~MSTATUS_SPIE) | ((s & MSTATUS_SIE) ? MSTATUS_SPIE : 0);
        s = (s & ~MSTATUS_SPP) | (from == PRV_S ? MSTATUS_SPP : 0);
        s &= ~MSTATUS_SIE;
        h->mstatus = s;
        h->priv = PRV_S;
        uint64_t base = h->stvec & ~(uint64_t)3;
        h->pc = ((h->stvec & 1) && interrupt) ? base + 4 * code : base;
    } else {
        h->mcause = cause;
        h->mepc = h->pc;
        h->mtval = tval;
        h->tcontrol = (h->tcontrol & TCONTROL_MTE) ? TCONTROL_MPTE : 0; /* mpte = mte, mte = 0 */
        uint64_t s = h->mstatus;
        s = (s & ~MSTATUS_MPIE) | ((s & MSTATUS_MIE) ? MSTATUS_MPIE : 0);
        s = (s & ~MSTATUS_MPP) | ((uint64_t)from << 11);
        s &= ~MSTATUS_MIE;
        h->mstatus = s;
        h->priv = PRV_M;
        uint64_t base = h->mtvec & ~(uint64_t)3;
        h->pc = ((h->mtvec & 1) && interrupt) ? base + 4 * code : base;
    }
    update_dmode(h);
}

static uint64_t read_mip(hart *h)
{
    return h->mip_sw | ATOMIC_LOAD(&h->mip_edge) | ATOMIC_LOAD(&h->mip_pins) | h->mip_timer;
}

/* The interrupt to take now, as a cause with bit 63 set, or 0 (privileged spec 3.1.9). */
static uint64_t pending_interrupt(hart *h)
{
    uint64_t pending = read_mip(h) & h->mie;
    if (!pending)
        return 0;
    uint64_t m = pending & ~h->mideleg;
    uint64_t s = pending & h->mideleg;
    int m_on = h->priv < PRV_M || (h->mstatus & MSTATUS_MIE);
    int s_on = h->priv < PRV_S || (h->priv == PRV_S && (h->mstatus & MSTATUS_SIE));
    uint64_t take = m_on ? m : 0;
    if (!take && s_on)
        take = s;
    if (!take)
        return 0;
    static const int order[] = {11, 3, 7, 9, 1, 5};
    for (int i = 0; i < 6; i++)
        if (take & (1ull << order[i]))
            return (1ull << 63) | (uint64_t)order[i];
    return 0;
}

/* ---------------------------------------------------------------- timers ---------------- */

static void update_timer_bits(hart *h)
{
    tcg_engine *e = h->e;
    uint64_t now = mtime_now(e, h);
    uint64_t bits = 0;
    if (now >= h->mtimecmp)
        bits |= MIP_MTIP;
    if ((h->menvcfg & MENVCFG_STCE) && now >= h->stimecmp)
        bits |= MIP_STIP;
    if (e->builtin_fw && now >= h->sbi_timecmp)
        bits |= MIP_STIP;
    h->mip_timer = bits;
}

/* Earliest future timer compare that can wake this hart (mtime ticks), or ~0. */
static uint64_t next_timer_deadline(hart *h)
{
    uint64_t d = ~(uint64_t)0;
    if (h->mie & MIP_MTIP)
        d = h->mtimecmp;
    if ((h->mie & MIP_STIP) && (h->menvcfg & MENVCFG_STCE) && h->stimecmp < d)
        d = h->stimecmp;
    if ((h->mie & MIP_STIP) && h->e->builtin_fw && h->sbi_timecmp < d)
        d = h->sbi_timecmp;
    return d;
}

static void schedule_timer_check(hart *h)
{
    tcg_engine *e = h->e;
    uint64_t next = h->insns + TIMER_CHECK_INTERVAL;
    if (e->icount_shift >= 0) {
        uint64_t now = mtime_now(e, h);
        uint64_t d = h->mtimecmp;
        if ((h->menvcfg & MENVCFG_STCE) && h->stimecmp < d)
            d = h->stimecmp;
        if (e->builtin_fw && h->sbi_timecmp < d)
            d = h->sbi_timecmp;
        if (d > now) {
            /* instructions until (icount << shift) ns reach the compare */
            uint64_t icount = e->icount_acc + (h->insns - h->run_start);
            uint64_t target_ns = (d - (uint64_t)e->mtime_offset) * NS_PER_TICK;
            uint64_t now_ns = icount << e->icount_shift;
            uint64_t n = target_ns > now_ns
                ? (target_ns - now_ns + (1ull << e->icount_shift) - 1) >> e->icount_shift : 1;
            if (n < TIMER_CHECK_INTERVAL)
                next = h->insns + n;
        }
    }
    h->next_timer_check = next;
    h->limit = next < h->run_end ? next : h->run_end;
}

static void timer_changed(hart *h)
{
    update_timer_bits(h);
    schedule_timer_check(h);
    set_attention(h);
}

/* ---------------------------------------------------------------- CSRs ------------------ */

static uint64_t read_counter(hart *h, int which) /* 0: cycle, 2: instret */
{
    if (which == 0)
        return (h->mcountinhibit & 1) ? h->cycle_frozen : h->insns + h->cycle_off;
    return (h->mcountinhibit & 4) ? h->instret_frozen : h->insns + h->instret_off;
}

static void write_counter(hart *h, int which, uint64_t v)
{
    if (which == 0) {
        h->cycle_frozen = v;
        h->cycle_off = v - h->insns;
    } else {
        h->instret_frozen = v;
        h->instret_off = v - h->insns;
    }
}

static int counter_allowed(hart *h, unsigned idx)
{
    if (h->priv == PRV_M)
        return 1;
    if (!((h->mcounteren >> idx) & 1))
        return 0;
    if (h->priv == PRV_U && !((h->scounteren >> idx) & 1))
        return 0;
    return 1;
}

static int fs_off(hart *h) { return (h->mstatus & MSTATUS_FS) == 0; }
static uint64_t trig_legalize(uint64_t v);
static void trig_update(hart *h);
static void fp_sync_flags(hart *h);
static uint32_t host_flags_take(void);

/* Read CSR `csr`; `check` applies the access rules of the current privilege.
 * Returns 0, or -1 for an illegal access. */
static int csr_read(hart *h, unsigned csr, uint64_t *v, int check)
{
    tcg_engine *e = h->e;
    if (check && ((csr >> 8) & 3) > (unsigned)h->priv)
        return -1;
    switch (csr) {
    case 0x001: if (check && fs_off(h)) return -1; fp_sync_flags(h); *v = h->fflags; return 0;
    case 0x002: if (check && fs_off(h)) return -1; *v = h->frm; return 0;
    case 0x003:
        if (check && fs_off(h))
            return -1;
        fp_sync_flags(h);
        *v = (h->frm << 5) | h->fflags;
        return 0;
    case 0xC00: case 0xC01: case 0xC02:
        if (check && !counter_allowed(h, csr & 31))
            return -1;
        *v = csr == 0xC01 ? mtime_now(e, h) : read_counter(h, (int)(csr & 3));
        return 0;
    case 0x100: {
        uint64_t s = h->mstatus | (2ull << 32);
        if ((s & MSTATUS_FS) == MSTATUS_FS)
            s |= MSTATUS_SD;
        *v = s & SSTATUS_MASK;
        return 0;
    }
    case 0x104: *v = h->mie & h->mideleg; return 0;
    case 0x105: *v = h->stvec; return 0;
    case 0x106: *v = h->scounteren; return 0;
    case 0x10A: *v = h->senvcfg; return 0;
    case 0x140: *v = h->sscratch; return 0;
    case 0x141: *v = h->sepc; return 0;
    case 0x142: *v = h->scause; return 0;
    case 0x143: *v = h->stval; return 0;
    case 0x144: update_timer_bits(h); *v = read_mip(h) & h->mideleg; return 0;
    case 0x14D:
        if (check && h->priv < PRV_M &&
            (!(h->menvcfg & MENVCFG_STCE) || !(h->mcounteren & 2)))
            return -1;
        *v = h->stimecmp;
        return 0;
    case 0x180:
        if (check && h->priv == PRV_S && (h->mstatus & MSTATUS_TVM))
            return -1;
        *v = h->satp;
        return 0;
    case 0xF11: case 0xF12: case 0xF13: case 0xF15: *v = 0; return 0;
    case 0xF14: *v = (uint64_t)h->id; return 0;
    case 0x300: {
        uint64_t s = h->mstatus | (2ull << 32) | (2ull << 34); /* UXL = SXL = 64 */
        if ((s & MSTATUS_FS) == MSTATUS_FS)
            s |= MSTATUS_SD;
        *v = s;
        return 0;
    }
    case 0x301: *v = tcg_misa(); return 0;
    case 0x302: *v = h->medeleg; return 0;
    case 0x303: *v = h->mideleg; return 0;
    case 0x304: *v = h->mie; return 0;
    case 0x305: *v = h->mtvec; return 0;
    case 0x306: *v = h->mcounteren; return 0;
    case 0x30A: *v = h->menvcfg; return 0;
    case 0x320: *v = h->mcountinhibit; return 0;
    case 0x340: *v = h->mscratch; return 0;
    case 0x341: *v = h->mepc; return 0;
    case 0x342: *v = h->mcause; return 0;
    case 0x343: *v = h->mtval; return 0;
    case 0x344: update_timer_bits(h); *v = read_mip(h); return 0;
    case 0x34A: case 0x34B: *v = 0; return 0;
    case 0xB00: case 0xB02: *v = read_counter(h, (int)(csr & 3)); return 0;
    case 0x7A0: *v = h->tselect; return 0;
    case 0x7A1: *v = h->tdata1[h->tselect]; return 0;
    case 0x7A2: *v = h->tdata2[h->tselect]; return 0;
    case 0x7A3: *v = 0; return 0; /* tdata3 (textra): no extra conditions */
    case 0x7A4: *v = TINFO_VALUE; return 0;
    case 0x7A5: *v = h->tcontrol; return 0;
    default:
        break;
    }
    if (csr >= 0xC03 && csr <= 0xC1F) {
        if (check && !counter_allowed(h, csr & 31))
            return -1;
        *v = 0;
        return 0;
    }
    if ((csr >= 0xB03 && csr <= 0xB1F) || (csr >= 0x323 && csr <= 0x33F)) {
        *v = 0;
        return 0;
    }
    if (csr >= 0x3A0 && csr <= 0x3AF) {
        if (csr & 1)
            return -1; /* odd pmpcfg registers do not exist on RV64 */
        unsigned base = (csr - 0x3A0) * 4;
        uint64_t r = 0;
        for (unsigned i = 0; i < 8; i++)
            if (base + i < NUM_PMP)
                r |= (uint64_t)h->pmpcfg[base + i] << (8 * i);
        *v = r;
        return 0;
    }
    if (csr >= 0x3B0 && csr <= 0x3EF) {
        unsigned i = csr - 0x3B0;
        *v = i < NUM_PMP ? h->pmpaddr[i] : 0;
        return 0;
    }
    return -1;
}

static int pmp_locked(const hart *h, unsigned i)
{
    if (h->pmpcfg[i] & PMP_L)
        return 1;
    /* a locked TOR entry also locks the address below it */
    if (i + 1 < NUM_PMP && (h->pmpcfg[i + 1] & PMP_L) && (h->pmpcfg[i + 1] & PMP_A) == 0x08)
        return 1;
    return 0;
}

static void flush_all_harts_tlb(tcg_engine *e, hart *h)
{
    (void)e;
    tlb_flush_all(h);
}

/* Write CSR `csr` (access already checked).  Returns 0, or -1 for an illegal access. */
static int csr_write(hart *h, unsigned csr, uint64_t v)
{
    tcg_engine *e = h->e;
    switch (csr) {
    case 0x001:
        if (fs_off(h))
            return -1;
        (void)host_flags_take();
        h->fflags = v & 31;
        h->mstatus |= MSTATUS_FS;
        return 0;
    case 0x002: if (fs_off(h)) return -1; h->frm = v & 7; h->mstatus |= MSTATUS_FS; return 0;
    case 0x003:
        if (fs_off(h))
            return -1;
        (void)host_flags_take();
        h->fflags = v & 31;
        h->frm = (v >> 5) & 7;
        h->mstatus |= MSTATUS_FS;
        return 0;
    case 0x100: case 0x300: {
        uint64_t mask = csr == 0x100 ? SSTATUS_WMASK : MSTATUS_WMASK;
        uint64_t old = h->mstatus;
        uint64_t n = (old & ~mask) | (v & mask);
        if (((n >> 11) & 3) == 2)
            n = (n & ~MSTATUS_MPP) | (old & MSTATUS_MPP);
        h->mstatus = n & ~(MSTATUS_SD | MSTATUS_UXL | MSTATUS_SXL);
        if ((old ^ n) & MSTATUS_MXR)
            tlb_flush_all(h);
        update_dmode(h);
        return 0;
    }
    case 0x104: h->mie = (h->mie & ~h->mideleg) | (v & h->mideleg & ALL_INTS); return 0;
    case 0x105: if ((v & 3) < 2) h->stvec = v; return 0;
    case 0x106: h->scounteren = v & 0xffffffffu; return 0;
    case 0x10A: h->senvcfg = v & MENVCFG_FIOM; return 0;
    case 0x140: h->sscratch = v; return 0;
    case 0x141: h->sepc = v & ~(uint64_t)1; return 0;
    case 0x142: h->scause = v; return 0;
    case 0x143: h->stval = v; return 0;
    case 0x144:
        h->mip_sw = (h->mip_sw & ~(MIP_SSIP & h->mideleg)) | (v & MIP_SSIP & h->mideleg);
        return 0;
    case 0x14D:
        if (h->priv < PRV_M && (!(h->menvcfg & MENVCFG_STCE) || !(h->mcounteren & 2)))
            return -1;
        h->stimecmp = v;
        timer_changed(h);
        return 0;
    case 0x180: {
        if (h->priv == PRV_S && (h->mstatus & MSTATUS_TVM))
            return -1;
        uint64_t mode = v >> 60;
        if (mode != 0 && mode != 8 && mode != 9 && mode != 10)
            return 0; /* unsupported mode: the write has no effect */
        h->satp = v & ((0xfull << 60) | (0xffffull << 44) | ((1ull << 44) - 1));
        if (mode == 0)
            h->satp = 0;
        tlb_flush_all(h);
        return 0;
    }
    case 0x302: h->medeleg = v & MEDELEG_MASK; return 0;
    case 0x303: h->mideleg = v & S_INTS; return 0;
    case 0x304: h->mie = v & ALL_INTS; return 0;
    case 0x305: if ((v & 3) < 2) h->mtvec = v; return 0;
    case 0x306: h->mcounteren = v & 0xffffffffu; return 0;
    case 0x30A:
        h->menvcfg = v & (MENVCFG_FIOM | MENVCFG_STCE);
        timer_changed(h);
        return 0;
    case 0x320: {
        uint64_t c0 = read_counter(h, 0), i0 = read_counter(h, 2);
        h->mcountinhibit = v & 5;
        write_counter(h, 0, c0);
        write_counter(h, 2, i0);
        return 0;
    }
    case 0x340: h->mscratch = v; return 0;
    case 0x341: h->mepc = v & ~(uint64_t)1; return 0;
    case 0x342: h->mcause = v; return 0;
    case 0x343: h->mtval = v; return 0;
    case 0x344: {
        uint64_t mask = MIP_SSIP | MIP_SEIP | ((h->menvcfg & MENVCFG_STCE) ? 0 : MIP_STIP);
        h->mip_sw = (h->mip_sw & ~mask) | (v & mask);
        return 0;
    }
    case 0x34A: case 0x34B: return 0;
    case 0xB00: case 0xB02: write_counter(h, (int)(csr & 3), v); return 0;
    case 0x301: return 0; /* misa is read-only here */
    case 0x7A0: /* tselect: an index past the last trigger leaves it unchanged */
        if (v < NUM_TRIGGERS)
            h->tselect = v;
        return 0;
    case 0x7A1: h->tdata1[h->tselect] = trig_legalize(v); trig_update(h); return 0;
    case 0x7A2: h->tdata2[h->tselect] = v; trig_update(h); return 0;
    case 0x7A3: case 0x7A4: return 0;
    case 0x7A5: h->tcontrol = v & (TCONTROL_MTE | TCONTROL_MPTE); return 0;
    default:
        break;
    }
    if ((csr >= 0xB03 && csr <= 0xB1F) || (csr >= 0x323 && csr <= 0x33F))
        return 0;
    if (csr >= 0x3A0 && csr <= 0x3AF) {
        if (csr & 1)
            return -1;
        unsigned base = (csr - 0x3A0) * 4;
        for (unsigned i = 0; i < 8; i++) {
            unsigned k = base + i;
            if (k >= NUM_PMP || (h->pmpcfg[k] & PMP_L))
                continue;
            uint8_t c = (uint8_t)(v >> (8 * i)) & (PMP_R | PMP_W | PMP_X | PMP_A | PMP_L);
            if ((c & (PMP_R | PMP_W)) == PMP_W) /* R=0,W=1 is reserved */
                c &= (uint8_t)~PMP_W;
            h->pmpcfg[k] = c;
        }
        pmp_update_active(h);
        flush_all_harts_tlb(e, h);
        return 0;
    }
    if (csr >= 0x3B0 && csr <= 0x3EF) {
        unsigned i = csr - 0x3B0;
        if (i < NUM_PMP && !pmp_locked(h, i)) {
            h->pmpaddr[i] = v & ((1ull << 54) - 1);
            flush_all_harts_tlb(e, h);
        }
        return 0;
    }
    return -1;
}

static const struct {
    const char *name;
    uint16_t num;
} csr_names[] = {
    {"fflags", 0x001}, {"frm", 0x002}, {"fcsr", 0x003},
    {"cycle", 0xC00}, {"time", 0xC01}, {"instret", 0xC02},
    {"sstatus", 0x100}, {"sie", 0x104}, {"stvec", 0x105}, {"scounteren", 0x106},
    {"senvcfg", 0x10A}, {"sscratch", 0x140}, {"sepc", 0x141}, {"scause", 0x142},
    {"stval", 0x143}, {"sip", 0x144}, {"stimecmp", 0x14D}, {"satp", 0x180},
    {"mvendorid", 0xF11}, {"marchid", 0xF12}, {"mimpid", 0xF13}, {"mhartid", 0xF14},
    {"mconfigptr", 0xF15},
    {"mstatus", 0x300}, {"misa", 0x301}, {"medeleg", 0x302}, {"mideleg", 0x303},
    {"mie", 0x304}, {"mtvec", 0x305}, {"mcounteren", 0x306}, {"menvcfg", 0x30A},
    {"mcountinhibit", 0x320}, {"tselect", 0x7A0}, {"tdata1", 0x7A1}, {"tdata2", 0x7A2},
    {"tdata3", 0x7A3}, {"tinfo", 0x7A4}, {"tcontrol", 0x7A5},
    {"mscratch", 0x340}, {"mepc", 0x341}, {"mcause", 0x342},
    {"mtval", 0x343}, {"mip", 0x344}, {"mtinst", 0x34A}, {"mtval2", 0x34B},
    {"mcycle", 0xB00}, {"minstret", 0xB02},
};

int tcg_csr_number(const char *name)
{
    for (size_t i = 0; i < sizeof(csr_names) / sizeof(csr_names[0]); i++)
        if (strcmp(csr_names[i].name, name) == 0)
            return csr_names[i].num;
    static const struct {
        const char *prefix;
        int base, lo, hi, step;
    } ranges[] = {
        {"pmpcfg", 0x3A0, 0, 15, 1}, {"pmpaddr", 0x3B0, 0, 63, 1},
        {"mhpmcounter", 0xB00, 3, 31, 1}, {"mhpmevent", 0x320, 3, 31, 1},
        {"hpmcounter", 0xC00, 3, 31, 1},
    };
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
        size_t n = strlen(ranges[i].prefix);
        if (strncmp(name, ranges[i].prefix, n) == 0 && name[n] >= '0' && name[n] <= '9') {
            char *end;
            long k = strtol(name + n, &end, 10);
            if (*end == 0 && k >= ranges[i].lo && k <= ranges[i].hi)
                return ranges[i].base + (int)k;
        }
    }
    return -1;
}

/* ---------------------------------------------------------------- decoded code cache ---- */

static void *arena_alloc(tcg_engine *e, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (e->arena_used + n > ARENA_SIZE)
        return NULL;
    void *p = e->arena + e->arena_used;
    e->arena_used += n;
    return p;
}

static void invalidate_jump_caches(tcg_engine *e)
{
    for (int k = 0; k < e->num_harts; k++)
        jc_flush(e->harts[k]);
}

/* Forget every decoded block (the arena is full, or the VM was reset). */
static void code_flush_all(tcg_engine *e)
{
    memset(e->bhash, 0, BHASH_SIZE * sizeof(block *));
    memset(e->page_blocks, 0, (e->ram_size >> 12) * sizeof(block *));
    e->arena_used = 0;
    e->flush_gen++;
    invalidate_jump_caches(e);
    jit_reset(e);
}

static inline unsigned bhash_index(uint64_t ppc, uint64_t vpc)
{
    uint64_t k = ppc ^ (vpc * 0x9E3779B97F4A7C15ull);
    return (unsigned)((k ^ (k >> 29)) >> 1) & (BHASH_SIZE - 1);
}

static void unlink_block(tcg_engine *e, block *b)
{
    block **pp = &e->bhash[bhash_index(b->ppc, b->vpc)];
    while (*pp && *pp != b)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = b->hnext;
    b->valid = 0;
}

/* A store hit a RAM page that holds decoded code: drop its blocks. */
static void invalidate_code_page(tcg_engine *e, uint64_t idx)
{
    code_lock(e);
    block *b = e->page_blocks[idx];
    e->page_blocks[idx] = NULL;
    for (; b; b = b->pnext)
        unlink_block(e, b);
    invalidate_jump_caches(e);
    code_unlock(e);
}

/* Forget every decoded block and translation: at once with one thread; with thread=multi at
 * the next point where no hart runs any of them (see struct tcg_engine). */
static void code_flush_request(tcg_engine *e)
{
    if (!e->mt) {
        code_flush_all(e);
        return;
    }
    __atomic_store_n(&e->flush_req, 1u, __ATOMIC_SEQ_CST);
    for (int k = 0; k < e->num_harts; k++)
        set_attention(e->harts[k]);
}

static inline void mark_dirty(tcg_engine *e, uint64_t off, unsigned size)
{
    uint64_t i0 = off >> 12, i1 = (off + size - 1) >> 12;
    if (i1 >= (e->ram_size >> 12))
        i1 = i0;
    ATOMIC_OR(&e->dirty[i0 >> 6], 1ull << (i0 & 63));
    ATOMIC_OR(&e->dirty[i1 >> 6], 1ull << (i1 & 63));
}

static inline void notify_ram_write(tcg_engine *e, uint64_t pa, unsigned size)
{
    uint64_t off = pa - e->ram_base;
    if (off >= e->ram_size)
        return;
    if (e->dirty)
        mark_dirty(e, off, size);
    uint64_t i0 = off >> 12, i1 = (off + size - 1) >> 12;
    if (e->page_blocks[i0])
        invalidate_code_page(e, i0);
    if (i1 != i0 && i1 < (e->ram_size >> 12) && e->page_blocks[i1])
        invalidate_code_page(e, i1);
}

static void break_reservations(hart *h, uint64_t pa, unsigned size)
{
    tcg_engine *e = h->e;
    for (int k = 0; k < e->num_harts; k++) {
        hart *o = e->harts[k];
        if (o != h && o->resv_valid && pa < (o->resv_pa & ~7ull) + 8 &&
            (o->resv_pa & ~7ull) < pa + size)
            o->resv_valid = 0;
    }
}

static int page_reserved_by_other(hart *h, uint64_t ppage)
{
    tcg_engine *e = h->e;
    for (int k = 0; k < e->num_harts; k++) {
        hart *o = e->harts[k];
        if (o != h && o->resv_valid && (o->resv_pa & PAGE_MASK) == ppage)
            return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- data accesses --------- */

static int data_priv(const hart *h)
{
    if (h->priv == PRV_M && (h->mstatus & MSTATUS_MPRV))
        return (int)((h->mstatus >> 11) & 3);
    return h->priv;
}

/* ---------------------------------------------------------------- debugger ------------- */

/* A watchpoint covers part of the virtual page of va: its accesses must take mem_slow. */
static int watched_page(const tcg_engine *e, uint64_t va)
{
    uint64_t page = va & PAGE_MASK;
    for (int i = 0; i < e->nwp; i++) {
        uint64_t a = e->wp_addr[i], end = a + e->wp_len[i];
        if (a < page + PAGE_SIZE && end > page)
            return 1;
    }
    return 0;
}

/* A load (ACC_R) or store (ACC_W) of [va, va+size) hits a watchpoint: stop before it, as
 * QEMU does for RISC-V (gdb_stop_before_watchpoint); the instruction runs again on resume. */
static int watch_hit(hart *h, uint64_t va, unsigned size, int acc)
{
    tcg_engine *e = h->e;
    uint32_t want = acc == ACC_W ? TCG_WATCH_WRITE : TCG_WATCH_READ;
    for (int i = 0; i < e->nwp; i++) {
        uint64_t a = e->wp_addr[i], end = a + e->wp_len[i];
        if (!(e->wp_type[i] & want) || va >= end || va + size <= a)
            continue;
        tcg_exit *x = h->exit;
        x->kind = TCG_EXIT_DEBUG;
        x->value = TCG_DEBUG_WATCHPOINT;
        x->gpa = a;
        x->size = size;
        x->is_write = e->wp_type[i];
        x->args[0] = va;
        x->args[1] = (uint64_t)i;
        return 1;
    }
    return 0;
}

static int debug_stop(hart *h, uint64_t reason)
{
    h->exit->kind = TCG_EXIT_DEBUG;
    h->exit->value = reason;
    return 1;
}

/* service() with breakpoints or a step set: 1 when the hart must stop before its next insn. */
static int debug_check(hart *h)
{
    if (h->dbg_step)
        return (h->insns != h->step_mark || h->step_trapped) ? debug_stop(h, TCG_DEBUG_STEP) : 0;
    tcg_engine *e = h->e;
    for (int i = 0; i < e->nbp; i++)
        if (e->bp[i] == h->pc)
            return debug_stop(h, TCG_DEBUG_BREAKPOINT);
    return 0;
}

/* ---------------------------------------------------------------- Sdtrig triggers ------ */

/* The access size a trigger's size field asks for in bytes, 0 for any, -1 unsupported. */
static int trig_size_bytes(unsigned code)
{
    static const int bytes[16] = {0, 1, 2, 4, -1, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
    return bytes[code & 15];
}

static unsigned trig_size_code(uint64_t v)
{
    if (TD_TYPE(v) == TT_MCONTROL)
        return (unsigned)(((v >> 21) & 3) << 2 | ((v >> 16) & 3));
    return (unsigned)((v >> 16) & 15);
}

/* tdata1 as written -> as kept (WARL).  Types 2 and 6 keep load/store/execute, u/s/m, match
 * 0/2/3, size 0/1/2/3/5 and hit; chain, action (0: breakpoint exception), timing (before),
 * select (address), dmode, maskmax and vu/vs read 0; an unsupported match or size reads 0.
 * Any other type disables the trigger (type 15). */
static uint64_t trig_legalize(uint64_t v)
{
    unsigned type = TD_TYPE(v);
    if (type != TT_MCONTROL && type != TT_MCONTROL6)
        return (uint64_t)TT_DISABLED << 60;
    uint64_t r = ((uint64_t)type << 60) | (v & (MC_LOAD | MC_STORE | MC_EXEC | MC_MODES));
    unsigned match = (unsigned)(v >> 7) & 15;
    if (match == 2 || match == 3)
        r |= (uint64_t)match << 7;
    uint64_t size_bits = type == TT_MCONTROL ? MC2_SIZE : MC6_SIZE;
    if (trig_size_bytes(trig_size_code(v)) >= 0)
        r |= v & size_bits;
    r |= v & (type == TT_MCONTROL ? MC2_HIT : MC6_HIT);
    return r;
}

static int trig_armed(uint64_t v, unsigned what)
{
    unsigned type = TD_TYPE(v);
    return (type == TT_MCONTROL || type == TT_MCONTROL6) && (v & MC_MODES) && (v & what);
}

/* One-instruction blocks and a service() before each: the run asked for fewer instructions
 * than a block holds, gdb single-steps, or an execute trigger is armed. */
static void dbg_mode_update(hart *h)
{
    int ss = h->run_small || h->dbg_step || h->trig_x;
    if (ss && !h->single_step)
        jc_flush(h);
    h->single_step = ss;
    h->dbg_block = h->e->nbp > 0 || h->dbg_step || h->trig_x;
    set_attention(h);
}

/* After a write to tdata1/tdata2: which kinds are armed; the TLB forgets the pages. */
static void trig_update(hart *h)
{
    int x = 0, rw = 0;
    for (int i = 0; i < NUM_TRIGGERS; i++) {
        x |= trig_armed(h->tdata1[i], MC_EXEC);
        rw |= trig_armed(h->tdata1[i], MC_LOAD | MC_STORE);
    }
    if (rw || h->trig_rw)
        tlb_flush_all(h);
    h->trig_rw = rw;
    h->trig_x = x;
    dbg_mode_update(h);
}

/* The trigger may fire in the current mode: its u/s/m bit, and in M-mode tcontrol.mte. */
static int trig_mode_ok(const hart *h, uint64_t v)
{
    if (h->priv == PRV_M)
        return (v & MC_M) && (h->tcontrol & TCONTROL_MTE);
    return (int)(v >> (3 + h->priv)) & 1;
}

/* Does value `val` (an address; `size` bytes accessed, 0 for an instruction) match? */
static int trig_match(uint64_t v, uint64_t tdata2, uint64_t val, unsigned size)
{
    int want = trig_size_bytes(trig_size_code(v));
    if (size && want > 0 && (unsigned)want != size)
        return 0;
    switch ((v >> 7) & 15) {
    case 0: return val == tdata2;
    case 2: return val >= tdata2;
    case 3: return val < tdata2;
    default: return 0;
    }
}

/* Triggers of kind `what` matching `val`: set their hit bits, take the breakpoint exception
 * (before the instruction or access, tval = the address). */
static int trig_fire(hart *h, unsigned what, uint64_t val, unsigned size)
{
    int fired = 0;
    for (int i = 0; i < NUM_TRIGGERS; i++) {
        uint64_t v = h->tdata1[i];
        if (!trig_armed(v, what) || !trig_mode_ok(h, v) || !trig_match(v, h->tdata2[i], val, size))
            continue;
        h->tdata1[i] |= TD_TYPE(v) == TT_MCONTROL ? MC2_HIT : MC6_HIT;
        fired = 1;
    }
    if (fired)
        take_trap(h, EXC_BREAKPOINT, val);
    return fired;
}

/* A load/store trigger may match an access in the virtual page of va. */
static int trig_page(const hart *h, uint64_t va)
{
    for (int i = 0; i < NUM_TRIGGERS; i++) {
        uint64_t v = h->tdata1[i];
        if (!trig_armed(v, MC_LOAD | MC_STORE))
            continue;
        if (((v >> 7) & 15) != 0 || ((h->tdata2[i] ^ va) & PAGE_MASK) == 0)
            return 1;
    }
    return 0;
}

static void trig_reset(hart *h)
{
    h->tselect = 0;
    h->tcontrol = 0;
    for (int i = 0; i < NUM_TRIGGERS; i++) {
        h->tdata1[i] = (uint64_t)TT_MCONTROL << 60;
        h->tdata2[i] = 0;
    }
    h->trig_x = h->trig_rw = 0;
    dbg_mode_update(h);
}

static void tlb_fill(hart *h, int acc, uint64_t va, uint64_t pa, int level, int priv)
{
    tcg_engine *e = h->e;
    uint64_t ppage = pa & PAGE_MASK, avail;
    int writable;
    uint8_t *host = phys_host(e, ppage, &avail, &writable);
    if (!host || avail < PAGE_SIZE || page_has_hole(e, ppage))
        return;
    if (e->nwp && acc != ACC_X && watched_page(e, va))
        return;
    if (h->trig_rw && acc != ACC_X && trig_page(h, va))
        return;
    int perm = pmp_perm(h, ppage, PAGE_SIZE, priv);
    if (perm < 0)
        return;
    tlb_entry *t;
    unsigned i = (unsigned)(va >> 12) & TLB_MASK;
    if (acc == ACC_R) {
        if (!(perm & PMP_R))
            return;
        t = &h->tlb_r[h->dmode][i];
    } else if (acc == ACC_W) {
        if (!(perm & PMP_W) || !writable)
            return;
        uint64_t off = ppage - e->ram_base;
        if (off < e->ram_size && e->page_blocks[off >> 12])
            return;
        if (h->resv_watch && page_reserved_by_other(h, ppage))
            return;
        t = &h->tlb_w[h->dmode][i];
    } else {
        if (!(perm & PMP_X))
            return;
        t = &h->tlb_x[fetch_mode(h->priv)][i];
    }
    if (level > 0)
        h->tlb_has_super = 1;
    t->tag = va & PAGE_MASK;
    t->addend = (uintptr_t)host - (uintptr_t)(va & PAGE_MASK);
    t->ppage = ppage;
}

static int mmio_exit(hart *h, uint64_t pa, unsigned size, int write, uint64_t value,
                     const op *o, int sign, int fp)
{
    tcg_exit *x = h->exit;
    x->kind = TCG_EXIT_MMIO;
    x->gpa = pa;
    x->size = size;
    x->is_write = (uint32_t)write;
    x->value = write ? value : 0;
    h->pend = write ? PEND_STORE : PEND_LOAD;
    h->pend_rd = o->rd;
    h->pend_size = (uint8_t)size;
    h->pend_signed = (uint8_t)sign;
    h->pend_fp = (uint8_t)fp;
    h->pend_len = o->len;
    return ST_EXIT;
}

/* Resolve a misaligned access byte by byte; all bytes must be in memory (not MMIO). */
static int misaligned_access(hart *h, uint64_t va, unsigned size, int acc, uint64_t *val)
{
    int priv = data_priv(h);
    uint8_t *bytes[8];
    unsigned k = 0;
    while (k < size) {
        uint64_t a = va + k;
        uint64_t pa;
        int level;
        int cause = translate(h, a, acc, priv, &pa, &level);
        if (cause) {
            take_trap(h, (uint64_t)cause, k ? a : va);
            return ST_TRAP;
        }
        uint64_t page_left = PAGE_SIZE - (a & 0xfff), avail;
        unsigned n = (unsigned)(page_left < size - k ? page_left : size - k);
        int writable;
        uint8_t *p = phys_host(h->e, pa, &avail, &writable);
        if (!pmp_ok(h, pa, n, acc, priv)) {
            take_trap(h, (uint64_t)fault_cause(acc, 0), va);
            return ST_TRAP;
        }
        if (!p || avail < n || in_hole(h->e, pa, n) || (acc == ACC_W && !writable)) {
            take_trap(h, acc == ACC_W ? EXC_STORE_MISALIGNED : EXC_LOAD_MISALIGNED, va);
            return ST_TRAP;
        }
        for (unsigned j = 0; j < n; j++)
            bytes[k + j] = p + j;
        if (acc == ACC_W) {
            notify_ram_write(h->e, pa, n);
            break_reservations(h, pa, n);
        }
        k += n;
    }
    if (acc == ACC_W) {
        for (unsigned k = 0; k < size; k++)
            *bytes[k] = (uint8_t)(*val >> (8 * k));
    } else {
        uint64_t v = 0;
        for (unsigned k = 0; k < size; k++)
            v |= (uint64_t)*bytes[k] << (8 * k);
        *val = v;
    }
    return ST_OK;
}

/* Load/store slow path (TLB miss, misaligned, MMIO).  h->pc is the instruction's pc. */
static int mem_slow(hart *h, uint64_t va, unsigned size, int acc, uint64_t *val, const op *o,
                    int sign, int fp)
{
    if (unlikely(h->e->nwp) && watch_hit(h, va, size, acc))
        return ST_EXIT;
    if (unlikely(h->trig_rw) && trig_fire(h, acc == ACC_W ? MC_STORE : MC_LOAD, va, size))
        return ST_TRAP;
    if (va & (size - 1))
        return misaligned_access(h, va, size, acc, val);
    int priv = data_priv(h);
    uint64_t pa;
    int level;
    int cause = translate(h, va, acc, priv, &pa, &level);
    if (cause) {
        take_trap(h, (uint64_t)cause, va);
        return ST_TRAP;
    }
    if (!pmp_ok(h, pa, size, acc, priv)) {
        take_trap(h, (uint64_t)fault_cause(acc, 0), va);
        return ST_TRAP;
    }
    tcg_engine *e = h->e;
    if (e->c_mmio && c_mmio_access(e->c_mmio, pa, size, acc == ACC_W, val))
        return ST_OK;
    if (e->nholes && in_hole(e, pa, size))
        return mmio_exit(h, pa, size, acc == ACC_W, *val, o, sign, fp);
    uint64_t avail;
    int writable;
    uint8_t *p = phys_host(e, pa, &avail, &writable);
    if (!p) {
        if (!mmio_present(e, pa, size)) { /* nothing there: access fault */
            take_trap(h, (uint64_t)fault_cause(acc, 0), va);
            return ST_TRAP;
        }
        return mmio_exit(h, pa, size, acc == ACC_W, *val, o, sign, fp);
    }
    if (acc == ACC_W && !writable) /* a store to ROM: an MMIO exit, like a KVM RO slot */
        return mmio_exit(h, pa, size, 1, *val, o, 0, fp);
    if (acc == ACC_W) {
        notify_ram_write(e, pa, size);
        break_reservations(h, pa, size);
    }
    tlb_fill(h, acc, va, pa, level, priv);
    if (acc == ACC_W)
        ram_store(p, size, *val);
    else
        *val = ram_load(p, size);
    return ST_OK;
}

/* Host pointer for an atomic access (LR/SC/AMO) to RAM, or a trap. */
static int amo_addr(hart *h, uint64_t va, unsigned size, int acc, uint8_t **host, uint64_t *pa_out)
{
    if (unlikely(h->e->nwp) && watch_hit(h, va, size, acc))
        return ST_EXIT;
    if (va & (size - 1)) {
        take_trap(h, acc == ACC_R ? EXC_LOAD_MISALIGNED : EXC_STORE_MISALIGNED, va);
        return ST_TRAP;
    }
    int priv = data_priv(h);
    uint64_t pa;
    int level;
    int cause = translate(h, va, acc, priv, &pa, &level);
    if (cause) {
        take_trap(h, (uint64_t)cause, va);
        return ST_TRAP;
    }
    uint64_t avail;
    int writable;
    uint8_t *p = phys_host(h->e, pa, &avail, &writable);
    if (!pmp_ok(h, pa, size, acc, priv) || !p || in_hole(h->e, pa, size) ||
        (acc == ACC_W && !writable)) {
        take_trap(h, acc == ACC_R ? EXC_LOAD_ACCESS : EXC_STORE_ACCESS, va);
        return ST_TRAP;
    }
    *host = p;
    *pa_out = pa;
    return ST_OK;
}

static int exec_amo(hart *h, const op *o)
{
    unsigned size = o->rs3;
    unsigned funct5 = o->rm;
    uint64_t va = h->x[o->rs1];
    uint8_t *p;
    uint64_t pa;
    if (unlikely(h->trig_rw)) { /* an AMO both loads and stores */
        unsigned what = funct5 == 2 ? MC_LOAD : funct5 == 3 ? MC_STORE : MC_LOAD | MC_STORE;
        if (trig_fire(h, what, va, size))
            return ST_TRAP;
    }
    if (funct5 == 2) { /* LR */
        int st = amo_addr(h, va, size, ACC_R, &p, &pa);
        if (st)
            return st;
        uint64_t v;
        if (size == 4)
            v = sext32(__atomic_load_n((uint32_t *)(void *)p, __ATOMIC_SEQ_CST));
        else
            v = __atomic_load_n((uint64_t *)(void *)p, __ATOMIC_SEQ_CST);
        h->x[o->rd] = v;
        h->resv_valid = 1;
        h->resv_pa = pa;
        h->resv_val = v;
        return ST_OK;
    }
    int st = amo_addr(h, va, size, ACC_W, &p, &pa);
    if (st)
        return st;
    tcg_engine *e = h->e;
    if (funct5 == 3) { /* SC */
        int ok = h->resv_valid && h->resv_pa == pa;
        h->resv_valid = 0;
        if (ok) {
            /* Atomic against the other harts' threads (thread=multi): the store happens only
             * if the word still holds what LR loaded.  (A store of that same value by another
             * hart in between goes unnoticed, as under QEMU's MTTCG.) */
            uint64_t v = h->x[o->rs2];
            if (size == 4) {
                uint32_t expect = (uint32_t)h->resv_val;
                ok = __atomic_compare_exchange_n((uint32_t *)(void *)p, &expect, (uint32_t)v, 0,
                                                 __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
            } else {
                uint64_t expect = h->resv_val;
                ok = __atomic_compare_exchange_n((uint64_t *)(void *)p, &expect, v, 0,
                                                 __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
            }
            if (ok) {
                notify_ram_write(e, pa, size);
                break_reservations(h, pa, size);
            }
        }
        h->x[o->rd] = ok ? 0 : 1;
        return ST_OK;
    }
    /* AMOs are atomic read-modify-writes on the host (sequentially consistent, which covers
     * every aq/rl combination) */
    uint64_t old, src = h->x[o->rs2];
    if (size == 4) {
        uint32_t *w = (uint32_t *)(void *)p, s32 = (uint32_t)src, cur;
        switch (funct5) {
        case 0x01: cur = __atomic_exchange_n(w, s32, __ATOMIC_SEQ_CST); break;
        case 0x00: cur = __atomic_fetch_add(w, s32, __ATOMIC_SEQ_CST); break;
        case 0x04: cur = __atomic_fetch_xor(w, s32, __ATOMIC_SEQ_CST); break;
        case 0x0c: cur = __atomic_fetch_and(w, s32, __ATOMIC_SEQ_CST); break;
        case 0x08: cur = __atomic_fetch_or(w, s32, __ATOMIC_SEQ_CST); break;
        default:
            cur = __atomic_load_n(w, __ATOMIC_SEQ_CST);
            for (;;) {
                uint32_t res;
                switch (funct5) {
                case 0x10: res = (int32_t)cur < (int32_t)s32 ? cur : s32; break;
                case 0x14: res = (int32_t)cur > (int32_t)s32 ? cur : s32; break;
                case 0x18: res = cur < s32 ? cur : s32; break;
                case 0x1c: res = cur > s32 ? cur : s32; break;
                default: res = cur; break;
                }
                if (__atomic_compare_exchange_n(w, &cur, res, 0, __ATOMIC_SEQ_CST,
                                                __ATOMIC_SEQ_CST))
                    break;
            }
            break;
        }
        old = sext32(cur);
    } else {
        uint64_t *w = (uint64_t *)(void *)p;
        switch (funct5) {
        case 0x01: old = __atomic_exchange_n(w, src, __ATOMIC_SEQ_CST); break;
        case 0x00: old = __atomic_fetch_add(w, src, __ATOMIC_SEQ_CST); break;
        case 0x04: old = __atomic_fetch_xor(w, src, __ATOMIC_SEQ_CST); break;
        case 0x0c: old = __atomic_fetch_and(w, src, __ATOMIC_SEQ_CST); break;
        case 0x08: old = __atomic_fetch_or(w, src, __ATOMIC_SEQ_CST); break;
        default:
            old = __atomic_load_n(w, __ATOMIC_SEQ_CST);
            for (;;) {
                uint64_t res;
                switch (funct5) {
                case 0x10: res = (int64_t)old < (int64_t)src ? old : src; break;
                case 0x14: res = (int64_t)old > (int64_t)src ? old : src; break;
                case 0x18: res = old < src ? old : src; break;
                case 0x1c: res = old > src ? old : src; break;
                default: res = old; break;
                }
                if (__atomic_compare_exchange_n(w, &old, res, 0, __ATOMIC_SEQ_CST,
                                                __ATOMIC_SEQ_CST))
                    break;
            }
            break;
        }
    }
    notify_ram_write(e, pa, size);
    break_reservations(h, pa, size);
    h->x[o->rd] = old;
    return ST_OK;
}

/* ---------------------------------------------------------------- F and D --------------- */
/*
 * IEEE 754 arithmetic on the host FPU with the RISC-V rules on top (unprivileged spec ch. 11
 * and 12): static and dynamic rounding modes (RMM, which hosts lack, by detecting exact ties),
 * accrued flags from the host status word, canonical NaN results, NaN-boxed singles, and
 * fmin/fmax, comparisons, fclass and integer conversions (with saturation) done by hand.
 */

#define CANON_NAN32 0x7fc00000u
#define CANON_NAN64 0x7ff8000000000000ull
#define FFLAG_NX 1u
#define FFLAG_UF 2u
#define FFLAG_OF 4u
#define FFLAG_DZ 8u
#define FFLAG_NV 16u

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float f32_from(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint64_t f64_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
static inline double f64_from(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

static inline uint32_t unbox32(uint64_t r)
{
    return (r >> 32) == 0xffffffffu ? (uint32_t)r : CANON_NAN32;
}
static inline float get_s(const hart *h, unsigned r) { return f32_from(unbox32(h->f[r])); }
static inline double get_d(const hart *h, unsigned r) { return f64_from(h->f[r]); }
static inline void set_s_bits(hart *h, unsigned r, uint32_t u) { h->f[r] = 0xffffffff00000000ull | u; }
static inline void set_s(hart *h, unsigned r, float f)
{
    set_s_bits(h, r, isnan(f) ? CANON_NAN32 : f32_bits(f));
}
static inline void set_d(hart *h, unsigned r, double d)
{
    h->f[r] = isnan(d) ? CANON_NAN64 : f64_bits(d);
}

static inline int is_snan32(uint32_t u) { return (u & 0x7fc00000u) == 0x7f800000u && (u & 0x3fffff); }
static inline int is_snan64(uint64_t u)
{
    return (u & 0x7ff8000000000000ull) == 0x7ff0000000000000ull && (u & 0x7ffffffffffffull);
}

/*
 * Host exception flags accrue lazily: with round-to-nearest-even (the common case) an FP
 * instruction costs no status-register access at all; the host flags are folded into the
 * hart's fflags when the guest reads fflags/fcsr and when run() returns, and cleared when
 * run() starts.  Other rounding modes save, set and restore the host mode around the op.
 * On x86-64 this is the SSE control/status register itself; elsewhere <fenv.h>.
 */
#if defined(__x86_64__) && defined(__GNUC__)
#define MXCSR_FLAGS 0x3fu
static inline uint32_t mxcsr_get(void)
{
    uint32_t v;
    __asm__ volatile("stmxcsr %0" : "=m"(v) : : "memory");
    return v;
}
static inline void mxcsr_set(uint32_t v) { __asm__ volatile("ldmxcsr %0" : : "m"(v) : "memory"); }

static uint32_t host_flags_take(void)
{
    uint32_t m = mxcsr_get();
    if (!(m & MXCSR_FLAGS))
        return 0;
    mxcsr_set(m & ~MXCSR_FLAGS);
    uint32_t f = 0;
    if (m & 0x01) f |= FFLAG_NV;
    if (m & 0x04) f |= FFLAG_DZ;
    if (m & 0x08) f |= FFLAG_OF;
    if (m & 0x10) f |= FFLAG_UF;
    if (m & 0x20) f |= FFLAG_NX;
    return f;
}

static void host_round_set(unsigned rm)
{
    static const uint32_t rc[5] = {0, 3u << 13, 1u << 13, 2u << 13, 0};
    mxcsr_set((mxcsr_get() & ~(3u << 13)) | rc[rm < 5 ? rm : 0]);
}
#else
static uint32_t host_flags_take(void)
{
    int x = fetestexcept(FE_ALL_EXCEPT);
    if (!x)
        return 0;
    feclearexcept(FE_ALL_EXCEPT);
    uint32_t f = 0;
    if (x & FE_INEXACT) f |= FFLAG_NX;
    if (x & FE_UNDERFLOW) f |= FFLAG_UF;
    if (x & FE_OVERFLOW) f |= FFLAG_OF;
    if (x & FE_DIVBYZERO) f |= FFLAG_DZ;
    if (x & FE_INVALID) f |= FFLAG_NV;
    return f;
}

static void host_round_set(unsigned rm)
{
    static const int mode[5] = {FE_TONEAREST, FE_TOWARDZERO, FE_DOWNWARD, FE_UPWARD,
                                FE_TONEAREST};
    fesetround(mode[rm < 5 ? rm : 0]);
}
#endif

/* The hart's accrued flags, with what the host has raised since the last look. */
static void fp_sync_flags(hart *h) { h->fflags |= host_flags_take(); }

/* Eager flags for one op (rounding modes other than RNE, and RMM's tie detection). */
static void fp_begin_h(hart *h, unsigned rm)
{
    if (rm == 0)
        return;
    fp_sync_flags(h);
    if (rm != 4)
        host_round_set(rm);
}

static uint32_t fp_end_h(unsigned rm)
{
    if (rm == 0)
        return 0;
    uint32_t f = host_flags_take();
    if (rm != 4)
        host_round_set(0);
    return f;
}

/* RMM: `r` is the round-to-nearest-even result and `err` the exact remainder (exact result
 * minus r, or a value of the same sign and `tie` set when |exact - r| is half an ulp). */
#define DEF_RMM(T, SUF, NEXT, INF)                                                          \
    static T rmm_fix_##SUF(T r, T err, int tie)                                               \
    {                                                                                         \
        if (!tie || err == 0 || !isfinite(r))                                                 \
            return r;                                                                         \
        if (signbit(err) == signbit(r) || r == 0)                                             \
            return NEXT(r, err > 0 ? INF : -INF);                                             \
        return r;                                                                             \
    }                                                                                         \
    static int is_half_ulp_##SUF(T r, T err)                                                  \
    {                                                                                         \
        T n = NEXT(r, err > 0 ? INF : -INF);                                                  \
        return isfinite(n) && (n - r) == 2 * err;                                             \
    }
DEF_RMM(float, s, nextafterf, INFINITY)
DEF_RMM(double, d, nextafter, INFINITY)

#define TINY_d 2.2250738585072014e-308 /* DBL_MIN */
#define TINY_s 1.17549435e-38f         /* FLT_MIN */
#define DEF_ARITH(T, SUF, FMA, SQRT)                                                          \
    static T arith_##SUF(hart *h, unsigned op, T a, T b, unsigned rm, uint32_t *flags)                 \
    {                                                                                         \
        fp_begin_h(h, rm);                                                                    \
        FP_BARRIER(a); /* the operation happens after the rounding mode is set */             \
        FP_BARRIER(b);                                                                        \
        T r;                                                                                  \
        switch (op) {                                                                         \
        case 0: r = a + b; break;                                                             \
        case 1: r = a - b; break;                                                             \
        case 2: r = a * b; break;                                                             \
        case 3: r = a / b; break;                                                             \
        default: r = SQRT(a); break;                                                          \
        }                                                                                     \
        FP_BARRIER(r);                                                                        \
        *flags |= fp_end_h(rm);                                                               \
        if (rm == 4 && isfinite(r) && (*flags & FFLAG_NX)) {                                  \
            T err = 0;                                                                        \
            int tie = 0;                                                                      \
            if (op <= 1) {                                                                    \
                T bb2 = op ? -b : b;                                                          \
                T bb = r - a;                                                                 \
                err = (a - (r - bb)) + (bb2 - bb);                                            \
                tie = err != 0 && is_half_ulp_##SUF(r, err);                                  \
            } else if (op == 2) {                                                             \
                err = FMA(a, b, -r);                                                          \
                tie = err != 0 && is_half_ulp_##SUF(r, err);                                  \
            } else if (op == 3) {                                                             \
                T rem = FMA(-r, b, a);                                                        \
                if (rem != 0) {                                                               \
                    err = (signbit(rem) == signbit(b)) ? 1 : -1;                              \
                    T nx = SUF##_next(r, err > 0 ? (T)INFINITY : -(T)INFINITY);               \
                    tie = isfinite(nx) && 2 * fabs((double)rem) == fabs((double)((nx - r) * b)); \
                }                                                                             \
            }                                                                                 \
            (void)host_flags_take();                                                          \
            if ((op == 2 || op == 3) && (r == 0 || fabs((double)r) < 4 * (double)TINY_##SUF))  \
                r = rmm_tiny_##SUF(op, a, b, r);                                              \
            else                                                                              \
                r = rmm_fix_##SUF(r, err, tie);                                               \
        }                                                                                     \
        return r;                                                                             \
    }

/* RMM for a product or quotient (op 2, 3) that lands among the subnormals, where the
 * error-free transforms above lose bits: bracket the exact value with the directed
 * roundings, and test it against their midpoint after scaling into the normal range. */
static double rmm_tiny_d(unsigned op, double a, double b, double r)
{
    double a1 = a, a2 = a; /* separate copies: the compiler must not reuse one product */
    host_round_set(2);
    FP_BARRIER(a1);
    double lo = op == 2 ? a1 * b : a1 / b;
    FP_BARRIER(lo);
    host_round_set(3);
    FP_BARRIER(a2);
    double hi = op == 2 ? a2 * b : a2 / b;
    FP_BARRIER(hi);
    host_round_set(0);
    if (lo == hi)
        return r;
    const int k = 600;
    double los = ldexp(lo, k), his = ldexp(hi, k);
    double mid = los + (his - los) * 0.5;
    int tie;
    if (op == 2) {
        double x = fabs(a) < fabs(b) ? a : b, y = fabs(a) < fabs(b) ? b : a;
        tie = fma(ldexp(x, k), y, -mid) == 0;
    } else {
        tie = fma(-mid, b, ldexp(a, k)) == 0;
    }
    (void)host_flags_take();
    if (!tie)
        return r;
    return fabs(lo) > fabs(hi) ? lo : hi;
}

static float rmm_tiny_s(unsigned op, float a, float b, float r)
{
    float a1 = a, a2 = a; /* separate copies: the compiler must not reuse one product */
    host_round_set(2);
    FP_BARRIER(a1);
    float lo = op == 2 ? a1 * b : a1 / b;
    FP_BARRIER(lo);
    host_round_set(3);
    FP_BARRIER(a2);
    float hi = op == 2 ? a2 * b : a2 / b;
    FP_BARRIER(hi);
    host_round_set(0);
    if (lo == hi)
        return r;
    double mid = (double)lo + ((double)hi - (double)lo) * 0.5; /* exact in double */
    int tie = op == 2 ? (double)a * (double)b == mid : fma(mid, (double)b, -(double)a) == 0;
    (void)host_flags_take();
    if (!tie)
        return r;
    return fabsf(lo) > fabsf(hi) ? lo : hi;
}

static inline float s_next(float r, float to) { return nextafterf(r, to); }
static inline double d_next(double r, double to) { return nextafter(r, to); }
DEF_ARITH(float, s, fmaf, sqrtf)
DEF_ARITH(double, d, fma, sqrt)

/* Float to integer (kind 0 w, 1 wu, 2 l, 3 lu) with RISC-V saturation; x is exact. */
static uint64_t cvt_to_int(double x, unsigned rm, unsigned kind, uint32_t *flags)
{
    static const double lo[4] = {-2147483648.0, 0.0, -9223372036854775808.0, 0.0};
    static const double hi[4] = {2147483648.0, 4294967296.0, 9223372036854775808.0,
                                 18446744073709551616.0};
    static const uint64_t max[4] = {0x7fffffffull, ~0ull, 0x7fffffffffffffffull, ~0ull};
    static const uint64_t min[4] = {0xffffffff80000000ull, 0, 0x8000000000000000ull, 0};
    if (isnan(x)) {
        *flags |= FFLAG_NV;
        return max[kind];
    }
    double r;
    switch (rm) {
    case 1: r = trunc(x); break;
    case 2: r = floor(x); break;
    case 3: r = ceil(x); break;
    case 4: r = round(x); break;
    default: r = nearbyint(x); break;
    }
    if (r < lo[kind] || r >= hi[kind]) {
        *flags |= FFLAG_NV;
        return x < 0 ? min[kind] : max[kind];
    }
    if (r != x)
        *flags |= FFLAG_NX;
    switch (kind) {
    case 0: return (uint64_t)(int64_t)(int32_t)(int64_t)r;
    case 1: return sext32((uint32_t)(uint64_t)r);
    case 2: return (uint64_t)(int64_t)r;
    default: return (uint64_t)r;
    }
}

/* Integer (kind 0 w, 1 wu, 2 l, 3 lu) to float (single != 0) or double, rounded per rm. */
static uint64_t cvt_from_int(hart *h, uint64_t v, unsigned kind, int single, unsigned rm,
                             uint32_t *flags)
{
    int128_t exact;
    switch (kind) {
    case 0: exact = (int32_t)v; break;
    case 1: exact = (uint32_t)v; break;
    case 2: exact = (int64_t)v; break;
    default: exact = (uint64_t)v; break;
    }
    unsigned mode = rm == 4 ? 2 : rm;
    fp_begin_h(h, mode);
    FP_BARRIER(v);
    FP_BARRIER(exact);
    double d = 0;
    float s = 0;
    if (single) {
        s = kind == 3 ? (float)(uint64_t)v : kind == 1 ? (float)(uint32_t)v : (float)(int64_t)exact;
        FP_BARRIER(s);
    } else {
        d = kind == 3 ? (double)(uint64_t)v : kind == 1 ? (double)(uint32_t)v : (double)(int64_t)exact;
        FP_BARRIER(d);
    }
    uint32_t f = fp_end_h(mode);
    if (rm == 4 && (f & FFLAG_NX)) {
        /* down-rounded value lo, up neighbour hi: pick the nearer, ties away from zero */
        if (single) {
            float hi = nextafterf(s, INFINITY);
            int128_t dl = exact - (int128_t)s, dh = (int128_t)hi - exact;
            s = (dl < dh || (dl == dh && s < 0)) ? s : hi;
        } else {
            double hi = nextafter(d, INFINITY);
            int128_t dl = exact - (int128_t)d, dh = (int128_t)hi - exact;
            d = (dl < dh || (dl == dh && d < 0)) ? d : hi;
        }
    }
    *flags |= f;
    return single ? (0xffffffff00000000ull | f32_bits(s)) : f64_bits(d);
}

static unsigned fclass64(uint64_t u, int single)
{
    int sign;
    int exp_all, exp_zero, frac_zero, quiet;
    if (single) {
        uint32_t w = (uint32_t)u;
        sign = (int)(w >> 31);
        exp_all = ((w >> 23) & 0xff) == 0xff;
        exp_zero = ((w >> 23) & 0xff) == 0;
        frac_zero = (w & 0x7fffff) == 0;
        quiet = (int)((w >> 22) & 1);
    } else {
        sign = (int)(u >> 63);
        exp_all = ((u >> 52) & 0x7ff) == 0x7ff;
        exp_zero = ((u >> 52) & 0x7ff) == 0;
        frac_zero = (u & 0xfffffffffffffull) == 0;
        quiet = (int)((u >> 51) & 1);
    }
    if (exp_all) {
        if (frac_zero)
            return sign ? 1u << 0 : 1u << 7;
        return quiet ? 1u << 9 : 1u << 8;
    }
    if (exp_zero) {
        if (frac_zero)
            return sign ? 1u << 3 : 1u << 4;
        return sign ? 1u << 2 : 1u << 5;
    }
    return sign ? 1u << 1 : 1u << 6;
}

/* Execute an OP-FP or fused multiply-add instruction. Returns -1 when it is illegal. */
static int fp_exec(hart *h, uint32_t insn)
{
    if (fs_off(h))
        return -1;
    unsigned opc = insn & 0x7f, rd = (insn >> 7) & 31, f3 = (insn >> 12) & 7;
    unsigned rs1 = (insn >> 15) & 31, rs2 = (insn >> 20) & 31, f7 = insn >> 25;
    unsigned rm = f3 == 7 ? h->frm : f3;
    uint32_t flags = 0;
    int single;

    if (opc != 0x53) { /* fused multiply-add */
        unsigned fmt = f7 & 3, rs3 = insn >> 27;
        if (fmt > 1 || rm > 4)
            return -1;
        single = fmt == 0;
        int neg_prod = opc == 0x4b || opc == 0x4f, neg_add = opc == 0x47 || opc == 0x4f;
        fp_begin_h(h, rm);
        if (single) {
            float a = get_s(h, rs1), b = get_s(h, rs2), c = get_s(h, rs3);
            if ((isinf(a) && b == 0) || (a == 0 && isinf(b)))
                flags |= FFLAG_NV;
            if (neg_prod) a = -a;
            if (neg_add) c = -c;
            FP_BARRIER(a);
            FP_BARRIER(b);
            FP_BARRIER(c);
            float r = fmaf(a, b, c);
            FP_BARRIER(r);
            flags |= fp_end_h(rm);
            if (rm == 4 && (flags & FFLAG_NX) && isfinite(r)) {
                /* RMM: a*b is exact in double; a*b + c = s + e1 exactly (TwoSum) */
                double p = (double)a * (double)b, cd = c;
                double sum = p + cd, bp = sum - p;
                double e1 = (p - (sum - bp)) + (cd - bp);
                double res = (sum - (double)r) + e1;
                float nx = nextafterf(r, res > 0 ? INFINITY : -INFINITY);
                int tie = res != 0 && isfinite(nx) && fabs((double)nx - (double)r) == 2 * fabs(res);
                r = rmm_fix_s(r, (float)(res > 0 ? 1 : -1), tie);
                (void)host_flags_take();
            }
            set_s(h, rd, r);
        } else {
            double a = get_d(h, rs1), b = get_d(h, rs2), c = get_d(h, rs3);
            if ((isinf(a) && b == 0) || (a == 0 && isinf(b)))
                flags |= FFLAG_NV;
            if (neg_prod) a = -a;
            if (neg_add) c = -c;
            FP_BARRIER(a);
            FP_BARRIER(b);
            FP_BARRIER(c);
            double r = fma(a, b, c);
            FP_BARRIER(r);
            flags |= fp_end_h(rm);
            if (rm == 4 && (flags & FFLAG_NX) && isfinite(r)) {
                /* RMM: a*b = ph + pl and ph + c = s + e1 exactly; residual = exact - r */
                double ph = a * b, pl = fma(a, b, -ph);
                double sum = ph + c, bp = sum - ph;
                double e1 = (ph - (sum - bp)) + (c - bp);
                double res = (sum - r) + (e1 + pl);
                double nx = nextafter(r, res > 0 ? INFINITY : -INFINITY);
                int tie = res != 0 && isfinite(nx) && fabs(nx - r) == 2 * fabs(res);
                r = rmm_fix_d(r, res > 0 ? 1 : -1, tie);
                (void)host_flags_take();
            }
            set_d(h, rd, r);
        }
        h->fflags |= flags;
        h->mstatus |= MSTATUS_FS;
        return 0;
    }

    unsigned fmt = f7 & 3;
    if (fmt > 1)
        return -1;
    single = fmt == 0;
    switch (f7 >> 2) {
    case 0x00: case 0x01: case 0x02: case 0x03: case 0x0b: { /* add sub mul div sqrt */
        unsigned op = (f7 >> 2) == 0x0b ? 4 : f7 >> 2;
        if (rm > 4 || (op == 4 && rs2 != 0))
            return -1;
        if (single)
            set_s(h, rd, arith_s(h, op, get_s(h, rs1), get_s(h, rs2), rm, &flags));
        else
            set_d(h, rd, arith_d(h, op, get_d(h, rs1), get_d(h, rs2), rm, &flags));
        break;
    }
    case 0x04: { /* fsgnj */
        if (f3 > 2)
            return -1;
        if (single) {
            uint32_t a = unbox32(h->f[rs1]), b = unbox32(h->f[rs2]);
            uint32_t s = f3 == 0 ? b : f3 == 1 ? ~b : a ^ b;
            set_s_bits(h, rd, (a & 0x7fffffffu) | (s & 0x80000000u));
        } else {
            uint64_t a = h->f[rs1], b = h->f[rs2];
            uint64_t s = f3 == 0 ? b : f3 == 1 ? ~b : a ^ b;
            h->f[rd] = (a & ~(1ull << 63)) | (s & (1ull << 63));
        }
        break;
    }
    case 0x05: { /* fmin fmax */
        if (f3 > 1)
            return -1;
        if (single) {
            uint32_t ua = unbox32(h->f[rs1]), ub = unbox32(h->f[rs2]);
            float a = f32_from(ua), b = f32_from(ub);
            if (is_snan32(ua) || is_snan32(ub))
                flags |= FFLAG_NV;
            uint32_t r;
            if (isnan(a) && isnan(b))
                r = CANON_NAN32;
            else if (isnan(a))
                r = ub;
            else if (isnan(b))
                r = ua;
            else if (a == b)
                r = f3 == 0 ? (ua | ub) : (ua & ub); /* -0 < +0 */
            else
                r = ((a < b) == (f3 == 0)) ? ua : ub;
            set_s_bits(h, rd, r);
        } else {
            uint64_t ua = h->f[rs1], ub = h->f[rs2];
            double a = f64_from(ua), b = f64_from(ub);
            if (is_snan64(ua) || is_snan64(ub))
                flags |= FFLAG_NV;
            uint64_t r;
            if (isnan(a) && isnan(b))
                r = CANON_NAN64;
            else if (isnan(a))
                r = ub;
            else if (isnan(b))
                r = ua;
            else if (a == b)
                r = f3 == 0 ? (ua | ub) : (ua & ub);
            else
                r = ((a < b) == (f3 == 0)) ? ua : ub;
            h->f[rd] = r;
        }
        break;
    }
    case 0x08: { /* fcvt.s.d / fcvt.d.s */
        if (rm > 4 || rs2 != (single ? 1u : 0u))
            return -1;
        if (single) {
            uint64_t u = h->f[rs1];
            double x = f64_from(u);
            if (is_snan64(u))
                flags |= FFLAG_NV;
            unsigned mode = rm == 4 ? 0 : rm;
            if (rm == 4)
                fp_begin_h(h, 4); /* eager: RMM needs this op's inexact flag */
            else
                fp_begin_h(h, mode);
            FP_BARRIER(x);
            float r = (float)x;
            FP_BARRIER(r);
            flags |= rm == 4 ? host_flags_take() : fp_end_h(mode);
            if (rm == 4 && (flags & FFLAG_NX) && isfinite(r)) {
                double err = x - (double)r;
                r = rmm_fix_s(r, (float)(err > 0 ? 1 : -1),
                              err != 0 && (double)s_next(r, err > 0 ? INFINITY : -INFINITY) -
                                                  (double)r == 2 * err);
            }
            set_s(h, rd, r);
        } else {
            uint32_t u = unbox32(h->f[rs1]);
            if (is_snan32(u))
                flags |= FFLAG_NV;
            set_d(h, rd, (double)f32_from(u));
        }
        break;
    }
    case 0x14: { /* fle flt feq */
        if (f3 > 2)
            return -1;
        double a, b;
        int snan;
        if (single) {
            uint32_t ua = unbox32(h->f[rs1]), ub = unbox32(h->f[rs2]);
            a = f32_from(ua);
            b = f32_from(ub);
            snan = is_snan32(ua) || is_snan32(ub);
        } else {
            a = f64_from(h->f[rs1]);
            b = f64_from(h->f[rs2]);
            snan = is_snan64(h->f[rs1]) || is_snan64(h->f[rs2]);
        }
        uint64_t r = 0;
        if (isnan(a) || isnan(b)) {
            if (f3 != 2 || snan)
                flags |= FFLAG_NV;
        } else {
            r = f3 == 0 ? a <= b : f3 == 1 ? a < b : a == b;
        }
        h->x[rd ? rd : 32] = r;
        break;
    }
    case 0x18: { /* fcvt.w[u]/l[u] from float */
        if (rm > 4 || rs2 > 3)
            return -1;
        /* the flags are computed here: what the host raises on the way is dropped */
        fp_sync_flags(h);
        double x = single ? (double)get_s(h, rs1) : get_d(h, rs1);
        h->x[rd ? rd : 32] = cvt_to_int(x, rm, rs2, &flags);
        (void)host_flags_take();
        break;
    }
    case 0x1a: { /* fcvt to float from w[u]/l[u] */
        if (rm > 4 || rs2 > 3)
            return -1;
        h->f[rd] = cvt_from_int(h, h->x[rs1], rs2, single, rm, &flags);
        break;
    }
    case 0x1c: { /* fmv.x / fclass */
        if (rs2 != 0 || f3 > 1)
            return -1;
        uint64_t r;
        if (f3 == 0)
            r = single ? sext32((uint32_t)h->f[rs1]) : h->f[rs1];
        else
            r = fclass64(single ? unbox32(h->f[rs1]) : h->f[rs1], single);
        h->x[rd ? rd : 32] = r;
        break;
    }
    case 0x1e: { /* fmv.w.x / fmv.d.x */
        if (rs2 != 0 || f3 != 0)
            return -1;
        if (single)
            set_s_bits(h, rd, (uint32_t)h->x[rs1]);
        else
            h->f[rd] = h->x[rs1];
        break;
    }
    default:
        return -1;
    }
    h->fflags |= flags;
    h->mstatus |= MSTATUS_FS;
    return 0;
}

/* ---------------------------------------------------------------- decoder --------------- */

/* Decode flags */
#define D_END 1 /* the instruction ends its block */

static inline void set_op(op *o, unsigned kind, unsigned rd, unsigned rs1, unsigned rs2,
                          int64_t imm)
{
    o->kind = (uint16_t)kind;
    o->rd = (uint8_t)(rd ? rd : 32);
    o->rs1 = (uint8_t)rs1;
    o->rs2 = (uint8_t)rs2;
    o->rs3 = 0;
    o->rm = 0;
    o->imm = imm;
}

static int decode32(uint32_t insn, op *o)
{
    unsigned opc = insn & 0x7f, rd = (insn >> 7) & 31, f3 = (insn >> 12) & 7;
    unsigned rs1 = (insn >> 15) & 31, rs2 = (insn >> 20) & 31, f7 = insn >> 25;
    int64_t immI = (int32_t)insn >> 20;
    int64_t immS = (int64_t)((int32_t)insn >> 25) * 32 + rd;
    int64_t immB = (((int64_t)(int32_t)insn >> 31) << 12) | ((insn >> 7) & 1) << 11 |
                   ((insn >> 25) & 0x3f) << 5 | ((insn >> 8) & 0xf) << 1;
    int64_t immU = (int32_t)(insn & 0xfffff000u);
    int64_t immJ = (((int64_t)(int32_t)insn >> 31) << 20) | (insn & 0xff000) |
                   ((insn >> 20) & 1) << 11 | ((insn >> 21) & 0x3ff) << 1;
    unsigned sh = (insn >> 20) & 63, f6 = insn >> 26;

    set_op(o, OP_illegal, 0, 0, 0, 0);
    switch (opc) {
    case 0x37: set_op(o, OP_li, rd, 0, 0, immU); return 0;
    case 0x17: set_op(o, OP_auipc, rd, 0, 0, immU); return 0;
    case 0x6f: set_op(o, OP_jal, rd, 0, 0, immJ); return D_END;
    case 0x67:
        if (f3)
            return D_END;
        set_op(o, OP_jalr, rd, rs1, 0, immI);
        return D_END;
    case 0x63: {
        static const uint16_t k[8] = {OP_beq, OP_bne, OP_illegal, OP_illegal,
                                      OP_blt, OP_bge, OP_bltu, OP_bgeu};
        if (k[f3] == OP_illegal)
            return D_END;
        set_op(o, k[f3], 0, rs1, rs2, immB);
        return 0;
    }
    case 0x03: {
        static const uint16_t k[8] = {OP_lb, OP_lh, OP_lw, OP_ld, OP_lbu, OP_lhu, OP_lwu,
                                      OP_illegal};
        if (k[f3] == OP_illegal)
            return D_END;
        set_op(o, k[f3], rd, rs1, 0, immI);
        return 0;
    }
    case 0x23: {
        static const uint16_t k[4] = {OP_sb, OP_sh, OP_sw, OP_sd};
        if (f3 > 3)
            return D_END;
        set_op(o, k[f3], 0, rs1, rs2, immS);
        return 0;
    }
    case 0x07:
        if (f3 != 2 && f3 != 3)
            return D_END;
        set_op(o, f3 == 2 ? OP_flw : OP_fld, 0, rs1, 0, immI);
        o->rd = (uint8_t)rd;
        return 0;
    case 0x27:
        if (f3 != 2 && f3 != 3)
            return D_END;
        set_op(o, f3 == 2 ? OP_fsw : OP_fsd, 0, rs1, rs2, immS);
        return 0;
    case 0x13:
        switch (f3) {
        case 0:
            if (rs1 == 0)
                set_op(o, OP_li, rd, 0, 0, immI);
            else if (immI == 0)
                set_op(o, OP_mv, rd, rs1, 0, 0);
            else
                set_op(o, OP_addi, rd, rs1, 0, immI);
            return 0;
        case 2: set_op(o, OP_slti, rd, rs1, 0, immI); return 0;
        case 3: set_op(o, OP_sltiu, rd, rs1, 0, immI); return 0;
        case 4: set_op(o, OP_xori, rd, rs1, 0, immI); return 0;
        case 6: set_op(o, OP_ori, rd, rs1, 0, immI); return 0;
        case 7: set_op(o, OP_andi, rd, rs1, 0, immI); return 0;
        case 1:
            if (f6 == 0) { set_op(o, OP_slli, rd, rs1, 0, sh); return 0; }
            if (f6 == 0x0a) { set_op(o, OP_bseti, rd, rs1, 0, sh); return 0; }
            if (f6 == 0x12) { set_op(o, OP_bclri, rd, rs1, 0, sh); return 0; }
            if (f6 == 0x1a) { set_op(o, OP_binvi, rd, rs1, 0, sh); return 0; }
            if (f7 == 0x30) {
                static const uint16_t k[8] = {OP_clz, OP_ctz, OP_cpop, OP_illegal,
                                              OP_sextb, OP_sexth, OP_illegal, OP_illegal};
                if (k[rs2 & 7] != OP_illegal && rs2 < 8) {
                    set_op(o, k[rs2], rd, rs1, 0, 0);
                    return 0;
                }
            }
            return D_END;
        default: /* 5 */
            if (f6 == 0) { set_op(o, OP_srli, rd, rs1, 0, sh); return 0; }
            if (f6 == 0x10) { set_op(o, OP_srai, rd, rs1, 0, sh); return 0; }
            if (f6 == 0x18) { set_op(o, OP_rori, rd, rs1, 0, sh); return 0; }
            if (f6 == 0x12) { set_op(o, OP_bexti, rd, rs1, 0, sh); return 0; }
            if ((insn >> 20) == 0x287) { set_op(o, OP_orcb, rd, rs1, 0, 0); return 0; }
            if ((insn >> 20) == 0x6b8) { set_op(o, OP_rev8, rd, rs1, 0, 0); return 0; }
            return D_END;
        }
    case 0x1b:
        switch (f3) {
        case 0: set_op(o, OP_addiw, rd, rs1, 0, immI); return 0;
        case 1:
            if (f7 == 0) { set_op(o, OP_slliw, rd, rs1, 0, rs2); return 0; }
            if (f6 == 0x02) { set_op(o, OP_slliuw, rd, rs1, 0, sh); return 0; }
            if (f7 == 0x30 && rs2 <= 2) {
                static const uint16_t k[3] = {OP_clzw, OP_ctzw, OP_cpopw};
                set_op(o, k[rs2], rd, rs1, 0, 0);
                return 0;
            }
            return D_END;
        case 5:
            if (f7 == 0) { set_op(o, OP_srliw, rd, rs1, 0, rs2); return 0; }
            if (f7 == 0x20) { set_op(o, OP_sraiw, rd, rs1, 0, rs2); return 0; }
            if (f7 == 0x30) { set_op(o, OP_roriw, rd, rs1, 0, rs2); return 0; }
            return D_END;
        default:
            return D_END;
        }
    case 0x33: {
        unsigned k = OP_illegal;
        switch (f7) {
        case 0x00: {
            static const uint16_t t[8] = {OP_add, OP_sll, OP_slt, OP_sltu, OP_xor, OP_srl,
                                          OP_or, OP_and};
            k = t[f3];
            break;
        }
        case 0x20:
            k = f3 == 0 ? OP_sub : f3 == 5 ? OP_sra : f3 == 4 ? OP_xnor : f3 == 6 ? OP_orn :
                f3 == 7 ? OP_andn : OP_illegal;
            break;
        case 0x01: {
            static const uint16_t t[8] = {OP_mul, OP_mulh, OP_mulhsu, OP_mulhu, OP_div,
                                          OP_divu, OP_rem, OP_remu};
            k = t[f3];
            break;
        }
        case 0x10:
            k = f3 == 2 ? OP_sh1add : f3 == 4 ? OP_sh2add : f3 == 6 ? OP_sh3add : OP_illegal;
            break;
        case 0x05:
            k = f3 == 4 ? OP_min : f3 == 5 ? OP_minu : f3 == 6 ? OP_max : f3 == 7 ? OP_maxu :
                OP_illegal;
            break;
        case 0x30: k = f3 == 1 ? OP_rol : f3 == 5 ? OP_ror : OP_illegal; break;
        case 0x24: k = f3 == 1 ? OP_bclr : f3 == 5 ? OP_bext : OP_illegal; break;
        case 0x34: k = f3 == 1 ? OP_binv : OP_illegal; break;
        case 0x14: k = f3 == 1 ? OP_bset : OP_illegal; break;
        default: break;
        }
        if (k == OP_illegal)
            return D_END;
        set_op(o, k, rd, rs1, rs2, 0);
        return 0;
    }
    case 0x3b: {
        unsigned k = OP_illegal;
        switch (f7) {
        case 0x00: k = f3 == 0 ? OP_addw : f3 == 1 ? OP_sllw : f3 == 5 ? OP_srlw : OP_illegal; break;
        case 0x20: k = f3 == 0 ? OP_subw : f3 == 5 ? OP_sraw : OP_illegal; break;
        case 0x01:
            k = f3 == 0 ? OP_mulw : f3 == 4 ? OP_divw : f3 == 5 ? OP_divuw : f3 == 6 ? OP_remw :
                f3 == 7 ? OP_remuw : OP_illegal;
            break;
        case 0x04:
            k = f3 == 0 ? OP_adduw : (f3 == 4 && rs2 == 0) ? OP_zexth : OP_illegal;
            break;
        case 0x10:
            k = f3 == 2 ? OP_sh1adduw : f3 == 4 ? OP_sh2adduw : f3 == 6 ? OP_sh3adduw :
                OP_illegal;
            break;
        case 0x30: k = f3 == 1 ? OP_rolw : f3 == 5 ? OP_rorw : OP_illegal; break;
        default: break;
        }
        if (k == OP_illegal)
            return D_END;
        set_op(o, k, rd, rs1, rs2, 0);
        return 0;
    }
    case 0x0f:
        if (insn == 0x0100000f) { /* pause (Zihintpause): a spinning hart yields */
            set_op(o, OP_system, 0, 0, 0, 0);
            o->rm = SYS_PAUSE;
            return D_END;
        }
        if (f3 == 0) {
            /* x86-64 keeps every order RVWMO's fence asks for except a store before a load
             * (pred W, succ R); fence.tso (fm 8) does not ask for that one */
            int w_r = (insn >> 28) == 0 && ((insn >> 24) & 1) && ((insn >> 21) & 1);
            set_op(o, w_r ? OP_fence : OP_nop, 0, 0, 0, 0);
            return 0;
        }
        if (f3 == 1) {
            set_op(o, OP_system, 0, 0, 0, 0);
            o->rm = SYS_FENCEI;
            return D_END;
        }
        return D_END;
    case 0x73: {
        set_op(o, OP_system, rd, rs1, rs2, 0);
        if (f3 == 0) {
            if (insn == 0x00000073) o->rm = SYS_ECALL;
            else if (insn == 0x00100073) o->rm = SYS_EBREAK;
            else if (insn == 0x30200073) o->rm = SYS_MRET;
            else if (insn == 0x10200073) o->rm = SYS_SRET;
            else if (insn == 0x10500073) o->rm = SYS_WFI;
            else if (f7 == 0x09 && rd == 0) o->rm = SYS_SFENCE;
            else set_op(o, OP_illegal, 0, 0, 0, 0);
            return D_END;
        }
        if (f3 == 4) {
            set_op(o, OP_illegal, 0, 0, 0, 0);
            return D_END;
        }
        static const uint8_t k[8] = {0, SYS_CSRRW, SYS_CSRRS, SYS_CSRRC, 0, SYS_CSRRWI,
                                     SYS_CSRRSI, SYS_CSRRCI};
        o->rm = k[f3];
        o->imm = insn >> 20;
        o->rs3 = rd == 0; /* csrrw with rd=x0 does not read */
        return D_END;
    }
    case 0x2f: {
        unsigned f5 = insn >> 27;
        if (f3 != 2 && f3 != 3)
            return D_END;
        if (f5 != 0 && f5 != 1 && f5 != 2 && f5 != 3 && f5 != 4 && f5 != 8 && f5 != 0xc &&
            f5 != 0x10 && f5 != 0x14 && f5 != 0x18 && f5 != 0x1c)
            return D_END;
        if (f5 == 2 && rs2 != 0)
            return D_END;
        set_op(o, OP_amo, rd, rs1, rs2, 0);
        o->rm = (uint8_t)f5;
        o->rs3 = f3 == 2 ? 4 : 8;
        return 0;
    }
    case 0x43: case 0x47: case 0x4b: case 0x4f: {
        /* fused multiply-add: a fast op for static RNE or dynamic rounding */
        static const uint16_t kd[4] = {OP_fmadd_d, OP_fmsub_d, OP_fnmsub_d, OP_fnmadd_d};
        static const uint16_t ks[4] = {OP_fmadd_s, OP_fmsub_s, OP_fnmsub_s, OP_fnmadd_s};
        unsigned fmt = f7 & 3;
        set_op(o, OP_fp, 0, 0, 0, insn);
        if ((f3 == 0 || f3 == 7) && fmt <= 1) {
            o->kind = fmt ? kd[(opc >> 2) & 3] : ks[(opc >> 2) & 3];
            o->rd = (uint8_t)rd;
            o->rs1 = (uint8_t)rs1;
            o->rs2 = (uint8_t)rs2;
            o->rs3 = (uint8_t)(insn >> 27);
            o->rm = (uint8_t)f3;
        }
        return 0;
    }
    case 0x53: {
        unsigned k = OP_fp;
        if (f3 == 0 || f3 == 7) {
            switch (f7) {
            case 0x01: k = OP_fadd_d; break;
            case 0x05: k = OP_fsub_d; break;
            case 0x09: k = OP_fmul_d; break;
            case 0x0d: k = OP_fdiv_d; break;
            case 0x00: k = OP_fadd_s; break;
            case 0x04: k = OP_fsub_s; break;
            case 0x08: k = OP_fmul_s; break;
            case 0x0c: k = OP_fdiv_s; break;
            case 0x69: k = rs2 == 0 ? OP_fcvt_d_w : OP_fp; break;
            default: break;
            }
        }
        if (f7 == 0x11 && f3 == 0 && rs1 == rs2)
            k = OP_fmv_d;
        if (f7 == 0x51)
            k = f3 == 0 ? OP_fle_d : f3 == 1 ? OP_flt_d : f3 == 2 ? OP_feq_d : OP_fp;
        set_op(o, OP_fp, 0, 0, 0, insn);
        if (k != OP_fp) {
            o->kind = (uint16_t)k;
            o->rd = (uint8_t)rd;
            o->rs1 = (uint8_t)rs1;
            o->rs2 = (uint8_t)rs2;
            o->rm = (uint8_t)f3;
            if (k == OP_fle_d || k == OP_flt_d || k == OP_feq_d)
                o->rd = (uint8_t)(rd ? rd : 32);
        }
        return 0;
    }
    default:
        return D_END;
    }
}

/* Compressed instructions (unprivileged spec ch. 16), decoded straight to ops. */
static int decode16(uint32_t c, op *o)
{
    unsigned q = c & 3, f3 = (c >> 13) & 7;
    unsigned rd = (c >> 7) & 31, rs2 = (c >> 2) & 31;
    unsigned rdp = ((c >> 2) & 7) + 8, rs1p = ((c >> 7) & 7) + 8;
    int64_t imm6 = (int64_t)(((c >> 12) & 1) ? -32 : 0) | ((c >> 2) & 31);

    set_op(o, OP_illegal, 0, 0, 0, 0);
    if (c == 0)
        return D_END;
    if (q == 0) {
        switch (f3) {
        case 0: {
            unsigned imm = ((c >> 7) & 0x30) | ((c >> 1) & 0x3c0) | ((c >> 4) & 4) | ((c >> 2) & 8);
            if (!imm)
                return D_END;
            set_op(o, OP_addi, rdp, 2, 0, imm);
            return 0;
        }
        case 1: case 3: case 5: case 7: {
            unsigned imm = ((c >> 7) & 0x38) | ((c << 1) & 0xc0);
            static const uint16_t k[8] = {0, OP_fld, 0, OP_ld, 0, OP_fsd, 0, OP_sd};
            set_op(o, k[f3], f3 < 4 ? rdp : 0, rs1p, rdp, imm);
            if (f3 == 1)
                o->rd = (uint8_t)rdp;
            return 0;
        }
        case 2: case 6: {
            unsigned imm = ((c >> 7) & 0x38) | ((c >> 4) & 4) | ((c << 1) & 0x40);
            set_op(o, f3 == 2 ? OP_lw : OP_sw, f3 == 2 ? rdp : 0, rs1p, rdp, imm);
            return 0;
        }
        default:
            return D_END;
        }
    }
    if (q == 1) {
        switch (f3) {
        case 0:
            set_op(o, rd ? OP_addi : OP_nop, rd, rd, 0, imm6);
            return 0;
        case 1:
            if (!rd)
                return D_END;
            set_op(o, OP_addiw, rd, rd, 0, imm6);
            return 0;
        case 2:
            set_op(o, OP_li, rd, 0, 0, imm6);
            return 0;
        case 3:
            if (rd == 2) {
                int64_t imm = (int64_t)(((c >> 12) & 1) ? -512 : 0) | ((c >> 2) & 0x10) |
                              ((c << 3) & 0x20) | ((c << 1) & 0x40) | ((c << 4) & 0x180);
                if (!imm)
                    return D_END;
                set_op(o, OP_addi, 2, 2, 0, imm);
                return 0;
            }
            if (imm6 == 0)
                return D_END;
            set_op(o, OP_li, rd, 0, 0, imm6 << 12);
            return 0;
        case 4: {
            unsigned f2 = (c >> 10) & 3;
            unsigned sh = ((c >> 7) & 0x20) | ((c >> 2) & 31);
            if (f2 == 0) { set_op(o, OP_srli, rs1p, rs1p, 0, sh); return 0; }
            if (f2 == 1) { set_op(o, OP_srai, rs1p, rs1p, 0, sh); return 0; }
            if (f2 == 2) { set_op(o, OP_andi, rs1p, rs1p, 0, imm6); return 0; }
            unsigned sub = ((c >> 10) & 4) | ((c >> 5) & 3);
            static const uint16_t k[8] = {OP_sub, OP_xor, OP_or, OP_and, OP_subw, OP_addw,
                                          OP_illegal, OP_illegal};
            if (k[sub] == OP_illegal)
                return D_END;
            set_op(o, k[sub], rs1p, rs1p, rdp, 0);
            return 0;
        }
        case 5: {
            int64_t imm = (int64_t)(((c >> 12) & 1) ? -2048 : 0) | ((c >> 7) & 0x10) | ((c >> 1) & 0x300) |
                          ((c << 2) & 0x400) | ((c >> 1) & 0x40) | ((c << 1) & 0x80) |
                          ((c >> 2) & 0xe) | ((c << 3) & 0x20);
            set_op(o, OP_jal, 0, 0, 0, imm);
            return D_END;
        }
        default: { /* 6, 7: c.beqz, c.bnez */
            int64_t imm = (int64_t)(((c >> 12) & 1) ? -256 : 0) | ((c >> 7) & 0x18) | ((c << 1) & 0xc0) |
                          ((c >> 2) & 6) | ((c << 3) & 0x20);
            set_op(o, f3 == 6 ? OP_beq : OP_bne, 0, rs1p, 0, imm);
            return 0;
        }
        }
    }
    if (q == 2) {
        switch (f3) {
        case 0: {
            unsigned sh = ((c >> 7) & 0x20) | ((c >> 2) & 31);
            set_op(o, rd ? OP_slli : OP_nop, rd, rd, 0, sh);
            return 0;
        }
        case 1: case 3: {
            unsigned imm = ((c >> 7) & 0x20) | ((c >> 2) & 0x18) | ((c << 4) & 0x1c0);
            if (f3 == 3 && !rd)
                return D_END;
            set_op(o, f3 == 1 ? OP_fld : OP_ld, rd, 2, 0, imm);
            if (f3 == 1)
                o->rd = (uint8_t)rd;
            return 0;
        }
        case 2: {
            unsigned imm = ((c >> 7) & 0x20) | ((c >> 2) & 0x1c) | ((c << 4) & 0xc0);
            if (!rd)
                return D_END;
            set_op(o, OP_lw, rd, 2, 0, imm);
            return 0;
        }
        case 4:
            if (!((c >> 12) & 1)) {
                if (rs2 == 0) {
                    if (!rd)
                        return D_END;
                    set_op(o, OP_jalr, 0, rd, 0, 0);
                    return D_END;
                }
                set_op(o, OP_mv, rd, rs2, 0, 0);
                return 0;
            }
            if (rs2 == 0) {
                if (rd == 0) {
                    set_op(o, OP_system, 0, 0, 0, 0);
                    o->rm = SYS_EBREAK;
                    return D_END;
                }
                set_op(o, OP_jalr, 1, rd, 0, 0);
                return D_END;
            }
            set_op(o, OP_add, rd, rd, rs2, 0);
            return 0;
        case 5: case 7: {
            unsigned imm = ((c >> 7) & 0x38) | ((c >> 1) & 0x1c0);
            set_op(o, f3 == 5 ? OP_fsd : OP_sd, 0, 2, rs2, imm);
            return 0;
        }
        default: { /* 6: c.swsp */
            unsigned imm = ((c >> 7) & 0x3c) | ((c >> 1) & 0xc0);
            set_op(o, OP_sw, 0, 2, rs2, imm);
            return 0;
        }
        }
    }
    return D_END;
}

/* ---------------------------------------------------------------- blocks ---------------- */

static int fetch_raw(hart *h, uint64_t pc, uint32_t *raw)
{
    /* Re-read an instruction's bits for an illegal-instruction tval (best effort). */
    uint64_t pa, avail;
    int level, w;
    *raw = 0;
    for (int k = 0; k < 2; k++) {
        uint64_t a = pc + 2 * (uint64_t)k;
        if (translate(h, a, ACC_X, h->priv, &pa, &level))
            return -1;
        uint8_t *p = phys_host(h->e, pa, &avail, &w);
        if (!p || avail < 2)
            return -1;
        uint16_t half;
        memcpy(&half, p, 2);
        *raw |= (uint32_t)half << (16 * k);
        if (k == 0 && (half & 3) != 3)
            break;
    }
    return 0;
}

static void raise_illegal(hart *h)
{
    uint32_t raw;
    fetch_raw(h, h->pc, &raw);
    take_trap(h, EXC_ILLEGAL, raw);
}

static void emit_in_asm(hart *h, block *b)
{
    tcg_engine *e = h->e;
    const uint8_t *code = b->code;
    uint32_t off = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        uint32_t raw = 0;
        memcpy(&raw, code + off, b->ops[i].len);
        trace_emit(e, TCG_TRACE_IN_ASM, h->id, b->ops[i].pc, raw, 0, b->ops[i].len);
        off += b->ops[i].len;
    }
}

static int is_breakpoint(const tcg_engine *e, uint64_t pc)
{
    for (int i = 0; i < e->nbp; i++)
        if (e->bp[i] == pc)
            return 1;
    return 0;
}

/* Decode a block at vpc from host memory `host` (`room` bytes readable in this page); with
 * breakpoints (`bps`), the block ends before an instruction that has one, so that every
 * breakpoint is at the start of a block, where service() looks. */
static int decode_into(op *ops, int max, uint64_t vpc, const uint8_t *host, uint32_t room,
                       uint32_t *nbytes, const tcg_engine *bps)
{
    int n = 0;
    uint32_t off = 0;
    while (n < max) {
        if (off + 2 > room)
            break;
        if (bps && n > 0 && is_breakpoint(bps, vpc + off))
            break;
        uint16_t lo;
        memcpy(&lo, host + off, 2);
        op *o = &ops[n];
        int flags;
        if ((lo & 3) == 3) {
            if (off + 4 > room)
                break;
            uint32_t insn;
            memcpy(&insn, host + off, 4);
            flags = decode32(insn, o);
            o->len = 4;
        } else {
            flags = decode16(lo, o);
            o->len = 2;
        }
        o->pc = vpc + off;
        o->chain = NULL;
        off += o->len;
        n++;
        if (flags & D_END)
            break;
    }
    ops[n].kind = OP_end;
    ops[n].pc = vpc + off;
    ops[n].len = 0;
    ops[n].chain = NULL;
    *nbytes = off;
    return n;
}

static block *lookup_block(hart *h)
{
    tcg_engine *e = h->e;
    uint64_t pc = h->pc;
    int fm = fetch_mode(h->priv);
    tlb_entry *t = &h->tlb_x[fm][(pc >> 12) & TLB_MASK];
    uint8_t *host;
    uint64_t ppc, avail = 0;
    int uniform = 1;
    if (t->tag == (pc & PAGE_MASK)) {
        host = (uint8_t *)(uintptr_t)(pc + t->addend);
        ppc = t->ppage | (pc & 0xfff);
        avail = PAGE_SIZE - (pc & 0xfff);
    } else {
        int level, w;
        int cause = translate(h, pc, ACC_X, h->priv, &ppc, &level);
        if (cause) {
            take_trap(h, (uint64_t)cause, pc);
            return NULL;
        }
        int perm = pmp_perm(h, ppc & PAGE_MASK, PAGE_SIZE, h->priv);
        if (perm < 0) {
            uniform = 0;
            if (!pmp_ok(h, ppc, 2, ACC_X, h->priv)) {
                take_trap(h, EXC_INSN_ACCESS, pc);
                return NULL;
            }
        } else if (!(perm & PMP_X)) {
            take_trap(h, EXC_INSN_ACCESS, pc);
            return NULL;
        }
        host = phys_host(e, ppc, &avail, &w);
        if (!host || in_hole(e, ppc, 2)) {
            take_trap(h, EXC_INSN_ACCESS, pc);
            return NULL;
        }
        if (uniform)
            tlb_fill(h, ACC_X, pc, ppc, level, h->priv);
        uint64_t page_room = PAGE_SIZE - (pc & 0xfff);
        if (avail > page_room)
            avail = page_room;
    }
    int cacheable = uniform && (ppc - e->ram_base) < e->ram_size && !h->single_step;
    if (cacheable) {
        unsigned idx = bhash_index(ppc, pc);
        code_lock(e);
        for (block *b = e->bhash[idx]; b; b = b->hnext) {
            if (b->ppc != ppc || b->vpc != pc)
                continue;
            uint32_t epoch = ATOMIC_LOAD(&e->code_epoch);
            if (b->epoch != epoch) {
                if (memcmp(b->code, host, b->nbytes) != 0) {
                    unlink_block(e, b);
                    break;
                }
                b->epoch = epoch;
            }
            code_unlock(e);
            return b;
        }
        code_unlock(e);
    }

    /* decode a new block */
    uint16_t first;
    memcpy(&first, host, avail >= 2 ? 2 : 1);
    if ((first & 3) == 3 && avail < 4) {
        /* an instruction that crosses into the next page: translate its second half */
        uint64_t pa2, avail2;
        int level, w;
        int cause = translate(h, pc + 2, ACC_X, h->priv, &pa2, &level);
        if (cause) {
            take_trap(h, (uint64_t)cause, pc + 2);
            return NULL;
        }
        uint8_t *host2 = phys_host(e, pa2, &avail2, &w);
        if (!host2 || !pmp_ok(h, pa2, 2, ACC_X, h->priv)) {
            take_trap(h, EXC_INSN_ACCESS, pc + 2);
            return NULL;
        }
        memcpy(h->scratch_code, host, 2);
        memcpy(h->scratch_code + 2, host2, 2);
        block *b = &h->scratch.b;
        uint32_t nb;
        b->n = (uint32_t)decode_into(b->ops, 1, pc, h->scratch_code, 4, &nb, NULL);
        b->nbytes = nb;
        b->code = h->scratch_code;
        b->vpc = pc;
        b->ppc = ppc;
        b->linked = 0;
        b->valid = 0;
        if (e->trace_flags & (1u << TCG_TRACE_IN_ASM))
            emit_in_asm(h, b);
        return b;
    }
    if (!cacheable) { /* one instruction at a time, decoded again each time */
    one_insn:;
        block *b = &h->scratch.b;
        uint32_t nb;
        b->n = (uint32_t)decode_into(b->ops, 1, pc, host, (uint32_t)avail, &nb, NULL);
        b->nbytes = nb;
        b->code = host;
        b->vpc = pc;
        b->ppc = ppc;
        b->linked = 0;
        b->valid = 0;
        if (e->trace_flags & (1u << TCG_TRACE_IN_ASM))
            emit_in_asm(h, b);
        return b;
    }
    /* decode a copy: with thread=multi another hart may store to the page meanwhile, and
     * the block's code bytes (for fence.i) must be the ones it was decoded from */
    op tmp[BLOCK_MAX + 1];
    uint8_t bytes[BLOCK_MAX * 4];
    uint32_t room = avail < sizeof(bytes) ? (uint32_t)avail : (uint32_t)sizeof(bytes);
    uint32_t epoch = ATOMIC_LOAD(&e->code_epoch);
    memcpy(bytes, host, room);
    uint32_t nbytes;
    int n = decode_into(tmp, BLOCK_MAX, pc, bytes, room, &nbytes, e->nbp ? e : NULL);
    size_t size = sizeof(block) + (size_t)(n + 1) * sizeof(op);
    code_lock(e);
    block *b = arena_alloc(e, size + nbytes);
    if (!b) {
        if (e->mt) { /* other harts may be running blocks of the arena */
            code_unlock(e);
            code_flush_request(e);
            goto one_insn;
        }
        code_flush_all(e);
        b = arena_alloc(e, size + nbytes);
    }
    memcpy(b->ops, tmp, (size_t)(n + 1) * sizeof(op));
    uint8_t *code = (uint8_t *)b + size;
    memcpy(code, bytes, nbytes);
    b->code = code;
    b->n = (uint32_t)n;
    b->nbytes = nbytes;
    b->vpc = pc;
    b->ppc = ppc;
    b->epoch = epoch;
    b->linked = 0;
    b->valid = 1;
    b->jit_hot = 0;
    b->jit = NULL;
    unsigned idx = bhash_index(ppc, pc);
    b->hnext = e->bhash[idx];
    e->bhash[idx] = b;
    uint64_t pidx = (ppc - e->ram_base) >> 12;
    b->pnext = e->page_blocks[pidx];
    if (!e->page_blocks[pidx])
        tlb_drop_writable_page(e, ppc & PAGE_MASK);
    e->page_blocks[pidx] = b;
    code_unlock(e);
    if (e->trace_flags & (1u << TCG_TRACE_IN_ASM))
        emit_in_asm(h, b);
    return b;
}

/* ---------------------------------------------------------------- system instructions --- */

static int64_t mtime_to_ns(tcg_engine *e, uint64_t mtime)
{
    if (e->icount_shift >= 0)
        return -1;
    return (int64_t)(mtime - (uint64_t)e->mtime_offset) * NS_PER_TICK;
}

static int others_all_idle(hart *h)
{
    tcg_engine *e = h->e;
    for (int k = 0; k < e->num_harts; k++) {
        hart *o = e->harts[k];
        if (o != h && !o->stopped && !o->halted)
            return 0;
    }
    return 1;
}

/* WFI with nothing pending: halt (return to the VMM), or in icount mode jump the clock to
 * the next timer event when every other hart idles too. */
static int do_halt(hart *h)
{
    tcg_engine *e = h->e;
    uint64_t d = next_timer_deadline(h);
    if (e->icount_shift >= 0 && d != ~(uint64_t)0 && others_all_idle(h)) {
        uint64_t now = mtime_now(e, h);
        if (d > now)
            e->mtime_offset += (int64_t)(d - now);
        timer_changed(h);
        return ST_OK;
    }
    h->halted = 1;
    if (e->mt) { /* sleep in service(), outside any block (see mt_halt_wait) */
        set_attention(h);
        return ST_OK;
    }
    h->exit->kind = TCG_EXIT_HALT;
    h->exit->deadline_ns = d == ~(uint64_t)0 ? -1 : mtime_to_ns(e, d);
    return ST_EXIT;
}

static int exec_csr(hart *h, const op *o)
{
    unsigned csr = (unsigned)o->imm;
    unsigned kind = o->rm;
    int imm_form = kind >= SYS_CSRRWI;
    uint64_t src = imm_form ? o->rs1 : h->x[o->rs1];
    int is_rw = kind == SYS_CSRRW || kind == SYS_CSRRWI;
    int do_write = is_rw || o->rs1 != 0;
    int do_read = !(is_rw && o->rs3);
    if (((csr >> 8) & 3) > (unsigned)h->priv || (do_write && (csr >> 10) == 3))
        return -1;
    uint64_t old = 0;
    if (do_read || !is_rw) {
        if (csr_read(h, csr, &old, 1))
            return -1;
    } else {
        uint64_t dummy;
        if (csr_read(h, csr, &dummy, 1))
            return -1;
    }
    if (do_write) {
        /* mip/sip: the read-modify-write sees only the software-writable bits, not the
         * external SEIP level nor the timer bits (privileged spec 3.1.9) */
        uint64_t base = (csr == 0x344 || csr == 0x144) ? (h->mip_sw & (csr == 0x144 ? h->mideleg : ~0ull)) : old;
        uint64_t v = is_rw ? src : (kind == SYS_CSRRS || kind == SYS_CSRRSI) ? base | src : base & ~src;
        if (csr_write(h, csr, v))
            return -1;
        /* A write to minstret/mcycle is done instead of this instruction's increment (the
         * next instruction reads the value written: Zicsr, "CSR Instructions"). */
        if (csr == 0xB00)
            h->cycle_off--;
        else if (csr == 0xB02)
            h->instret_off--;
    }
    h->x[o->rd] = old;
    return 0;
}

static int exec_system(hart *h, const op *o)
{
    tcg_engine *e = h->e;
    switch (o->rm) {
    case SYS_ECALL:
        if (e->builtin_fw && h->priv == PRV_S) {
            tcg_exit *x = h->exit;
            x->kind = TCG_EXIT_SBI;
            for (int i = 0; i < 8; i++)
                x->args[i] = h->x[10 + i];
            h->pend = PEND_SBI;
            h->pend_len = o->len;
            return ST_EXIT;
        }
        take_trap(h, (uint64_t)(EXC_ECALL_U + h->priv), 0);
        return ST_TRAP;
    case SYS_EBREAK:
        take_trap(h, EXC_BREAKPOINT, h->pc);
        return ST_TRAP;
    case SYS_MRET: {
        if (h->priv != PRV_M)
            break;
        uint64_t s = h->mstatus;
        int mpp = (int)((s >> 11) & 3);
        s = (s & ~MSTATUS_MIE) | ((s & MSTATUS_MPIE) ? MSTATUS_MIE : 0);
        s |= MSTATUS_MPIE;
        s &= ~MSTATUS_MPP;
        if (mpp != PRV_M)
            s &= ~MSTATUS_MPRV;
        h->mstatus = s;
        h->priv = mpp;
        h->pc = h->mepc;
        if (h->tcontrol & TCONTROL_MPTE) /* mte = mpte */
            h->tcontrol |= TCONTROL_MTE;
        else
            h->tcontrol &= ~(uint64_t)TCONTROL_MTE;
        h->insns++;
        update_dmode(h);
        set_attention(h);
        return ST_OK;
    }
    case SYS_SRET: {
        if (h->priv < PRV_S || (h->priv == PRV_S && (h->mstatus & MSTATUS_TSR)))
            break;
        uint64_t s = h->mstatus;
        int spp = (s & MSTATUS_SPP) ? PRV_S : PRV_U;
        s = (s & ~MSTATUS_SIE) | ((s & MSTATUS_SPIE) ? MSTATUS_SIE : 0);
        s |= MSTATUS_SPIE;
        s &= ~MSTATUS_SPP;
        s &= ~MSTATUS_MPRV;
        h->mstatus = s;
        h->priv = spp;
        h->pc = h->sepc;
        h->insns++;
        update_dmode(h);
        set_attention(h);
        return ST_OK;
    }
    case SYS_WFI:
        if (h->priv == PRV_U || (h->priv == PRV_S && (h->mstatus & MSTATUS_TW)))
            break;
        h->pc += o->len;
        h->insns++;
        h->mip_sw |= ATOMIC_XCHG(&h->mip_edge, 0);
        if (!(read_mip(h) & h->mie)) {
            update_timer_bits(h);
            if (!(read_mip(h) & h->mie))
                return do_halt(h);
        }
        /* An interrupt is pending and enabled in mie, perhaps only since the timer update
         * just above: WFI is a no-op, and the trap (if mstatus lets it in) comes before the
         * next instruction, not at the next periodic timer check.  With other harts to run,
         * this hart is waiting for them (a polling loop): give up the rest of the slice. */
        set_attention(h);
        if (e->num_harts > 1 && !e->mt) {
            h->exit->kind = TCG_EXIT_NONE;
            return ST_EXIT;
        }
        return ST_OK;
    case SYS_PAUSE:
        h->pc += o->len;
        h->insns++;
        if (e->mt) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            return ST_OK;
        }
        if (e->num_harts > 1) {
            h->exit->kind = TCG_EXIT_NONE;
            return ST_EXIT;
        }
        return ST_OK;
    case SYS_SFENCE:
        if (h->priv == PRV_U || (h->priv == PRV_S && (h->mstatus & MSTATUS_TVM)))
            break;
        if (o->rs1)
            tlb_flush_va(h, h->x[o->rs1]);
        else
            tlb_flush_all(h);
        h->pc += o->len;
        h->insns++;
        return ST_OK;
    case SYS_FENCEI:
        __atomic_add_fetch(&e->code_epoch, 1u, __ATOMIC_SEQ_CST);
        code_lock(e);
        invalidate_jump_caches(e);
        code_unlock(e);
        h->pc += o->len;
        h->insns++;
        return ST_OK;
    default: /* CSR access */
        if (exec_csr(h, o))
            break;
        h->pc += o->len;
        h->insns++;
        set_attention(h);
        return ST_OK;
    }
    raise_illegal(h);
    return ST_TRAP;
}

/* Between blocks, when `attention` is set or `limit` is reached.  Returns 1 to leave run(). */
/* ---------------------------------------------------------------- thread=multi -------- */

/* The hart starts running (tcg_run, or back from a sleep or the exclusive section): wait while
 * a hart works alone; be that hart when everything decoded is to be forgotten. */
static void mt_enter(hart *h)
{
    tcg_engine *e = h->e;
    pthread_mutex_lock(&e->excl_mu);
    for (;;) {
        while (e->excl_pending)
            pthread_cond_wait(&e->excl_cv, &e->excl_mu);
        if (!__atomic_load_n(&e->flush_req, __ATOMIC_SEQ_CST))
            break;
        __atomic_store_n(&e->excl_pending, 1u, __ATOMIC_SEQ_CST);
        for (int k = 0; k < e->num_harts; k++)
            set_attention(e->harts[k]);
        while (e->excl_running > 0)
            pthread_cond_wait(&e->excl_cv, &e->excl_mu);
        /* alone: no hart is inside a block or a translation */
        if (__atomic_exchange_n(&e->flush_req, 0u, __ATOMIC_SEQ_CST))
            code_flush_all(e);
        __atomic_store_n(&e->excl_pending, 0u, __ATOMIC_SEQ_CST);
        pthread_cond_broadcast(&e->excl_cv);
    }
    e->excl_running++;
    __atomic_store_n(&h->in_exec, 1u, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&e->excl_mu);
}

static void mt_leave(hart *h)
{
    tcg_engine *e = h->e;
    __atomic_store_n(&h->in_exec, 0u, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&e->excl_mu);
    e->excl_running--;
    if (e->excl_pending)
        pthread_cond_broadcast(&e->excl_cv);
    pthread_mutex_unlock(&e->excl_mu);
}

/* Wake h if it sleeps in WFI; its waker has already set what it is woken for (seq-cst, as
 * the sleeper's `sleeping`, so that one of the two sees the other). */
static void mt_wake(hart *h)
{
    if (h->e->mt && __atomic_load_n(&h->sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&h->sleep_mu);
        pthread_cond_signal(&h->sleep_cv);
        pthread_mutex_unlock(&h->sleep_mu);
    }
}

static int mt_wake_pending(hart *h)
{
    uint64_t mip = h->mip_sw | __atomic_load_n(&h->mip_edge, __ATOMIC_SEQ_CST) |
                   __atomic_load_n(&h->mip_pins, __ATOMIC_SEQ_CST) | h->mip_timer;
    return (mip & h->mie) || __atomic_load_n(&h->kicked, __ATOMIC_SEQ_CST) ||
           __atomic_load_n(&h->timer_req, __ATOMIC_SEQ_CST) ||
           __atomic_load_n(&h->tlb_flush_req, __ATOMIC_SEQ_CST) ||
           __atomic_load_n(&h->e->flush_req, __ATOMIC_SEQ_CST);
}

static void remote_flush(hart *h)
{
    tcg_engine *e = h->e;
    tlb_flush_all(h);
    __atomic_add_fetch(&e->code_epoch, 1u, __ATOMIC_SEQ_CST);
    code_lock(e);
    invalidate_jump_caches(e);
    code_unlock(e);
}

/* A TLB flush asked by another thread (tcg_flush_tlb), done before the request is cleared:
 * its caller waits for that. */
static void serve_tlb_flush(hart *h)
{
    if (__atomic_load_n(&h->tlb_flush_req, __ATOMIC_SEQ_CST)) {
        remote_flush(h);
        __atomic_store_n(&h->tlb_flush_req, 0u, __ATOMIC_SEQ_CST);
    }
}

/* WFI with thread=multi: sleep (not counted as running) until an interrupt is pending and
 * enabled in mie (halted cleared) or a kick comes (still halted: tcg_run returns, and the
 * next tcg_run sleeps again). */
static void mt_halt_wait(hart *h)
{
    tcg_engine *e = h->e;
    for (;;) {
        h->mip_sw |= ATOMIC_XCHG(&h->mip_edge, 0);
        __atomic_store_n(&h->timer_req, 0u, __ATOMIC_SEQ_CST);
        update_timer_bits(h);
        if (read_mip(h) & h->mie) {
            h->halted = 0;
            return;
        }
        if (__atomic_load_n(&h->kicked, __ATOMIC_SEQ_CST))
            return;
        serve_tlb_flush(h);
        uint64_t d = next_timer_deadline(h);
        mt_leave(h);
        pthread_mutex_lock(&h->sleep_mu);
        __atomic_store_n(&h->sleeping, 1u, __ATOMIC_SEQ_CST);
        if (!mt_wake_pending(h)) {
            if (d == ~(uint64_t)0) {
                pthread_cond_wait(&h->sleep_cv, &h->sleep_mu);
            } else {
                int64_t ns = mtime_to_ns(e, d);
                struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
                if (ns > host_ns())
                    pthread_cond_timedwait(&h->sleep_cv, &h->sleep_mu, &ts);
            }
        }
        __atomic_store_n(&h->sleeping, 0u, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&h->sleep_mu);
        mt_enter(h);
    }
}

/* service() with thread=multi: take part in an exclusive section, serve other threads'
 * requests, sleep in WFI. */
static void mt_service(hart *h)
{
    tcg_engine *e = h->e;
    if (__atomic_load_n(&e->excl_pending, __ATOMIC_SEQ_CST) ||
        __atomic_load_n(&e->flush_req, __ATOMIC_SEQ_CST)) {
        mt_leave(h);
        mt_enter(h);
    }
    serve_tlb_flush(h);
    if (__atomic_exchange_n(&h->timer_req, 0u, __ATOMIC_SEQ_CST)) {
        update_timer_bits(h);
        schedule_timer_check(h);
    }
    if (h->halted)
        mt_halt_wait(h);
}

static int service(hart *h)
{
    tcg_engine *e = h->e;
    ATOMIC_STORE(&h->attention, 0u);
    if (e->mt)
        mt_service(h);
    if (ATOMIC_XCHG(&h->kicked, 0u)) {
        h->exit->kind = TCG_EXIT_NONE;
        return 1;
    }
    h->mip_sw |= ATOMIC_XCHG(&h->mip_edge, 0);
    if (h->insns >= h->next_timer_check) {
        update_timer_bits(h);
        schedule_timer_check(h);
    }
    uint64_t irq = h->dbg_step ? 0 : pending_interrupt(h);
    if (irq)
        take_trap(h, irq, 0);
    if (h->dbg_block && debug_check(h))
        return 1;
    if (e->trace_len + TRACE_MARGIN > TRACE_CAP) {
        h->exit->kind = TCG_EXIT_TRACE;
        return 1;
    }
    if (h->insns >= h->run_end) {
        h->exit->kind = TCG_EXIT_NONE;
        return 1;
    }
    /* An execute trigger traps before the instruction at pc, and again at the handler's
     * first instruction if it matches there too: as on hardware that goes on for ever, but
     * the run ends now and then (and resumes here). */
    for (int n = 0; h->trig_x && trig_fire(h, MC_EXEC, h->pc, 0); n++) {
        if (n == 64) {
            h->exit->kind = TCG_EXIT_NONE;
            return 1;
        }
    }
    h->limit = h->next_timer_check < h->run_end ? h->next_timer_check : h->run_end;
    if (h->dbg_block)
        h->limit = h->insns; /* back here before the next instruction */
    return 0;
}

/* ---------------------------------------------------------------- the interpreter loop -- */

#if USE_COMPUTED_GOTO
#define CASE(name) case OP_##name: L_##name:
#define DISPATCH() goto *o->handler
#else
#define CASE(name) case OP_##name:
#define DISPATCH() goto dispatch
#endif

#define R1 X[o->rs1]
#define R2 X[o->rs2]
#define RD X[o->rd]
#define NEXT() do { o++; DISPATCH(); } while (0)
#define SYNC_PC() (h->pc = o->pc)
#define TAKEN(target) do { h->insns += (uint64_t)(o - b->ops) + 1; h->pc = (target); goto next_block; } while (0)
/* A static successor: follow the op's chain link when it is set and nothing needs
 * attention, else look the block up (and link it when it is in the same page). */
#define CHAIN(target, count)                                                                 \
    do {                                                                                      \
        h->insns += (count);                                                                  \
        h->pc = (target);                                                                     \
        block *nb_ = o->chain;                                                                \
        if (likely(nb_ != NULL) && likely(nb_->valid) && nb_->epoch == epoch &&              \
            h->insns < h->limit &&                                                            \
            !ATOMIC_LOAD(&h->attention)) {                                                    \
            b = nb_;                                                                          \
            o = b->ops;                                                                       \
            DISPATCH();                                                                       \
        }                                                                                     \
        link_from = o;                                                                        \
        link_target = (target);                                                               \
        link_gen = h->e->flush_gen;                                                           \
        goto next_block;                                                                      \
    } while (0)
#define ALU(name, expr) CASE(name) { RD = (expr); NEXT(); }
#define BRANCH(name, cond) CASE(name) { if (cond) CHAIN(o->pc + (uint64_t)o->imm, (uint64_t)(o - b->ops) + 1); NEXT(); }

#define LOAD(name, T, size, sign, conv)                                                      \
    CASE(name) {                                                                              \
        uint64_t va = R1 + (uint64_t)o->imm;                                                  \
        const tlb_entry *t = &tlb_r[(va >> 12) & TLB_MASK];                            \
        if (likely(t->tag == (va & (PAGE_MASK | (size - 1))))) {                              \
            T v = (T)ram_load((const void *)(uintptr_t)(va + t->addend), size);               \
            RD = conv(v);                                                                     \
            NEXT();                                                                           \
        }                                                                                     \
        uint64_t v = 0;                                                                       \
        SYNC_PC();                                                                            \
        st = mem_slow(h, va, size, ACC_R, &v, o, sign, 0);                                    \
        if (unlikely(st))                                                                     \
            goto op_fail;                                                                     \
        RD = conv((T)v);                                                                      \
        NEXT();                                                                               \
    }

#define STORE(name, T, size, value)                                                          \
    CASE(name) {                                                                              \
        uint64_t va = R1 + (uint64_t)o->imm;                                                  \
        const tlb_entry *t = &tlb_w[(va >> 12) & TLB_MASK];                            \
        if (likely(t->tag == (va & (PAGE_MASK | (size - 1))))) {                              \
            ram_store((void *)(uintptr_t)(va + t->addend), size, (uint64_t)(T)(value));      \
            NEXT();                                                                           \
        }                                                                                     \
        uint64_t v = (value);                                                                 \
        SYNC_PC();                                                                            \
        st = mem_slow(h, va, size, ACC_W, &v, o, 0, 0);                                       \
        if (unlikely(st))                                                                     \
            goto op_fail;                                                                     \
        NEXT();                                                                               \
    }

#define CONV_S8(v) ((uint64_t)(int64_t)(int8_t)(v))
#define CONV_S16(v) ((uint64_t)(int64_t)(int16_t)(v))
#define CONV_S32(v) ((uint64_t)(int64_t)(int32_t)(v))
#define CONV_U(v) ((uint64_t)(v))

static inline uint64_t rotl64(uint64_t x, unsigned s) { s &= 63; return s ? (x << s) | (x >> (64 - s)) : x; }
static inline uint64_t rotr64(uint64_t x, unsigned s) { s &= 63; return s ? (x >> s) | (x << (64 - s)) : x; }
static inline uint32_t rotl32(uint32_t x, unsigned s) { s &= 31; return s ? (x << s) | (x >> (32 - s)) : x; }
static inline uint32_t rotr32(uint32_t x, unsigned s) { s &= 31; return s ? (x >> s) | (x << (32 - s)) : x; }

static inline uint64_t orc_b(uint64_t x)
{
    uint64_t r = 0;
    for (int i = 0; i < 8; i++)
        if ((x >> (8 * i)) & 0xff)
            r |= 0xffull << (8 * i);
    return r;
}

static inline uint64_t div64(uint64_t a, uint64_t b)
{
    if (b == 0) return ~0ull;
    if ((int64_t)a == INT64_MIN && (int64_t)b == -1) return a;
    return (uint64_t)((int64_t)a / (int64_t)b);
}
static inline uint64_t rem64(uint64_t a, uint64_t b)
{
    if (b == 0) return a;
    if ((int64_t)a == INT64_MIN && (int64_t)b == -1) return 0;
    return (uint64_t)((int64_t)a % (int64_t)b);
}
static inline uint64_t divw(uint64_t a, uint64_t b)
{
    int32_t x = (int32_t)a, y = (int32_t)b;
    if (y == 0) return ~0ull;
    if (x == INT32_MIN && y == -1) return sext32((uint32_t)x);
    return sext32((uint32_t)(x / y));
}
static inline uint64_t remw(uint64_t a, uint64_t b)
{
    int32_t x = (int32_t)a, y = (int32_t)b;
    if (y == 0) return sext32((uint32_t)x);
    if (x == INT32_MIN && y == -1) return 0;
    return sext32((uint32_t)(x % y));
}

#include "jit_x86.c"

static int run_loop(hart *h)
{
#if USE_COMPUTED_GOTO
#define OP_LABEL(n) &&L_##n,
    static const void *const labels[OP_COUNT] = {OP_LIST(OP_LABEL)};
#endif
    uint64_t *const X = h->x;
    block *b;
    op *o;
    op *link_from = NULL; /* the op whose successor is being looked up, to chain it */
    uint64_t link_target = 0, link_gen = 0;
    int st;
    /* The data TLB flavour changes only through traps, xRET and CSR writes, all of which
     * come back through next_block. */
    const tlb_entry *tlb_r = h->tlb_r_cur, *tlb_w = h->tlb_w_cur;
    uint32_t epoch = h->e->code_epoch; /* chains lead only to blocks checked since fence.i */

next_block:
    tlb_r = h->tlb_r_cur;
    tlb_w = h->tlb_w_cur;
    epoch = h->e->code_epoch;
    if (unlikely(h->insns >= h->limit || ATOMIC_LOAD(&h->attention))) {
        if (service(h))
            return 0;
    }
    {
        uint64_t pc = h->pc;
        uint64_t key = pc ^ ((uint64_t)h->priv << 56);
        jc_entry *j = &h->jc[(pc >> 1) & (JC_SIZE - 1)];
        /* valid and epoch too: with thread=multi an entry may be filled just after another
         * hart dropped the block or ran fence.i, and translated code does not enter a stale
         * block (it would come back here at once, for ever) */
        if (likely(j->key == key && j->gen == h->jc_gen && j->b->valid &&
                   j->b->epoch == epoch)) {
            b = j->b;
            if (link_from && link_target == pc && ((link_from->pc ^ pc) & PAGE_MASK) == 0 &&
                !h->dbg_block)
                link_from->chain = b;
        } else {
            b = lookup_block(h);
            if (!b)
                goto next_block; /* fetch fault: the trap is taken */
            if (!__atomic_load_n(&b->linked, __ATOMIC_ACQUIRE)) {
                /* with thread=multi two harts may do this at once, storing the same values;
                 * a hart that sees `linked` sees the handlers */
#if USE_COMPUTED_GOTO
                for (uint32_t i = 0; i <= b->n; i++)
                    b->ops[i].handler = labels[b->ops[i].kind];
#endif
                __atomic_store_n(&b->linked, 1, __ATOMIC_RELEASE);
            }
            if (b->valid && !(h->e->trace_flags & (1u << TCG_TRACE_EXEC))) {
                j->key = key;
                j->b = b;
                j->gen = h->jc_gen;
                if (link_from && link_target == pc && link_gen == h->e->flush_gen &&
                    ((link_from->pc ^ pc) & PAGE_MASK) == 0 && !h->single_step &&
                    !h->dbg_block)
                    link_from->chain = b;
            } else if (h->e->trace_flags & (1u << TCG_TRACE_EXEC)) {
                trace_emit(h->e, TCG_TRACE_EXEC, h->id, pc, (uint64_t)h->priv, 0, 0);
                set_attention(h);
            }
        }
    }
    if (jit_usable(h)) {
        /* blocks meet at next_block, where they are counted and translated */
        if (link_from)
            link_from->chain = NULL;
        int r = jit_run(h, b);
        if (r >= 0) {
            link_from = NULL;
            if (r)
                return 0;
            goto next_block;
        }
    }
    link_from = NULL;
    o = b->ops;
#if !USE_COMPUTED_GOTO
dispatch:
#endif
    DISPATCH();
    switch (o->kind) {
    CASE(end) {
        CHAIN(o->pc, b->n);
    }
    CASE(illegal) {
        SYNC_PC();
        h->insns += (uint64_t)(o - b->ops);
        raise_illegal(h);
        goto next_block;
    }
    ALU(li, (uint64_t)o->imm)
    ALU(mv, R1)
    ALU(auipc, o->pc + (uint64_t)o->imm)
    CASE(nop) { NEXT(); }
    CASE(fence) {
        if (h->e->mt) /* other harts run on other threads */
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
        NEXT();
    }
    CASE(jal) {
        uint64_t link = o->pc + o->len;
        RD = link;
        CHAIN(o->pc + (uint64_t)o->imm, (uint64_t)(o - b->ops) + 1);
    }
    CASE(jalr) {
        uint64_t target = (R1 + (uint64_t)o->imm) & ~(uint64_t)1;
        RD = o->pc + o->len;
        TAKEN(target);
    }
    BRANCH(beq, R1 == R2)
    BRANCH(bne, R1 != R2)
    BRANCH(blt, (int64_t)R1 < (int64_t)R2)
    BRANCH(bge, (int64_t)R1 >= (int64_t)R2)
    BRANCH(bltu, R1 < R2)
    BRANCH(bgeu, R1 >= R2)
    LOAD(lb, int8_t, 1, 1, CONV_S8)
    LOAD(lh, int16_t, 2, 1, CONV_S16)
    LOAD(lw, int32_t, 4, 1, CONV_S32)
    LOAD(ld, uint64_t, 8, 0, CONV_U)
    LOAD(lbu, uint8_t, 1, 0, CONV_U)
    LOAD(lhu, uint16_t, 2, 0, CONV_U)
    LOAD(lwu, uint32_t, 4, 0, CONV_U)
    STORE(sb, uint8_t, 1, R2)
    STORE(sh, uint16_t, 2, R2)
    STORE(sw, uint32_t, 4, R2)
    STORE(sd, uint64_t, 8, R2)
    CASE(flw) CASE(fld) {
        if (unlikely(fs_off(h)))
            goto op_illegal;
        unsigned size = o->kind == OP_flw ? 4 : 8;
        uint64_t va = R1 + (uint64_t)o->imm, v = 0;
        SYNC_PC();
        const tlb_entry *t = &tlb_r[(va >> 12) & TLB_MASK];
        if (likely(t->tag == (va & (PAGE_MASK | (size - 1))))) {
            v = ram_load((const void *)(uintptr_t)(va + t->addend), size);
        } else {
            st = mem_slow(h, va, size, ACC_R, &v, o, 0, 1);
            if (unlikely(st))
                goto op_fail;
        }
        h->f[o->rd] = size == 4 ? (0xffffffff00000000ull | (uint32_t)v) : v;
        h->mstatus |= MSTATUS_FS;
        NEXT();
    }
    CASE(fsw) CASE(fsd) {
        if (unlikely(fs_off(h)))
            goto op_illegal;
        unsigned size = o->kind == OP_fsw ? 4 : 8;
        uint64_t va = R1 + (uint64_t)o->imm, v = h->f[o->rs2];
        const tlb_entry *t = &tlb_w[(va >> 12) & TLB_MASK];
        if (likely(t->tag == (va & (PAGE_MASK | (size - 1))))) {
            ram_store((void *)(uintptr_t)(va + t->addend), size, v);
            NEXT();
        }
        SYNC_PC();
        st = mem_slow(h, va, size, ACC_W, &v, o, 0, 1);
        if (unlikely(st))
            goto op_fail;
        NEXT();
    }
    ALU(addi, R1 + (uint64_t)o->imm)
    ALU(slti, (int64_t)R1 < o->imm)
    ALU(sltiu, R1 < (uint64_t)o->imm)
    ALU(xori, R1 ^ (uint64_t)o->imm)
    ALU(ori, R1 | (uint64_t)o->imm)
    ALU(andi, R1 & (uint64_t)o->imm)
    ALU(slli, R1 << o->imm)
    ALU(srli, R1 >> o->imm)
    ALU(srai, (uint64_t)((int64_t)R1 >> o->imm))
    ALU(add, R1 + R2)
    ALU(sub, R1 - R2)
    ALU(sll, R1 << (R2 & 63))
    ALU(slt, (int64_t)R1 < (int64_t)R2)
    ALU(sltu, R1 < R2)
    ALU(xor, R1 ^ R2)
    ALU(srl, R1 >> (R2 & 63))
    ALU(sra, (uint64_t)((int64_t)R1 >> (R2 & 63)))
    ALU(or, R1 | R2)
    ALU(and, R1 & R2)
    ALU(addiw, sext32(R1 + (uint64_t)o->imm))
    ALU(slliw, sext32((uint32_t)R1 << o->imm))
    ALU(srliw, sext32((uint32_t)R1 >> o->imm))
    ALU(sraiw, (uint64_t)(int64_t)((int32_t)R1 >> o->imm))
    ALU(addw, sext32(R1 + R2))
    ALU(subw, sext32(R1 - R2))
    ALU(sllw, sext32((uint32_t)R1 << (R2 & 31)))
    ALU(srlw, sext32((uint32_t)R1 >> (R2 & 31)))
    ALU(sraw, (uint64_t)(int64_t)((int32_t)R1 >> (R2 & 31)))
    ALU(mul, R1 * R2)
    ALU(mulh, (uint64_t)(((int128_t)(int64_t)R1 * (int128_t)(int64_t)R2) >> 64))
    ALU(mulhsu, (uint64_t)(((int128_t)(int64_t)R1 * (int128_t)R2) >> 64))
    ALU(mulhu, (uint64_t)(((uint128_t)R1 * (uint128_t)R2) >> 64))
    ALU(div, div64(R1, R2))
    ALU(divu, R2 ? R1 / R2 : ~0ull)
    ALU(rem, rem64(R1, R2))
    ALU(remu, R2 ? R1 % R2 : R1)
    ALU(mulw, sext32(R1 * R2))
    ALU(divw, divw(R1, R2))
    ALU(divuw, (uint32_t)R2 ? sext32((uint32_t)R1 / (uint32_t)R2) : ~0ull)
    ALU(remw, remw(R1, R2))
    ALU(remuw, (uint32_t)R2 ? sext32((uint32_t)R1 % (uint32_t)R2) : sext32((uint32_t)R1))
    ALU(sh1add, (R1 << 1) + R2)
    ALU(sh2add, (R1 << 2) + R2)
    ALU(sh3add, (R1 << 3) + R2)
    ALU(adduw, (uint64_t)(uint32_t)R1 + R2)
    ALU(sh1adduw, ((uint64_t)(uint32_t)R1 << 1) + R2)
    ALU(sh2adduw, ((uint64_t)(uint32_t)R1 << 2) + R2)
    ALU(sh3adduw, ((uint64_t)(uint32_t)R1 << 3) + R2)
    ALU(slliuw, (uint64_t)(uint32_t)R1 << o->imm)
    ALU(andn, R1 & ~R2)
    ALU(orn, R1 | ~R2)
    ALU(xnor, ~(R1 ^ R2))
    ALU(clz, R1 ? (uint64_t)__builtin_clzll(R1) : 64)
    ALU(clzw, (uint32_t)R1 ? (uint64_t)__builtin_clz((uint32_t)R1) : 32)
    ALU(ctz, R1 ? (uint64_t)__builtin_ctzll(R1) : 64)
    ALU(ctzw, (uint32_t)R1 ? (uint64_t)__builtin_ctz((uint32_t)R1) : 32)
    ALU(cpop, (uint64_t)__builtin_popcountll(R1))
    ALU(cpopw, (uint64_t)__builtin_popcount((uint32_t)R1))
    ALU(max, (int64_t)R1 > (int64_t)R2 ? R1 : R2)
    ALU(maxu, R1 > R2 ? R1 : R2)
    ALU(min, (int64_t)R1 < (int64_t)R2 ? R1 : R2)
    ALU(minu, R1 < R2 ? R1 : R2)
    ALU(sextb, (uint64_t)(int64_t)(int8_t)R1)
    ALU(sexth, (uint64_t)(int64_t)(int16_t)R1)
    ALU(zexth, (uint16_t)R1)
    ALU(rol, rotl64(R1, (unsigned)R2))
    ALU(rolw, sext32(rotl32((uint32_t)R1, (unsigned)R2)))
    ALU(ror, rotr64(R1, (unsigned)R2))
    ALU(rori, rotr64(R1, (unsigned)o->imm))
    ALU(roriw, sext32(rotr32((uint32_t)R1, (unsigned)o->imm)))
    ALU(rorw, sext32(rotr32((uint32_t)R1, (unsigned)R2)))
    ALU(orcb, orc_b(R1))
    ALU(rev8, __builtin_bswap64(R1))
    ALU(bclr, R1 & ~(1ull << (R2 & 63)))
    ALU(bclri, R1 & ~(1ull << o->imm))
    ALU(bext, (R1 >> (R2 & 63)) & 1)
    ALU(bexti, (R1 >> o->imm) & 1)
    ALU(binv, R1 ^ (1ull << (R2 & 63)))
    ALU(binvi, R1 ^ (1ull << o->imm))
    ALU(bset, R1 | (1ull << (R2 & 63)))
    ALU(bseti, R1 | (1ull << o->imm))
    CASE(amo) {
        SYNC_PC();
        st = exec_amo(h, o);
        if (unlikely(st))
            goto op_fail;
        NEXT();
    }
    /* Fast FP ops: round-to-nearest-even (static, or dynamic with frm = RNE); anything
     * else (FS off, another rounding mode) takes the generic path below. */
#define FP_GUARD() if (unlikely(fs_off(h) || (o->rm == 7 && h->frm != 0))) goto fp_generic
#define F64(r) f64_from(h->f[r])
#define F32(r) f32_from(unbox32(h->f[r]))
#define FP_D(name, expr) CASE(name) { FP_GUARD(); double r_ = (expr); FP_BARRIER(r_); set_d(h, o->rd, r_); h->mstatus |= MSTATUS_FS; NEXT(); }
#define FP_S(name, expr) CASE(name) { FP_GUARD(); float r_ = (expr); FP_BARRIER(r_); set_s(h, o->rd, r_); h->mstatus |= MSTATUS_FS; NEXT(); }
    FP_D(fadd_d, F64(o->rs1) + F64(o->rs2))
    FP_D(fsub_d, F64(o->rs1) - F64(o->rs2))
    FP_D(fmul_d, F64(o->rs1) * F64(o->rs2))
    FP_D(fdiv_d, F64(o->rs1) / F64(o->rs2))
    FP_S(fadd_s, F32(o->rs1) + F32(o->rs2))
    FP_S(fsub_s, F32(o->rs1) - F32(o->rs2))
    FP_S(fmul_s, F32(o->rs1) * F32(o->rs2))
    FP_S(fdiv_s, F32(o->rs1) / F32(o->rs2))
    FP_D(fcvt_d_w, (double)(int32_t)X[o->rs1])
    CASE(fmadd_d) CASE(fmsub_d) CASE(fnmsub_d) CASE(fnmadd_d) {
        FP_GUARD();
        double a = F64(o->rs1), bb = F64(o->rs2), c = F64(o->rs3);
        if (unlikely((isinf(a) && bb == 0) || (a == 0 && isinf(bb))))
            goto fp_generic;
        if (o->kind == OP_fnmsub_d || o->kind == OP_fnmadd_d)
            a = -a;
        if (o->kind == OP_fmsub_d || o->kind == OP_fnmadd_d)
            c = -c;
        double r_ = fma(a, bb, c);
        FP_BARRIER(r_);
        set_d(h, o->rd, r_);
        h->mstatus |= MSTATUS_FS;
        NEXT();
    }
    CASE(fmadd_s) CASE(fmsub_s) CASE(fnmsub_s) CASE(fnmadd_s) {
        FP_GUARD();
        float a = F32(o->rs1), bb = F32(o->rs2), c = F32(o->rs3);
        if (unlikely((isinf(a) && bb == 0) || (a == 0 && isinf(bb))))
            goto fp_generic;
        if (o->kind == OP_fnmsub_s || o->kind == OP_fnmadd_s)
            a = -a;
        if (o->kind == OP_fmsub_s || o->kind == OP_fnmadd_s)
            c = -c;
        float r_ = fmaf(a, bb, c);
        FP_BARRIER(r_);
        set_s(h, o->rd, r_);
        h->mstatus |= MSTATUS_FS;
        NEXT();
    }
    CASE(fmv_d) {
        if (unlikely(fs_off(h)))
            goto fp_generic;
        h->f[o->rd] = h->f[o->rs1];
        h->mstatus |= MSTATUS_FS;
        NEXT();
    }
    CASE(fle_d) CASE(flt_d) CASE(feq_d) {
        if (unlikely(fs_off(h)))
            goto fp_generic;
        double a = F64(o->rs1), bb = F64(o->rs2);
        if (unlikely(isnan(a) || isnan(bb)))
            goto fp_generic;
        RD = o->kind == OP_fle_d ? a <= bb : o->kind == OP_flt_d ? a < bb : a == bb;
        h->mstatus |= MSTATUS_FS;
        NEXT();
    }
    CASE(fp) {
    fp_generic:
        if (unlikely(fp_exec(h, (uint32_t)o->imm))) {
            SYNC_PC();
            h->insns += (uint64_t)(o - b->ops);
            take_trap(h, EXC_ILLEGAL, (uint32_t)o->imm);
            goto next_block;
        }
        NEXT();
    }
    CASE(system) {
        SYNC_PC();
        h->insns += (uint64_t)(o - b->ops);
        st = exec_system(h, o);
        if (st == ST_EXIT)
            return 0;
        goto next_block;
    }
    default:
        break;
    }
op_illegal:
    SYNC_PC();
    h->insns += (uint64_t)(o - b->ops);
    raise_illegal(h);
    goto next_block;
op_fail:
    h->insns += (uint64_t)(o - b->ops);
    if (st == ST_EXIT)
        return 0;
    goto next_block;
}

/* ---------------------------------------------------------------- public interface ------ */

static void hart_reset(hart *h, uint64_t pc, int priv, uint64_t a0, uint64_t a1, int stopped)
{
    tcg_engine *e = h->e;
    memset(h->x, 0, sizeof(h->x));
    memset(h->f, 0, sizeof(h->f));
    h->pc = pc;
    h->x[10] = a0;
    h->x[11] = a1;
    h->priv = priv == PRV_M || priv == PRV_S || priv == PRV_U ? priv : PRV_M;
    h->mstatus = 0;
    h->medeleg = h->mideleg = h->mie = 0;
    h->mtvec = h->mscratch = h->mepc = h->mcause = h->mtval = 0;
    h->stvec = h->sscratch = h->sepc = h->scause = h->stval = h->satp = 0;
    h->mcounteren = h->scounteren = h->menvcfg = h->senvcfg = h->mcountinhibit = 0;
    h->mip_sw = h->mip_timer = 0;
    ATOMIC_STORE(&h->mip_edge, 0ull);
    h->fflags = h->frm = 0;
    h->stimecmp = ~0ull;
    h->sbi_timecmp = ~0ull;
    h->cycle_off = h->instret_off = -h->insns;
    memset(h->pmpcfg, 0, sizeof(h->pmpcfg));
    memset(h->pmpaddr, 0, sizeof(h->pmpaddr));
    trig_reset(h);
    if (e->builtin_fw) {
        /* what M-mode firmware leaves behind for an S-mode kernel */
        h->medeleg = 0xB1FFull;
        h->mideleg = S_INTS;
        h->mcounteren = 0xffffffffull;
        h->scounteren = 7; /* cycle, time, instret for U-mode, as OpenSBI's mstatus_init */
        h->menvcfg = MENVCFG_STCE;
        h->pmpaddr[0] = (1ull << 54) - 1;
        h->pmpcfg[0] = PMP_R | PMP_W | PMP_X | PMP_A;
    }
    pmp_update_active(h);
    h->stopped = stopped;
    h->halted = 0;
    h->pend = PEND_NONE;
    h->resv_valid = 0;
    tlb_flush_all(h);
    update_dmode(h);
    update_timer_bits(h);
    set_attention(h);
}

tcg_engine *tcg_engine_new(uint8_t *ram, uint64_t ram_base, uint64_t ram_size, int num_harts)
{
    if (num_harts < 1 || (ram_size & 0xfff) || (ram_base & 0xfff))
        return NULL;
    tcg_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->ram = ram;
    e->ram_base = ram_base;
    e->ram_size = ram_size;
    e->num_harts = num_harts;
    e->icount_shift = -1;
    e->mtime_offset = -(host_ns() / NS_PER_TICK);
    e->harts = calloc((size_t)num_harts, sizeof(hart *));
    e->trace = calloc(TRACE_CAP, sizeof(tcg_trace_rec));
    e->arena = malloc(ARENA_SIZE);
    e->bhash = calloc(BHASH_SIZE, sizeof(block *));
    e->page_blocks = calloc((size_t)(ram_size >> 12) + 1, sizeof(block *));
    e->hole_pages = calloc((size_t)(ram_size >> 12) + 1, 1);
    if (!e->harts || !e->trace || !e->arena || !e->bhash || !e->page_blocks || !e->hole_pages) {
        tcg_engine_free(e);
        return NULL;
    }
    pthread_mutex_init(&e->code_mu, NULL);
    pthread_mutex_init(&e->trace_mu, NULL);
    pthread_mutex_init(&e->excl_mu, NULL);
    pthread_cond_init(&e->excl_cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* WFI deadlines are host_ns() times */
    for (int i = 0; i < num_harts; i++) {
        hart *h = calloc(1, sizeof(hart));
        if (!h) {
            pthread_condattr_destroy(&ca);
            tcg_engine_free(e);
            return NULL;
        }
        e->harts[i] = h;
        pthread_mutex_init(&h->sleep_mu, NULL);
        pthread_cond_init(&h->sleep_cv, &ca);
        h->id = i;
        h->e = e;
        h->mtimecmp = ~0ull;
        hart_reset(h, ram_base, PRV_M, (uint64_t)i, 0, 0);
    }
    pthread_condattr_destroy(&ca);
    jit_init(e);
    e->jit_on = 0;
    return e;
}

void tcg_engine_free(tcg_engine *e)
{
    if (!e)
        return;
    jit_free(e);
    if (e->harts) {
        for (int i = 0; i < e->num_harts; i++) {
            if (e->harts[i]) {
                pthread_mutex_destroy(&e->harts[i]->sleep_mu);
                pthread_cond_destroy(&e->harts[i]->sleep_cv);
            }
            free(e->harts[i]);
        }
    }
    free(e->harts);
    free(e->trace);
    free(e->arena);
    free(e->bhash);
    free(e->page_blocks);
    free(e->hole_pages);
    free(e->win_base);
    free(e->win_size);
    free(e->dirty);
    free(e);
}

int tcg_add_memory(tcg_engine *e, uint64_t gpa, uint8_t *host, uint64_t size, int writable)
{
    if (e->nregions >= MAX_REGIONS || !size)
        return -1;
    region *r = &e->regions[e->nregions++];
    r->base = gpa;
    r->size = size;
    r->host = host;
    r->writable = writable;
    for (int k = 0; k < e->num_harts; k++)
        tlb_flush_all(e->harts[k]);
    return 0;
}

int tcg_add_mmio_hole(tcg_engine *e, uint64_t gpa, uint64_t size)
{
    if (e->nholes >= MAX_HOLES || !size)
        return -1;
    e->hole_base[e->nholes] = gpa;
    e->hole_size[e->nholes] = size;
    e->nholes++;
    for (uint64_t a = gpa & PAGE_MASK; a < gpa + size; a += PAGE_SIZE)
        if (a - e->ram_base < e->ram_size)
            e->hole_pages[(a - e->ram_base) >> 12] = 1;
    for (int k = 0; k < e->num_harts; k++)
        tlb_flush_all(e->harts[k]);
    code_flush_all(e);
    return 0;
}

int tcg_add_mmio_window(tcg_engine *e, uint64_t gpa, uint64_t size)
{
    uint64_t *b = realloc(e->win_base, (size_t)(e->nwins + 1) * sizeof(uint64_t));
    if (!b)
        return -1;
    e->win_base = b;
    uint64_t *z = realloc(e->win_size, (size_t)(e->nwins + 1) * sizeof(uint64_t));
    if (!z)
        return -1;
    e->win_size = z;
    e->win_base[e->nwins] = gpa;
    e->win_size[e->nwins] = size;
    e->nwins++;
    return 0;
}

void tcg_set_builtin_firmware(tcg_engine *e, int on) { e->builtin_fw = on != 0; }

void tcg_set_c_mmio(tcg_engine *e, tcg_c_mmio *t) { e->c_mmio = t; }

int tcg_set_multithread(tcg_engine *e, int on)
{
    if (on && e->icount_shift >= 0)
        return -1;
    e->mt = on != 0;
    jit_set_multithread(e);
    return 0;
}

int tcg_jit_available(void) { return JIT_BUILT; }

int tcg_set_jit(tcg_engine *e, int on)
{
    e->jit_on = on && e->jit != NULL;
    return e->jit_on;
}

uint64_t tcg_jit_translated(tcg_engine *e) { return jit_translated(e); }
void tcg_set_jit_threshold(tcg_engine *e, uint32_t n) { jit_set_threshold(e, n); }

void tcg_set_icount(tcg_engine *e, int shift)
{
    uint64_t now = mtime_now(e, NULL);
    e->icount_shift = shift >= 0 && shift < 32 ? shift : -1;
    tcg_write_mtime(e, now);
}

void tcg_set_trace(tcg_engine *e, uint32_t flags)
{
    e->trace_flags = flags;
    invalidate_jump_caches(e);
    if (flags & (1u << TCG_TRACE_IN_ASM))
        code_flush_request(e); /* so every block is decoded (and shown) again */
}

size_t tcg_trace_drain(tcg_engine *e, tcg_trace_rec *out, size_t max)
{
    if (e->mt)
        pthread_mutex_lock(&e->trace_mu);
    size_t n = e->trace_len < max ? e->trace_len : max;
    memcpy(out, e->trace, n * sizeof(*out));
    memmove(e->trace, e->trace + n, (e->trace_len - n) * sizeof(*out));
    e->trace_len -= n;
    if (e->mt)
        pthread_mutex_unlock(&e->trace_mu);
    return n;
}

int tcg_run(tcg_engine *e, int hartid, uint64_t max_insns, tcg_exit *out)
{
    if (hartid < 0 || hartid >= e->num_harts)
        return -1;
    hart *h = e->harts[hartid];
    memset(out, 0, sizeof(*out));
    out->kind = TCG_EXIT_NONE;
    out->deadline_ns = -1;
    if (h->stopped) {
        out->kind = TCG_EXIT_STOPPED;
        return 0;
    }
    if (h->pend == PEND_STORE) {
        h->pc += h->pend_len;
        h->insns++;
    }
    h->pend = PEND_NONE;
    h->exit = out;

    /* stores of this hart must see the reservations other harts hold */
    int others = 0;
    for (int k = 0; k < e->num_harts; k++)
        if (k != hartid && e->harts[k]->resv_valid)
            others = 1;
    if (others && !h->resv_watch)
        memset(h->tlb_w, 0xff, sizeof(h->tlb_w));
    h->resv_watch = others;

    h->run_start = h->insns;
    h->run_end = h->insns + (max_insns ? max_insns : 1);
    h->run_small = max_insns < BLOCK_MAX;
    h->dbg_block = e->nbp > 0 || h->dbg_step || h->trig_x;
    h->single_step = h->run_small || h->dbg_step || h->trig_x;
    if (h->single_step)
        jc_flush(h);
    if (h->halted && !e->mt) { /* with thread=multi, service() sleeps */
        h->mip_sw |= ATOMIC_XCHG(&h->mip_edge, 0);
        update_timer_bits(h);
        if (!(read_mip(h) & h->mie)) {
            uint64_t d = next_timer_deadline(h);
            if (e->icount_shift >= 0 && d != ~(uint64_t)0 && others_all_idle(h)) {
                uint64_t now = mtime_now(e, h);
                if (d > now)
                    e->mtime_offset += (int64_t)(d - now);
                update_timer_bits(h);
            } else {
                out->kind = TCG_EXIT_HALT;
                out->deadline_ns = d == ~(uint64_t)0 ? -1 : mtime_to_ns(e, d);
                h->exit = NULL;
                return 0;
            }
        }
        h->halted = 0;
    }
    h->next_timer_check = h->insns;
    h->limit = h->insns;
    ATOMIC_STORE(&h->attention, 1u);
    (void)host_flags_take(); /* what the host raised before this run is not the guest's */
    if (e->mt)
        mt_enter(h);
    run_loop(h);
    if (e->mt)
        mt_leave(h);
    fp_sync_flags(h);
    if (e->icount_shift >= 0)
        e->icount_acc += h->insns - h->run_start;
    h->run_start = h->insns;
    h->exit = NULL;
    return 0;
}

void tcg_complete_mmio_read(tcg_engine *e, int hartid, uint64_t value)
{
    hart *h = e->harts[hartid];
    if (h->pend != PEND_LOAD)
        return;
    unsigned bits = 8u * h->pend_size;
    if (bits < 64) {
        value &= (1ull << bits) - 1;
        if (h->pend_signed && (value >> (bits - 1)) & 1)
            value |= ~0ull << bits;
    }
    if (h->pend_fp)
        h->f[h->pend_rd] = h->pend_size == 4 ? (0xffffffff00000000ull | (uint32_t)value) : value;
    else
        h->x[h->pend_rd] = value;
    h->x[32] = 0;
    h->pc += h->pend_len;
    h->insns++;
    h->pend = PEND_NONE;
}

void tcg_complete_sbi(tcg_engine *e, int hartid, int64_t error, int64_t value)
{
    hart *h = e->harts[hartid];
    if (h->pend != PEND_SBI)
        return;
    h->x[10] = (uint64_t)error;
    h->x[11] = (uint64_t)value;
    h->pc += h->pend_len;
    h->insns++;
    h->pend = PEND_NONE;
}

void tcg_kick(tcg_engine *e, int hartid)
{
    hart *h = e->harts[hartid];
    __atomic_store_n(&h->kicked, 1u, __ATOMIC_SEQ_CST);
    ATOMIC_STORE(&h->attention, 1u);
    mt_wake(h);
}

void tcg_cancel_kick(tcg_engine *e, int hartid)
{
    ATOMIC_STORE(&e->harts[hartid]->kicked, 0u);
}

void tcg_set_irq(tcg_engine *e, int hartid, int irq, int level)
{
    if (irq < 0 || irq > 63)
        return;
    hart *h = e->harts[hartid];
    uint64_t bit = 1ull << irq;
    if (irq == 1) {
        if (level)
            ATOMIC_OR(&h->mip_edge, bit);
    } else if (level) {
        ATOMIC_OR(&h->mip_pins, bit);
    } else {
        ATOMIC_AND(&h->mip_pins, ~bit);
    }
    ATOMIC_STORE(&h->attention, 1u);
    if (level)
        mt_wake(h);
}

int tcg_get_reg(tcg_engine *e, int hartid, int reg, uint64_t *value)
{
    hart *h = e->harts[hartid];
    if (reg >= TCG_REG_X0 && reg < TCG_REG_X0 + 32) {
        *value = reg == 0 ? 0 : h->x[reg];
        return 0;
    }
    if (reg >= TCG_REG_F0 && reg < TCG_REG_F0 + 32) {
        *value = h->f[reg - TCG_REG_F0];
        return 0;
    }
    switch (reg) {
    case TCG_REG_PC: *value = h->pc; return 0;
    case TCG_REG_PRIV: *value = (uint64_t)h->priv; return 0;
    case TCG_REG_MTIMECMP: *value = h->mtimecmp; return 0;
    case TCG_REG_SBI_TIMECMP: *value = h->sbi_timecmp; return 0;
    case TCG_REG_STOPPED: *value = (uint64_t)h->stopped; return 0;
    case TCG_REG_INSTRET: *value = h->insns; return 0;
    case TCG_REG_HALTED: *value = (uint64_t)h->halted; return 0;
    default: break;
    }
    if (reg >= TCG_REG_CSR && reg < TCG_REG_CSR + 4096) {
        /* with thread=multi the hart merges its edges itself (read_mip shows them) */
        if (!e->mt)
            h->mip_sw |= ATOMIC_XCHG(&h->mip_edge, 0);
        /* tcg_run took the guest's FP flags when it ended: what the host has raised since
         * (the VMM's own floating point) is not the guest's */
        (void)host_flags_take();
        return csr_read(h, (unsigned)(reg - TCG_REG_CSR), value, 0);
    }
    return -1;
}

int tcg_set_reg(tcg_engine *e, int hartid, int reg, uint64_t value)
{
    hart *h = e->harts[hartid];
    if (reg >= TCG_REG_X0 && reg < TCG_REG_X0 + 32) {
        if (reg)
            h->x[reg] = value;
        return 0;
    }
    if (reg >= TCG_REG_F0 && reg < TCG_REG_F0 + 32) {
        h->f[reg - TCG_REG_F0] = value;
        return 0;
    }
    switch (reg) {
    case TCG_REG_PC:
        h->pc = value & ~1ull;
        return 0;
    case TCG_REG_PRIV:
        if (value != PRV_M && value != PRV_S && value != PRV_U)
            return -1;
        h->priv = (int)value;
        update_dmode(h);
        set_attention(h);
        return 0;
    case TCG_REG_MTIMECMP:
    case TCG_REG_SBI_TIMECMP:
        if (e->mt) { /* h may be running on its own thread: it updates its timer itself */
            __atomic_store_n(reg == TCG_REG_MTIMECMP ? &h->mtimecmp : &h->sbi_timecmp, value,
                             __ATOMIC_SEQ_CST);
            __atomic_store_n(&h->timer_req, 1u, __ATOMIC_SEQ_CST);
            set_attention(h);
            mt_wake(h);
            return 0;
        }
        if (reg == TCG_REG_MTIMECMP)
            h->mtimecmp = value;
        else
            h->sbi_timecmp = value;
        timer_changed(h);
        return 0;
    case TCG_REG_STOPPED:
        h->stopped = value != 0;
        if (!value)
            set_attention(h);
        return 0;
    default:
        break;
    }
    if (reg >= TCG_REG_CSR && reg < TCG_REG_CSR + 4096) {
        int priv = h->priv;
        h->priv = PRV_M;
        int r = csr_write(h, (unsigned)(reg - TCG_REG_CSR), value);
        h->priv = priv;
        update_dmode(h);
        set_attention(h);
        return r;
    }
    return -1;
}

void tcg_reset_hart(tcg_engine *e, int hartid, uint64_t pc, int priv, uint64_t a0, uint64_t a1,
                    int stopped)
{
    code_flush_request(e);
    hart_reset(e->harts[hartid], pc, priv, a0, a1, stopped);
}

void tcg_flush_tlb(tcg_engine *e, int hartid)
{
    hart *h = e->harts[hartid];
    if (!e->mt) {
        remote_flush(h);
        return;
    }
    /* h may be running on its own thread: it flushes at its next block boundary, and a
     * running hart is waited for (an SBI remote fence is complete when the call returns);
     * a hart not running flushes before it runs again */
    __atomic_store_n(&h->tlb_flush_req, 1u, __ATOMIC_SEQ_CST);
    set_attention(h);
    mt_wake(h);
    while (__atomic_load_n(&h->tlb_flush_req, __ATOMIC_SEQ_CST) &&
           __atomic_load_n(&h->in_exec, __ATOMIC_SEQ_CST))
        sched_yield();
}

uint64_t tcg_read_mtime(tcg_engine *e) { return mtime_now(e, NULL); }

void tcg_write_mtime(tcg_engine *e, uint64_t value)
{
    uint64_t base = e->icount_shift >= 0 ? (e->icount_acc << e->icount_shift) / NS_PER_TICK
                                         : (uint64_t)(host_ns() / NS_PER_TICK);
    e->mtime_offset = (int64_t)(value - base);
    for (int k = 0; k < e->num_harts; k++)
        timer_changed(e->harts[k]);
}

int64_t tcg_mtime_to_ns(tcg_engine *e, uint64_t mtime) { return mtime_to_ns(e, mtime); }

/* ---------------------------------------------------------------- debugger interface ---- */

int tcg_set_breakpoints(tcg_engine *e, const uint64_t *pcs, int n)
{
    if (n < 0 || n > TCG_MAX_BREAKPOINTS)
        return -1;
    for (int i = 0; i < n; i++)
        e->bp[i] = pcs[i];
    e->nbp = n;
    code_flush_request(e); /* blocks end before breakpoints and are not chained meanwhile */
    for (int k = 0; k < e->num_harts; k++)
        set_attention(e->harts[k]);
    return 0;
}

int tcg_set_watchpoints(tcg_engine *e, const uint64_t *addrs, const uint64_t *lens,
                        const uint32_t *types, int n)
{
    if (n < 0 || n > TCG_MAX_WATCHPOINTS)
        return -1;
    for (int i = 0; i < n; i++) {
        e->wp_addr[i] = addrs[i];
        e->wp_len[i] = lens[i] ? lens[i] : 1;
        e->wp_type[i] = types[i] & TCG_WATCH_ACCESS;
    }
    e->nwp = n;
    for (int k = 0; k < e->num_harts; k++) { /* watched pages leave the TLB */
        tlb_flush_all(e->harts[k]);
        set_attention(e->harts[k]);
    }
    return 0;
}

void tcg_set_single_step(tcg_engine *e, int hartid, int on)
{
    if (hartid < 0 || hartid >= e->num_harts)
        return;
    hart *h = e->harts[hartid];
    h->dbg_step = on != 0;
    h->step_mark = h->insns;
    h->step_trapped = 0;
    set_attention(h);
}

/* ---------------------------------------------------------------- VM state -------------- */

/* A pending exit is settled first: a store that exited as MMIO is complete once the device
 * had it (the next run would step over it); other pending completions cannot be saved and
 * the instruction is simply executed again. */
static void settle_pending(hart *h)
{
    if (h->pend == PEND_STORE) {
        h->pc += h->pend_len;
        h->insns++;
    }
    h->pend = PEND_NONE;
}

int tcg_get_hart_state(tcg_engine *e, int hartid, tcg_hart_state *s)
{
    if (hartid < 0 || hartid >= e->num_harts)
        return -1;
    hart *h = e->harts[hartid];
    settle_pending(h);
    memset(s, 0, sizeof(*s));
    for (int i = 1; i < 32; i++)
        s->x[i] = h->x[i];
    memcpy(s->f, h->f, sizeof(s->f));
    s->pc = h->pc;
    s->priv = (uint64_t)h->priv;
    fp_sync_flags(h);
    s->fflags = h->fflags;
    s->frm = h->frm;
    s->mstatus = h->mstatus;
    s->medeleg = h->medeleg;
    s->mideleg = h->mideleg;
    s->mie = h->mie;
    s->mtvec = h->mtvec;
    s->mscratch = h->mscratch;
    s->mepc = h->mepc;
    s->mcause = h->mcause;
    s->mtval = h->mtval;
    s->stvec = h->stvec;
    s->sscratch = h->sscratch;
    s->sepc = h->sepc;
    s->scause = h->scause;
    s->stval = h->stval;
    s->satp = h->satp;
    s->mcounteren = h->mcounteren;
    s->scounteren = h->scounteren;
    s->menvcfg = h->menvcfg;
    s->senvcfg = h->senvcfg;
    s->mcountinhibit = h->mcountinhibit;
    h->mip_sw |= ATOMIC_XCHG(&h->mip_edge, 0);
    s->mip_sw = h->mip_sw;
    s->mip_pins = ATOMIC_LOAD(&h->mip_pins);
    s->mtimecmp = h->mtimecmp;
    s->stimecmp = h->stimecmp;
    s->sbi_timecmp = h->sbi_timecmp;
    s->mcycle = read_counter(h, 0);
    s->minstret = read_counter(h, 2);
    s->insns = h->insns;
    for (int i = 0; i < NUM_PMP; i++) {
        s->pmpcfg[i] = h->pmpcfg[i];
        s->pmpaddr[i] = h->pmpaddr[i];
    }
    s->tselect = h->tselect;
    for (int i = 0; i < NUM_TRIGGERS; i++) {
        s->tdata1[i] = h->tdata1[i];
        s->tdata2[i] = h->tdata2[i];
    }
    s->tcontrol = h->tcontrol;
    s->stopped = (uint64_t)h->stopped;
    s->halted = (uint64_t)h->halted;
    s->resv_valid = (uint64_t)h->resv_valid;
    s->resv_pa = h->resv_pa;
    return 0;
}

int tcg_set_hart_state(tcg_engine *e, int hartid, const tcg_hart_state *s)
{
    if (hartid < 0 || hartid >= e->num_harts)
        return -1;
    if (s->priv != PRV_M && s->priv != PRV_S && s->priv != PRV_U)
        return -1;
    if (s->tselect >= NUM_TRIGGERS)
        return -1;
    hart *h = e->harts[hartid];
    h->pend = PEND_NONE;
    h->x[0] = 0;
    for (int i = 1; i < 32; i++)
        h->x[i] = s->x[i];
    memcpy(h->f, s->f, sizeof(h->f));
    h->pc = s->pc & ~1ull;
    (void)host_flags_take();
    h->fflags = (uint32_t)(s->fflags & 31);
    h->frm = (uint32_t)(s->frm & 7);
    memset(h->pmpcfg, 0, sizeof(h->pmpcfg)); /* unlocked, so that the writes below apply */
    h->priv = PRV_M;
    h->mstatus = 0;
    csr_write(h, 0x300, s->mstatus);
    csr_write(h, 0x302, s->medeleg);
    csr_write(h, 0x303, s->mideleg);
    csr_write(h, 0x304, s->mie);
    h->mtvec = s->mtvec & ~(uint64_t)2;
    h->mscratch = s->mscratch;
    csr_write(h, 0x341, s->mepc);
    h->mcause = s->mcause;
    h->mtval = s->mtval;
    h->stvec = s->stvec & ~(uint64_t)2;
    h->sscratch = s->sscratch;
    csr_write(h, 0x141, s->sepc);
    h->scause = s->scause;
    h->stval = s->stval;
    csr_write(h, 0x180, s->satp);
    csr_write(h, 0x306, s->mcounteren);
    csr_write(h, 0x106, s->scounteren);
    h->menvcfg = s->menvcfg & (MENVCFG_FIOM | MENVCFG_STCE);
    csr_write(h, 0x10A, s->senvcfg);
    h->mcountinhibit = s->mcountinhibit & 5;
    h->insns = s->insns;
    write_counter(h, 0, s->mcycle);
    write_counter(h, 2, s->minstret);
    for (int i = 0; i < NUM_PMP; i++)
        h->pmpaddr[i] = s->pmpaddr[i] & ((1ull << 54) - 1);
    for (int i = 0; i < NUM_PMP; i++) {
        uint8_t c = (uint8_t)s->pmpcfg[i] & (PMP_R | PMP_W | PMP_X | PMP_A | PMP_L);
        if ((c & (PMP_R | PMP_W)) == PMP_W)
            c &= (uint8_t)~PMP_W;
        h->pmpcfg[i] = c;
    }
    pmp_update_active(h);
    h->tselect = s->tselect;
    for (int i = 0; i < NUM_TRIGGERS; i++) {
        h->tdata1[i] = trig_legalize(s->tdata1[i]);
        h->tdata2[i] = s->tdata2[i];
    }
    h->tcontrol = s->tcontrol & (TCONTROL_MTE | TCONTROL_MPTE);
    h->priv = (int)s->priv;
    h->mip_sw = s->mip_sw & (MIP_SSIP | MIP_STIP | MIP_SEIP);
    ATOMIC_STORE(&h->mip_edge, 0ull);
    ATOMIC_STORE(&h->mip_pins, s->mip_pins & ALL_INTS);
    h->mtimecmp = s->mtimecmp;
    h->stimecmp = s->stimecmp;
    h->sbi_timecmp = s->sbi_timecmp;
    h->stopped = s->stopped != 0;
    h->halted = s->halted != 0;
    h->resv_valid = s->resv_valid != 0;
    h->resv_pa = s->resv_pa;
    if (h->resv_valid) { /* what SC will compare with: the word as it is now */
        uint64_t avail;
        int w;
        uint8_t *p = phys_host(e, h->resv_pa, &avail, &w);
        if (!p || avail < 4) {
            h->resv_valid = 0;
        } else if (avail >= 8 && !(h->resv_pa & 7)) {
            memcpy(&h->resv_val, p, 8);
        } else {
            uint32_t t;
            memcpy(&t, p, 4);
            h->resv_val = sext32(t);
        }
    }
    code_flush_request(e); /* RAM was replaced under the decoded code */
    tlb_flush_all(h);
    update_dmode(h);
    trig_update(h);
    timer_changed(h);
    return 0;
}

int tcg_dirty_log_start(tcg_engine *e)
{
    size_t words = ((e->ram_size >> 12) + 63) / 64;
    if (!e->dirty) {
        e->dirty = calloc(words ? words : 1, sizeof(uint64_t));
        if (!e->dirty)
            return -1;
    }
    for (int k = 0; k < e->num_harts; k++) /* stores go through the slow path once */
        memset(e->harts[k]->tlb_w, 0xff, sizeof(e->harts[k]->tlb_w));
    return 0;
}

size_t tcg_dirty_log_bytes(tcg_engine *e) { return (((e->ram_size >> 12) + 63) / 64) * 8; }

int tcg_dirty_log_collect(tcg_engine *e, uint8_t *out, size_t len)
{
    size_t n = tcg_dirty_log_bytes(e);
    if (!e->dirty || len < n)
        return -1;
    memcpy(out, e->dirty, n);
    memset(e->dirty, 0, n);
    for (int k = 0; k < e->num_harts; k++)
        memset(e->harts[k]->tlb_w, 0xff, sizeof(e->harts[k]->tlb_w));
    return 0;
}

void tcg_dirty_log_stop(tcg_engine *e)
{
    free(e->dirty);
    e->dirty = NULL;
}
