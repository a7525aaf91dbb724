/*
 * kvmpy tcg: the translating tier for x86-64 hosts.
 *
 * engine.c includes this file just before its interpreter loop: the translator works on the
 * interpreter's own decoded blocks (struct block / struct op) and calls its slow paths, so it
 * needs the engine's internals.  On other hosts only the stubs at the end are compiled and
 * every block is interpreted.
 *
 * A block that the interpreter looked up JIT_HOT times is translated to x86-64 code in one
 * pass, into a code buffer that is writable only while code is written into it (W^X: the
 * pages are switched with mprotect around each translation and each chain patch).  With
 * thread=multi other harts run code in the buffer while one translates, so it stays writable
 * and executable (QEMU's default); translating and patching then hold the engine's code lock,
 * and a patched jump (and the page immediate of a cross-page chain) is aligned and stored in
 * one piece.
 *
 * Register use inside translated code: rbx = the hart (its x[] array is at offset 0), r12 /
 * r13 = the current read / write soft TLB (fixed while translated code runs: the data TLB
 * flavour only changes in traps, xRET and CSR writes, which all return to the C loop), r14 =
 * the instruction TLB of the current privilege (for the cross-page chain check).  Up to
 * eight guest registers, the most used in the block, live in rsi, rdi, r8-r11, rbp, r15 for
 * the whole block: loaded at its entry, stored back (those the block writes) at every exit
 * and around every call into C.  rax, rcx, rdx are scratch.
 *
 * Loads and stores check the soft TLB inline exactly as the interpreter does (the tag
 * comparison also rejects misaligned accesses) and call mem_slow() through a small helper
 * otherwise.  Instructions without an inline translation call jit_helper(), which runs the
 * interpreter's semantics for one op.  System instructions end a block and run
 * exec_system().  Every exit stores pc and adds the retired instructions to insns before it
 * leaves, so traps, MMIO exits and interrupts see the same state as under the interpreter.
 *
 * Chaining.  A static exit (branch, jal, fall-through) checks the instruction limit and the
 * attention flag, then jumps through a patchable rel32: at first to a stub that returns to
 * the C loop with a record of the exit; the C loop patches the jump once it has the
 * successor's code.  A successor in another virtual page is only entered when the
 * instruction TLB still maps its page to the physical page it was translated from.  Every
 * translated block starts with a check that it is still valid (not dropped by a store to its
 * page) and of the current code epoch (fence.i), else it returns to the C loop, which looks
 * the pc up again.  Translations are only forgotten all at once (with the decoded blocks:
 * code_flush_all), so a chain never points at freed code.
 */

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(KVMPY_NO_JIT)
#define JIT_BUILT 1

#include <sys/mman.h>

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS 0x20 /* Linux; hidden by _POSIX_C_SOURCE */
#endif

#define JIT_CODE_SIZE (64u << 20)
#define JIT_HOT 32u
#define JIT_BLOCK_ROOM (48u << 10) /* more than the largest translation of a block */
#define JIT_NALLOC 8

/* host registers */
enum { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 };
/* condition codes */
enum { CC_B = 2, CC_AE = 3, CC_E = 4, CC_NE = 5, CC_L = 0xc, CC_GE = 0xd };

static const int alloc_regs[JIT_NALLOC] = {RSI, RDI, R8, R9, R10, R11, RBP, R15};

/* What a chain exit that returned to the C loop leaves behind (stored in the code buffer,
 * after the exit's last jump, where nothing executes). */
typedef struct jit_exit_info {
    uint8_t *site;      /* rel32 of the patchable jump */
    uint64_t target;    /* guest pc of the successor */
    uint8_t *ppage_imm; /* cross-page exit: the imm64 holding the expected physical page */
} jit_exit_info;

typedef struct jit_state {
    uint8_t *code;
    size_t used;
    size_t base_used; /* the entry trampoline */
    uintptr_t (*enter)(hart *h, const void *code, const tlb_entry *tlb_x);
    uint8_t *epilogue;
    uint8_t *epilogue32; /* the same after zero-extending eax (a C helper's int result) */
    uint64_t gen;     /* bumped when every translation is forgotten */
    int failed;       /* the code buffer could not be made executable: interpret */
    int fma;          /* the host has FMA3 (and the OS saves AVX state) */
    uint64_t translated; /* blocks translated so far */
    uint32_t threshold;  /* lookups of a block before it is translated */
    jit_exit_info **pending; /* per hart: the exit to chain to the next block entered */
    uint64_t *pending_gen;
    int mt;           /* thread=multi: the buffer stays writable and executable (as QEMU's
                         default), since other harts run code in it while one translates;
                         patched jumps and page immediates are aligned and stored whole */
} jit_state;

/* ------------------------------------------------------------------ the emitter -------- */

typedef struct jbuf {
    uint8_t *p, *end;
    int overflow;
} jbuf;

static void e8(jbuf *j, unsigned v)
{
    if (j->p < j->end)
        *j->p++ = (uint8_t)v;
    else
        j->overflow = 1;
}

static void e32(jbuf *j, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        e8(j, (v >> (8 * i)) & 0xff);
}

static void e64(jbuf *j, uint64_t v)
{
    e32(j, (uint32_t)v);
    e32(j, (uint32_t)(v >> 32));
}

#define F_W 1u    /* REX.W */
#define F_66 2u   /* operand-size prefix */
#define F_MEM 4u  /* rm is a memory operand [base + index*scale + disp] */
#define F_BYTE 8u /* byte register operand: REX even without bits (sil, dil) */
#define F_F2 16u  /* scalar-double prefix */
#define F_F3 32u  /* scalar-single prefix */
#define NOIDX (-1)

/* One instruction: [66] [REX] opcode (1-3 bytes, big end first) ModRM [SIB] [disp]. */
static void x_ins(jbuf *j, unsigned fl, uint32_t opc, int reg, int rm, int index, int scale,
                  int32_t disp)
{
    if (fl & F_66)
        e8(j, 0x66);
    if (fl & F_F2)
        e8(j, 0xf2);
    if (fl & F_F3)
        e8(j, 0xf3);
    unsigned rex = 0x40 | ((fl & F_W) ? 8 : 0) | ((reg & 8) ? 4 : 0) |
                   ((index >= 0 && (index & 8)) ? 2 : 0) | ((rm & 8) ? 1 : 0);
    if (rex != 0x40 || ((fl & F_BYTE) && ((reg & 7) >= 4 || (!(fl & F_MEM) && (rm & 7) >= 4))))
        e8(j, rex);
    if (opc > 0xffff)
        e8(j, opc >> 16);
    if (opc > 0xff)
        e8(j, (opc >> 8) & 0xff);
    e8(j, opc & 0xff);
    if (!(fl & F_MEM)) {
        e8(j, 0xc0 | (reg & 7) << 3 | (rm & 7));
        return;
    }
    int mod = (disp == 0 && (rm & 7) != 5) ? 0 : (disp >= -128 && disp <= 127) ? 1 : 2;
    if (index < 0 && (rm & 7) != 4) {
        e8(j, (unsigned)mod << 6 | (reg & 7) << 3 | (rm & 7));
    } else {
        unsigned ss = scale == 8 ? 3 : scale == 4 ? 2 : scale == 2 ? 1 : 0;
        e8(j, (unsigned)mod << 6 | (reg & 7) << 3 | 4);
        e8(j, ss << 6 | (unsigned)((index < 0 ? 4 : index) & 7) << 3 | (rm & 7));
    }
    if (mod == 1)
        e8(j, (uint8_t)disp);
    else if (mod == 2)
        e32(j, (uint32_t)disp);
}

#define RR(j, fl, opc, reg, rm) x_ins((j), (fl), (opc), (reg), (rm), NOIDX, 0, 0)
#define RM(j, fl, opc, reg, base, disp) x_ins((j), (fl) | F_MEM, (opc), (reg), (base), NOIDX, 0, (int32_t)(disp))
#define RMX(j, fl, opc, reg, base, idx, sc, disp) x_ins((j), (fl) | F_MEM, (opc), (reg), (base), (idx), (sc), (int32_t)(disp))

/* opcodes (the "r, r/m" direction unless noted) */
#define O_MOV_ST 0x89u /* mov r/m, r */
#define O_MOV 0x8bu
#define O_ADD 0x03u
#define O_OR 0x0bu
#define O_AND 0x23u
#define O_SUB 0x2bu
#define O_XOR 0x33u
#define O_CMP 0x3bu
#define O_TEST 0x85u
#define O_LEA 0x8du
#define O_MOVSXD 0x63u
#define O_MOVZX8 0x0fb6u
#define O_MOVZX16 0x0fb7u
#define O_MOVSX8 0x0fbeu
#define O_MOVSX16 0x0fbfu
#define O_IMUL 0x0fafu

/* group-1 immediate ops (the /digit) */
enum { G_ADD = 0, G_OR = 1, G_AND = 4, G_SUB = 5, G_XOR = 6, G_CMP = 7 };
/* shift group (/digit) */
enum { S_ROL = 0, S_ROR = 1, S_SHL = 4, S_SHR = 5, S_SAR = 7 };

static void x_alu_ri(jbuf *j, unsigned fl, int g, int rm, int32_t imm)
{
    if (imm >= -128 && imm <= 127) {
        RR(j, fl, 0x83, g, rm);
        e8(j, (uint8_t)imm);
    } else {
        RR(j, fl, 0x81, g, rm);
        e32(j, (uint32_t)imm);
    }
}

static void x_shift_ri(jbuf *j, unsigned fl, int g, int rm, unsigned n)
{
    RR(j, fl, 0xc1, g, rm);
    e8(j, n);
}

static void x_mov_ri(jbuf *j, int r, uint64_t v)
{
    if (v <= 0xffffffffull) { /* mov r32, imm32 (zero-extends) */
        if (r & 8)
            e8(j, 0x41);
        e8(j, 0xb8 + (r & 7));
        e32(j, (uint32_t)v);
    } else if ((int64_t)v == (int32_t)v) { /* mov r/m64, simm32 */
        RR(j, F_W, 0xc7, 0, r);
        e32(j, (uint32_t)v);
    } else {
        e8(j, 0x48 | ((r & 8) ? 1 : 0));
        e8(j, 0xb8 + (r & 7));
        e64(j, v);
    }
}

/* movabs r, imm64 always (patchable); returns the imm64's address */
static uint8_t *x_movabs(jbuf *j, int r, uint64_t v)
{
    e8(j, 0x48 | ((r & 8) ? 1 : 0));
    e8(j, 0xb8 + (r & 7));
    uint8_t *at = j->p;
    e64(j, v);
    return at;
}

static void x_mov_rr(jbuf *j, int dst, int src)
{
    if (dst != src)
        RR(j, F_W, O_MOV, dst, src);
}

/* jcc / jmp rel32: return the rel32's address */
static uint8_t *x_jcc(jbuf *j, int cc)
{
    e8(j, 0x0f);
    e8(j, 0x80 + (unsigned)cc);
    uint8_t *at = j->p;
    e32(j, 0);
    return at;
}

static uint8_t *x_jmp(jbuf *j)
{
    e8(j, 0xe9);
    uint8_t *at = j->p;
    e32(j, 0);
    return at;
}

static void x_patch(uint8_t *rel32, const uint8_t *target)
{
    if (!rel32)
        return;
    int32_t d = (int32_t)(target - (rel32 + 4));
    memcpy(rel32, &d, 4);
}

static void x_call(jbuf *j, const void *fn)
{
    x_movabs(j, RAX, (uint64_t)(uintptr_t)fn);
    RR(j, 0, 0xff, 2, RAX); /* call rax */
}

/* ------------------------------------------------------------------ helpers (C) -------- */

/* Slow path of an inline load: h->pc and insns as the interpreter has them at a failure. */
static int jit_load_slow(hart *h, uint64_t va, const op *o, uint32_t k)
{
    unsigned size, sign = 0;
    switch (o->kind) {
    case OP_lb: size = 1; sign = 1; break;
    case OP_lh: size = 2; sign = 1; break;
    case OP_lw: size = 4; sign = 1; break;
    case OP_ld: size = 8; break;
    case OP_lbu: size = 1; break;
    case OP_lhu: size = 2; break;
    default: size = 4; break; /* lwu */
    }
    uint64_t v = 0;
    h->pc = o->pc;
    int st = mem_slow(h, va, size, ACC_R, &v, o, (int)sign, 0);
    if (unlikely(st)) {
        h->insns += k;
        return st == ST_EXIT ? 2 : 1;
    }
    switch (o->kind) {
    case OP_lb: v = CONV_S8(v); break;
    case OP_lh: v = CONV_S16(v); break;
    case OP_lw: v = CONV_S32(v); break;
    default: break;
    }
    h->x[o->rd] = v;
    return 0;
}

static int jit_store_slow(hart *h, uint64_t va, const op *o, uint32_t k)
{
    unsigned size = o->kind == OP_sb ? 1 : o->kind == OP_sh ? 2 : o->kind == OP_sw ? 4 : 8;
    uint64_t v = h->x[o->rs2];
    h->pc = o->pc;
    int st = mem_slow(h, va, size, ACC_W, &v, o, 0, 0);
    if (unlikely(st)) {
        h->insns += k;
        return st == ST_EXIT ? 2 : 1;
    }
    return 0;
}

/* A system instruction (the last of its block): as the interpreter's CASE(system). */
static int jit_system(hart *h, const op *o, uint32_t k)
{
    h->pc = o->pc;
    h->insns += k;
    return exec_system(h, o) == ST_EXIT ? 2 : 1;
}

static int jit_trap_illegal(hart *h, const op *o, uint32_t k)
{
    h->pc = o->pc;
    h->insns += k;
    raise_illegal(h);
    return 1;
}

/* The interpreter's fast FP cases (round to nearest even); 0: take fp_exec(). */
static int jit_fp_fast(hart *h, const op *o)
{
    if (fs_off(h) || (o->rm == 7 && h->frm != 0))
        return 0;
    uint64_t *const X = h->x;
    switch (o->kind) {
    case OP_fadd_d: case OP_fsub_d: case OP_fmul_d: case OP_fdiv_d: {
        double a = get_d(h, o->rs1), bb = get_d(h, o->rs2), r;
        switch (o->kind) {
        case OP_fadd_d: r = a + bb; break;
        case OP_fsub_d: r = a - bb; break;
        case OP_fmul_d: r = a * bb; break;
        default: r = a / bb; break;
        }
        FP_BARRIER(r);
        set_d(h, o->rd, r);
        break;
    }
    case OP_fadd_s: case OP_fsub_s: case OP_fmul_s: case OP_fdiv_s: {
        float a = get_s(h, o->rs1), bb = get_s(h, o->rs2), r;
        switch (o->kind) {
        case OP_fadd_s: r = a + bb; break;
        case OP_fsub_s: r = a - bb; break;
        case OP_fmul_s: r = a * bb; break;
        default: r = a / bb; break;
        }
        FP_BARRIER(r);
        set_s(h, o->rd, r);
        break;
    }
    case OP_fcvt_d_w: {
        double r = (double)(int32_t)X[o->rs1];
        FP_BARRIER(r);
        set_d(h, o->rd, r);
        break;
    }
    case OP_fmadd_d: case OP_fmsub_d: case OP_fnmsub_d: case OP_fnmadd_d: {
        double a = get_d(h, o->rs1), bb = get_d(h, o->rs2), cc = get_d(h, o->rs3);
        if (unlikely((isinf(a) && bb == 0) || (a == 0 && isinf(bb))))
            return 0;
        if (o->kind == OP_fnmsub_d || o->kind == OP_fnmadd_d)
            a = -a;
        if (o->kind == OP_fmsub_d || o->kind == OP_fnmadd_d)
            cc = -cc;
        double r = fma(a, bb, cc);
        FP_BARRIER(r);
        set_d(h, o->rd, r);
        break;
    }
    case OP_fmadd_s: case OP_fmsub_s: case OP_fnmsub_s: case OP_fnmadd_s: {
        float a = get_s(h, o->rs1), bb = get_s(h, o->rs2), cc = get_s(h, o->rs3);
        if (unlikely((isinf(a) && bb == 0) || (a == 0 && isinf(bb))))
            return 0;
        if (o->kind == OP_fnmsub_s || o->kind == OP_fnmadd_s)
            a = -a;
        if (o->kind == OP_fmsub_s || o->kind == OP_fnmadd_s)
            cc = -cc;
        float r = fmaf(a, bb, cc);
        FP_BARRIER(r);
        set_s(h, o->rd, r);
        break;
    }
    case OP_fmv_d:
        h->f[o->rd] = h->f[o->rs1];
        break;
    case OP_fle_d: case OP_flt_d: case OP_feq_d: {
        double a = get_d(h, o->rs1), bb = get_d(h, o->rs2);
        if (unlikely(isnan(a) || isnan(bb)))
            return 0;
        X[o->rd] = o->kind == OP_fle_d ? a <= bb : o->kind == OP_flt_d ? a < bb : a == bb;
        break;
    }
    default:
        return 0;
    }
    h->mstatus |= MSTATUS_FS;
    return 1;
}

/* One op without an inline translation, with the interpreter's semantics.  0: done; else the
 * value translated code returns (1: go to the C loop, 2: leave the run loop). */
static int jit_helper(hart *h, const op *o, uint32_t k)
{
    uint64_t *const X = h->x; /* R1, R2 and RD are the interpreter's */
    switch (o->kind) {
    case OP_mulhsu: RD = (uint64_t)(((int128_t)(int64_t)R1 * (int128_t)R2) >> 64); return 0;
    case OP_mulh: RD = (uint64_t)(((int128_t)(int64_t)R1 * (int128_t)(int64_t)R2) >> 64); return 0;
    case OP_mulhu: RD = (uint64_t)(((uint128_t)R1 * (uint128_t)R2) >> 64); return 0;
    case OP_div: RD = div64(R1, R2); return 0;
    case OP_divu: RD = R2 ? R1 / R2 : ~0ull; return 0;
    case OP_rem: RD = rem64(R1, R2); return 0;
    case OP_remu: RD = R2 ? R1 % R2 : R1; return 0;
    case OP_divw: RD = divw(R1, R2); return 0;
    case OP_divuw: RD = (uint32_t)R2 ? sext32((uint32_t)R1 / (uint32_t)R2) : ~0ull; return 0;
    case OP_remw: RD = remw(R1, R2); return 0;
    case OP_remuw: RD = (uint32_t)R2 ? sext32((uint32_t)R1 % (uint32_t)R2) : sext32((uint32_t)R1); return 0;
    case OP_clz: RD = R1 ? (uint64_t)__builtin_clzll(R1) : 64; return 0;
    case OP_clzw: RD = (uint32_t)R1 ? (uint64_t)__builtin_clz((uint32_t)R1) : 32; return 0;
    case OP_ctz: RD = R1 ? (uint64_t)__builtin_ctzll(R1) : 64; return 0;
    case OP_ctzw: RD = (uint32_t)R1 ? (uint64_t)__builtin_ctz((uint32_t)R1) : 32; return 0;
    case OP_cpop: RD = (uint64_t)__builtin_popcountll(R1); return 0;
    case OP_cpopw: RD = (uint64_t)__builtin_popcount((uint32_t)R1); return 0;
    case OP_orcb: RD = orc_b(R1); return 0;
    case OP_rol: RD = rotl64(R1, (unsigned)R2); return 0;
    case OP_rolw: RD = sext32(rotl32((uint32_t)R1, (unsigned)R2)); return 0;
    case OP_ror: RD = rotr64(R1, (unsigned)R2); return 0;
    case OP_rori: RD = rotr64(R1, (unsigned)o->imm); return 0;
    case OP_roriw: RD = sext32(rotr32((uint32_t)R1, (unsigned)o->imm)); return 0;
    case OP_rorw: RD = sext32(rotr32((uint32_t)R1, (unsigned)R2)); return 0;
    case OP_bclr: RD = R1 & ~(1ull << (R2 & 63)); return 0;
    case OP_bclri: RD = R1 & ~(1ull << o->imm); return 0;
    case OP_bext: RD = (R1 >> (R2 & 63)) & 1; return 0;
    case OP_bexti: RD = (R1 >> o->imm) & 1; return 0;
    case OP_binv: RD = R1 ^ (1ull << (R2 & 63)); return 0;
    case OP_binvi: RD = R1 ^ (1ull << o->imm); return 0;
    case OP_bset: RD = R1 | (1ull << (R2 & 63)); return 0;
    case OP_bseti: RD = R1 | (1ull << o->imm); return 0;
    case OP_max: RD = (int64_t)R1 > (int64_t)R2 ? R1 : R2; return 0;
    case OP_maxu: RD = R1 > R2 ? R1 : R2; return 0;
    case OP_min: RD = (int64_t)R1 < (int64_t)R2 ? R1 : R2; return 0;
    case OP_minu: RD = R1 < R2 ? R1 : R2; return 0;
    case OP_amo: {
        h->pc = o->pc;
        int st = exec_amo(h, o);
        if (unlikely(st)) {
            h->insns += k;
            return st == ST_EXIT ? 2 : 1;
        }
        return 0;
    }
    case OP_flw: case OP_fld: case OP_fsw: case OP_fsd: {
        if (unlikely(fs_off(h)))
            return jit_trap_illegal(h, o, k);
        int load = o->kind == OP_flw || o->kind == OP_fld;
        unsigned size = o->kind == OP_flw || o->kind == OP_fsw ? 4 : 8;
        uint64_t va = R1 + (uint64_t)o->imm, v = load ? 0 : h->f[o->rs2];
        const tlb_entry *t = load ? &h->tlb_r_cur[(va >> 12) & TLB_MASK]
                                  : &h->tlb_w_cur[(va >> 12) & TLB_MASK];
        if (likely(t->tag == (va & (PAGE_MASK | (size - 1))))) {
            if (load)
                v = ram_load((const void *)(uintptr_t)(va + t->addend), size);
            else
                ram_store((void *)(uintptr_t)(va + t->addend), size, v);
        } else {
            h->pc = o->pc;
            int st = mem_slow(h, va, size, load ? ACC_R : ACC_W, &v, o, 0, 1);
            if (unlikely(st)) {
                h->insns += k;
                return st == ST_EXIT ? 2 : 1;
            }
        }
        if (load) {
            h->f[o->rd] = size == 4 ? (0xffffffff00000000ull | (uint32_t)v) : v;
            h->mstatus |= MSTATUS_FS;
        }
        return 0;
    }
    case OP_fadd_d: case OP_fsub_d: case OP_fmul_d: case OP_fdiv_d:
    case OP_fadd_s: case OP_fsub_s: case OP_fmul_s: case OP_fdiv_s:
    case OP_fmadd_d: case OP_fmsub_d: case OP_fnmsub_d: case OP_fnmadd_d:
    case OP_fmadd_s: case OP_fmsub_s: case OP_fnmsub_s: case OP_fnmadd_s:
    case OP_fmv_d: case OP_fle_d: case OP_flt_d: case OP_feq_d: case OP_fcvt_d_w:
    case OP_fp:
        if (o->kind != OP_fp && jit_fp_fast(h, o))
            return 0;
        if (unlikely(fp_exec(h, (uint32_t)o->imm))) {
            h->pc = o->pc;
            h->insns += k;
            take_trap(h, EXC_ILLEGAL, (uint32_t)o->imm);
            return 1;
        }
        return 0;
    default:
        return jit_trap_illegal(h, o, k);
    }
}

/* ------------------------------------------------------------------ the translator ----- */

enum { FIX_LOAD, FIX_STORE, FIX_BRANCH, FIX_HELPER };

typedef struct jit_fixup {
    int kind;
    uint8_t *jcc;       /* rel32 to the out-of-line part */
    uint8_t *cont;      /* where the inline path goes on */
    const op *o;
    uint32_t k;         /* instructions retired before this one */
    uint64_t target;    /* FIX_BRANCH */
} jit_fixup;

typedef struct jit_ctx {
    jbuf j;
    jit_state *js;
    block *b;
    int8_t hreg[33];    /* guest register -> host register, or -1 */
    uint64_t written;   /* allocated guest registers the block writes */
    uint64_t allocated;
    jit_fixup fix[4 * BLOCK_MAX + 8];
    int nfix;
    uint8_t *bail_jcc[2];
    uint8_t *body;      /* after the entry check and the register loads */
    int8_t fx[32];      /* guest FP register -> xmm register caching it, or -1 */
    uint32_t fwritten;  /* cached FP registers the block writes */
    uint32_t fallocated;
    int fs_on;          /* an earlier FP op of the block checked that FS is on */
    int fs_dirty;       /* an earlier FP op of the block set FS dirty */
} jit_ctx;

static int op_native(unsigned kind)
{
    switch (kind) {
    case OP_end: case OP_li: case OP_mv: case OP_auipc: case OP_nop: case OP_fence:
    case OP_jal: case OP_jalr:
    case OP_beq: case OP_bne: case OP_blt: case OP_bge: case OP_bltu: case OP_bgeu:
    case OP_lb: case OP_lh: case OP_lw: case OP_ld: case OP_lbu: case OP_lhu: case OP_lwu:
    case OP_sb: case OP_sh: case OP_sw: case OP_sd:
    case OP_addi: case OP_slti: case OP_sltiu: case OP_xori: case OP_ori: case OP_andi:
    case OP_slli: case OP_srli: case OP_srai:
    case OP_add: case OP_sub: case OP_sll: case OP_slt: case OP_sltu: case OP_xor: case OP_srl:
    case OP_sra: case OP_or: case OP_and:
    case OP_addiw: case OP_slliw: case OP_srliw: case OP_sraiw: case OP_addw: case OP_subw:
    case OP_sllw: case OP_srlw: case OP_sraw:
    case OP_mul: case OP_mulw: case OP_mulhu: case OP_mulh:
    case OP_sh1add: case OP_sh2add: case OP_sh3add: case OP_adduw: case OP_sh1adduw:
    case OP_sh2adduw: case OP_sh3adduw: case OP_slliuw:
    case OP_andn: case OP_orn: case OP_xnor: case OP_sextb: case OP_sexth: case OP_zexth:
    case OP_rev8: case OP_max: case OP_maxu: case OP_min: case OP_minu:
    case OP_system:
        return 1;
    default:
        return 0;
    }
}

/* Does a natively translated op read rs1 / rs2 as integer registers? */
static void op_uses(const op *o, int *r1, int *r2)
{
    *r1 = *r2 = 0;
    switch (o->kind) {
    case OP_li: case OP_auipc: case OP_nop: case OP_fence: case OP_jal: case OP_end:
    case OP_system:
        return;
    case OP_beq: case OP_bne: case OP_blt: case OP_bge: case OP_bltu: case OP_bgeu:
    case OP_sb: case OP_sh: case OP_sw: case OP_sd:
    case OP_add: case OP_sub: case OP_sll: case OP_slt: case OP_sltu: case OP_xor: case OP_srl:
    case OP_sra: case OP_or: case OP_and: case OP_addw: case OP_subw: case OP_sllw:
    case OP_srlw: case OP_sraw: case OP_mul: case OP_mulw: case OP_mulhu: case OP_mulh:
    case OP_sh1add: case OP_sh2add: case OP_sh3add: case OP_adduw: case OP_sh1adduw:
    case OP_sh2adduw: case OP_sh3adduw: case OP_andn: case OP_orn: case OP_xnor:
    case OP_max: case OP_maxu: case OP_min: case OP_minu:
        *r1 = *r2 = 1;
        return;
    default:
        *r1 = 1;
        return;
    }
}

/* Does the inline translation of o write the integer register rd? */
static int op_writes_rd(const op *o)
{
    switch (o->kind) {
    case OP_fle_d: case OP_flt_d: case OP_feq_d: /* emit_fp */
        return 1;
    case OP_nop: case OP_fence: case OP_end: case OP_system:
    case OP_beq: case OP_bne: case OP_blt: case OP_bge: case OP_bltu: case OP_bgeu:
    case OP_sb: case OP_sh: case OP_sw: case OP_sd:
        return 0;
    default:
        return op_native(o->kind);
    }
}

#define OFF(f) ((int32_t)offsetof(hart, f))
#define FOFF(r) (OFF(f) + 8 * (int32_t)(r))

static void spill(jit_ctx *c)
{
    for (int g = 1; g < 32; g++)
        if ((c->written >> g) & 1)
            RM(&c->j, F_W, O_MOV_ST, c->hreg[g], RBX, 8 * g);
    for (int g = 0; g < 32; g++)
        if ((c->fwritten >> g) & 1)
            RM(&c->j, F_F2, 0x0f11, c->fx[g], RBX, FOFF(g)); /* movsd [f], xmm */
}

static void reload(jit_ctx *c)
{
    for (int g = 1; g < 32; g++)
        if ((c->allocated >> g) & 1)
            RM(&c->j, F_W, O_MOV, c->hreg[g], RBX, 8 * g);
    for (int g = 0; g < 32; g++)
        if ((c->fallocated >> g) & 1)
            RM(&c->j, F_F2, 0x0f10, c->fx[g], RBX, FOFF(g)); /* movsd xmm, [f] */
}

/* xmm x = guest FP register g (its 64 bits) */
static void f_get(jit_ctx *c, int x, int g)
{
    if (c->fx[g] >= 0) {
        if (c->fx[g] != x)
            RR(&c->j, F_66, 0x0f28, x, c->fx[g]); /* movapd */
    } else {
        RM(&c->j, F_F2, 0x0f10, x, RBX, FOFF(g));
    }
}

/* guest FP register g = xmm0 */
static void f_set(jit_ctx *c, int g)
{
    if (c->fx[g] >= 0)
        RR(&c->j, F_66, 0x0f28, c->fx[g], 0);
    else
        RM(&c->j, F_F2, 0x0f11, 0, RBX, FOFF(g));
}

/* op xmm x, guest FP register g (prefix flags fl, two-byte opcode) */
static void f_op(jit_ctx *c, unsigned fl, unsigned opc, int x, int g)
{
    if (c->fx[g] >= 0)
        RR(&c->j, fl, opc, x, c->fx[g]);
    else
        RM(&c->j, fl, opc, x, RBX, FOFF(g));
}

/* A host register holding guest register g: its own, or `tmp` loaded with it. */
static int src(jit_ctx *c, int g, int tmp)
{
    if (g == 0 || g == 32) {
        RR(&c->j, 0, O_XOR, tmp, tmp);
        return tmp;
    }
    if (c->hreg[g] >= 0)
        return c->hreg[g];
    RM(&c->j, F_W, O_MOV, tmp, RBX, 8 * g);
    return tmp;
}

/* Guest register rd = host register r. */
static void wr(jit_ctx *c, int g, int r)
{
    if (g == 0 || g == 32)
        return;
    if (c->hreg[g] >= 0)
        x_mov_rr(&c->j, c->hreg[g], r);
    else
        RM(&c->j, F_W, O_MOV_ST, r, RBX, 8 * g);
}

/* rax = guest g */
static void ld_rax(jit_ctx *c, int g)
{
    int r = src(c, g, RAX);
    x_mov_rr(&c->j, RAX, r);
}


/* Leave for `target` after `k` more retired instructions: chain, or return to the C loop.
 * The cached registers must already be stored. */
static void chain_exit(jit_ctx *c, uint64_t target, uint32_t k)
{
    jbuf *j = &c->j;
    jit_state *js = c->js;
    RM(j, F_W, 0x83, G_ADD, RBX, OFF(insns));
    e8(j, k);
    RM(j, F_W, O_MOV, RAX, RBX, OFF(insns));
    RM(j, F_W, O_CMP, RAX, RBX, OFF(limit));
    uint8_t *to_c[4];
    int nto = 0;
    to_c[nto++] = x_jcc(j, CC_AE);
    RM(j, 0, 0x83, G_CMP, RBX, OFF(attention));
    e8(j, 0);
    to_c[nto++] = x_jcc(j, CC_NE);
    uint8_t *ppage_imm = NULL;
    if (((target ^ c->b->vpc) & PAGE_MASK) != 0) {
        int32_t ent = (int32_t)(((target >> 12) & TLB_MASK) * sizeof(tlb_entry));
        x_movabs(j, RAX, target & PAGE_MASK);
        RM(j, F_W, O_CMP, RAX, R14, ent + (int32_t)offsetof(tlb_entry, tag));
        to_c[nto++] = x_jcc(j, CC_NE);
        while (((uintptr_t)j->p + 2) & 7) /* an imm64 patched whole (jit_link) */
            e8(j, 0x90);
        ppage_imm = x_movabs(j, RAX, ~(uint64_t)0);
        RM(j, F_W, O_CMP, RAX, R14, ent + (int32_t)offsetof(tlb_entry, ppage));
        to_c[nto++] = x_jcc(j, CC_NE);
    }
    while (((uintptr_t)j->p + 1) & 3) /* a rel32 patched whole (jit_link) */
        e8(j, 0x90);
    uint8_t *site = x_jmp(j);
    x_patch(site, j->p);
    for (int i = 0; i < nto; i++)
        x_patch(to_c[i], j->p);
    x_movabs(j, RAX, target);
    RM(j, F_W, O_MOV_ST, RAX, RBX, OFF(pc));
    uint8_t *info_imm = x_movabs(j, RAX, 0);
    x_patch(x_jmp(j), js->epilogue);
    /* the record, 8-aligned, behind the jump */
    while ((uintptr_t)j->p & 7)
        e8(j, 0xcc);
    jit_exit_info info = {site, target, ppage_imm};
    uint8_t *rec = j->p;
    for (size_t i = 0; i < sizeof(info); i++)
        e8(j, ((uint8_t *)&info)[i]);
    if (!j->overflow) {
        uint64_t a = (uint64_t)(uintptr_t)rec;
        memcpy(info_imm, &a, 8);
    }
}

/* Leave for the pc in rdx after `k` instructions (an indirect jump): through the hart's jump
 * cache straight to the successor's translation when there is one, else to the C loop.  The
 * cached registers must already be stored. */
static void jump_cache_exit(jit_ctx *c, uint32_t k)
{
    jbuf *j = &c->j;
    uint8_t *out[6];
    int n = 0;
    RM(j, F_W, 0x83, G_ADD, RBX, OFF(insns));
    e8(j, k);
    RM(j, F_W, O_MOV, RAX, RBX, OFF(insns));
    RM(j, F_W, O_CMP, RAX, RBX, OFF(limit));
    out[n++] = x_jcc(j, CC_AE);
    RM(j, 0, 0x83, G_CMP, RBX, OFF(attention));
    e8(j, 0);
    out[n++] = x_jcc(j, CC_NE);
    /* j = &h->jc[(pc >> 1) & (JC_SIZE - 1)]; key = pc ^ priv << 56 */
    x_mov_rr(j, RCX, RDX);
    x_shift_ri(j, F_W, S_SHR, RCX, 1);
    x_alu_ri(j, 0, G_AND, RCX, JC_SIZE - 1);
    RMX(j, F_W, O_LEA, RCX, RCX, RCX, 2, 0);                  /* * 3 (24-byte entries) */
    RMX(j, F_W, O_LEA, RCX, RBX, RCX, 8, OFF(jc));
    RM(j, F_W, O_MOVSXD, RAX, RBX, OFF(priv));
    x_shift_ri(j, F_W, S_SHL, RAX, 56);
    RR(j, F_W, O_XOR, RAX, RDX);
    RM(j, F_W, O_CMP, RAX, RCX, (int32_t)offsetof(jc_entry, key));
    out[n++] = x_jcc(j, CC_NE);
    RM(j, F_W, O_MOV, RAX, RBX, OFF(jc_gen));
    RM(j, F_W, O_CMP, RAX, RCX, (int32_t)offsetof(jc_entry, gen));
    out[n++] = x_jcc(j, CC_NE);
    RM(j, F_W, O_MOV, RAX, RCX, (int32_t)offsetof(jc_entry, b));
    RM(j, F_W, O_MOV, RAX, RAX, (int32_t)offsetof(block, jit));
    RR(j, F_W, O_TEST, RAX, RAX);
    out[n++] = x_jcc(j, CC_E);
    RR(j, 0, 0xff, 4, RAX);                                    /* jmp rax */
    for (int i = 0; i < n; i++)
        x_patch(out[i], j->p);
    RM(j, F_W, O_MOV_ST, RDX, RBX, OFF(pc));
    x_mov_ri(j, RAX, 1);
    x_patch(x_jmp(j), c->js->epilogue);
}

/* Back to the start of this same block after `k` instructions: the cached registers stay
 * where they are (the next exit stores them); only the limit, attention and a store to the
 * block's own code (valid) are checked, the same as a chain. */
static void self_loop(jit_ctx *c, uint32_t k)
{
    jbuf *j = &c->j;
    RM(j, F_W, 0x83, G_ADD, RBX, OFF(insns));
    e8(j, k);
    RM(j, F_W, O_MOV, RAX, RBX, OFF(insns));
    RM(j, F_W, O_CMP, RAX, RBX, OFF(limit));
    uint8_t *out[3];
    out[0] = x_jcc(j, CC_AE);
    RM(j, 0, 0x83, G_CMP, RBX, OFF(attention));
    e8(j, 0);
    out[1] = x_jcc(j, CC_NE);
    x_movabs(j, RAX, (uint64_t)(uintptr_t)c->b);
    RM(j, 0, 0x80, G_CMP, RAX, (int32_t)offsetof(block, valid));
    e8(j, 0);
    out[2] = x_jcc(j, CC_E);
    x_patch(x_jmp(j), c->body);
    for (int i = 0; i < 3; i++)
        x_patch(out[i], j->p);
    spill(c);
    x_movabs(j, RAX, c->b->vpc);
    RM(j, F_W, O_MOV_ST, RAX, RBX, OFF(pc));
    x_mov_ri(j, RAX, 1);
    x_patch(x_jmp(j), c->js->epilogue);
}

/* Return `code` (1: the C loop, 2: leave run_loop) with pc = `pc`, after `k` instructions.
 * The cached registers must already be stored. */
static void plain_exit(jit_ctx *c, uint64_t pc, uint32_t k)
{
    jbuf *j = &c->j;
    if (k) {
        RM(j, F_W, 0x83, G_ADD, RBX, OFF(insns));
        e8(j, k);
    }
    x_movabs(j, RAX, pc);
    RM(j, F_W, O_MOV_ST, RAX, RBX, OFF(pc));
    x_mov_ri(j, RAX, 1);
    x_patch(x_jmp(j), c->js->epilogue);
}

/* Call helper(h, o, k) with the registers stored; on a nonzero result leave with it. */
static void call_op_helper(jit_ctx *c, const void *fn, const op *o, uint32_t k)
{
    jbuf *j = &c->j;
    spill(c);
    x_mov_rr(j, RDI, RBX);
    x_movabs(j, RSI, (uint64_t)(uintptr_t)o);
    x_mov_ri(j, RDX, k);
    x_call(j, fn);
    RR(j, 0, O_TEST, RAX, RAX);
    x_patch(x_jcc(j, CC_NE), c->js->epilogue32);
    reload(c);
}

static unsigned mem_size(unsigned kind)
{
    switch (kind) {
    case OP_lb: case OP_lbu: case OP_sb: return 1;
    case OP_lh: case OP_lhu: case OP_sh: return 2;
    case OP_lw: case OP_lwu: case OP_sw: return 4;
    default: return 8;
    }
}

/* rdx = va = rs1 + imm, then the TLB check against the table in `tlb` (r12 / r13); on a hit
 * rdx = the host address.  Returns the rel32 of the miss branch. */
static uint8_t *tlb_check(jit_ctx *c, const op *o, int tlb, unsigned size)
{
    jbuf *j = &c->j;
    int s = src(c, o->rs1, RDX);
    if (o->imm)
        RM(j, F_W, O_LEA, RDX, s, (int32_t)o->imm);
    else
        x_mov_rr(j, RDX, s);
    x_mov_rr(j, RAX, RDX);
    x_shift_ri(j, F_W, S_SHR, RAX, 12);
    RR(j, 0, O_MOVZX8, RAX, RAX);              /* movzx eax, al (TLB_SIZE = 256) */
    RMX(j, F_W, O_LEA, RAX, RAX, RAX, 2, 0);    /* rax *= 3 (sizeof(tlb_entry) = 24) */
    x_mov_rr(j, RCX, RDX);
    x_alu_ri(j, F_W, G_AND, RCX, (int32_t)(PAGE_MASK | (size - 1)));
    RMX(j, F_W, O_CMP, RCX, tlb, RAX, 8, offsetof(tlb_entry, tag));
    uint8_t *miss = x_jcc(j, CC_NE);
    RMX(j, F_W, O_ADD, RDX, tlb, RAX, 8, offsetof(tlb_entry, addend));
    return miss;
}

static void add_fix(jit_ctx *c, int kind, uint8_t *jcc, const op *o, uint32_t k, uint64_t target)
{
    jit_fixup *f = &c->fix[c->nfix++];
    f->kind = kind;
    f->jcc = jcc;
    f->cont = c->j.p;
    f->o = o;
    f->k = k;
    f->target = target;
}

static void emit_load(jit_ctx *c, const op *o, uint32_t k)
{
    jbuf *j = &c->j;
    unsigned size = mem_size(o->kind);
    uint8_t *miss = tlb_check(c, o, R12, size);
    int d = (o->rd != 32 && c->hreg[o->rd] >= 0) ? c->hreg[o->rd] : RAX;
    switch (o->kind) {
    case OP_lb: RM(j, F_W, O_MOVSX8, d, RDX, 0); break;
    case OP_lh: RM(j, F_W, O_MOVSX16, d, RDX, 0); break;
    case OP_lw: RM(j, F_W, O_MOVSXD, d, RDX, 0); break;
    case OP_ld: RM(j, F_W, O_MOV, d, RDX, 0); break;
    case OP_lbu: RM(j, 0, O_MOVZX8, d, RDX, 0); break;
    case OP_lhu: RM(j, 0, O_MOVZX16, d, RDX, 0); break;
    default: RM(j, 0, O_MOV, d, RDX, 0); break; /* lwu */
    }
    if (d == RAX)
        wr(c, o->rd, RAX);
    add_fix(c, FIX_LOAD, miss, o, k, 0);
}

static void emit_store(jit_ctx *c, const op *o, uint32_t k)
{
    jbuf *j = &c->j;
    unsigned size = mem_size(o->kind);
    uint8_t *miss = tlb_check(c, o, R13, size);
    int v = src(c, o->rs2, RCX);
    switch (size) {
    case 1: RM(j, F_BYTE, 0x88, v, RDX, 0); break;
    case 2: RM(j, F_66, O_MOV_ST, v, RDX, 0); break;
    case 4: RM(j, 0, O_MOV_ST, v, RDX, 0); break;
    default: RM(j, F_W, O_MOV_ST, v, RDX, 0); break;
    }
    add_fix(c, FIX_STORE, miss, o, k, 0);
}

static void emit_branch(jit_ctx *c, const op *o, uint32_t k)
{
    jbuf *j = &c->j;
    int a = src(c, o->rs1, RAX);
    int bb = src(c, o->rs2, RCX);
    RR(j, F_W, O_CMP, a, bb);
    int cc;
    switch (o->kind) {
    case OP_beq: cc = CC_E; break;
    case OP_bne: cc = CC_NE; break;
    case OP_blt: cc = CC_L; break;
    case OP_bge: cc = CC_GE; break;
    case OP_bltu: cc = CC_B; break;
    default: cc = CC_AE; break;
    }
    add_fix(c, FIX_BRANCH, x_jcc(j, cc), o, k + 1, o->pc + (uint64_t)o->imm);
}

/* The host register that receives rd: its own, else rax (then stored with wr()). */
static int dst(jit_ctx *c, int g)
{
    return g < 32 && g > 0 && c->hreg[g] >= 0 ? c->hreg[g] : RAX;
}

/* rd = rs1 OP rs2 (64-bit group-1 ops, r, r/m direction opcode) */
static void alu_rr(jit_ctx *c, const op *o, uint32_t opc, unsigned fl, int sext)
{
    if (o->rd == 32)
        return;
    int d = dst(c, o->rd);
    if (d != RAX && !sext) {
        int bb = src(c, o->rs2, RCX);
        if (bb != d) {
            int a = src(c, o->rs1, d);
            x_mov_rr(&c->j, d, a);
            RR(&c->j, fl, opc, d, bb);
            return;
        }
        if (opc != O_SUB) { /* rd = rs2: commutative */
            int a = src(c, o->rs1, RAX);
            RR(&c->j, fl, opc, d, a);
            return;
        }
    }
    ld_rax(c, o->rs1);
    int bb = src(c, o->rs2, RCX);
    RR(&c->j, fl, opc, RAX, bb);
    if (sext)
        RR(&c->j, F_W, O_MOVSXD, RAX, RAX);
    wr(c, o->rd, RAX);
}

static void alu_ri(jit_ctx *c, const op *o, int g, unsigned fl, int sext)
{
    if (o->rd == 32)
        return;
    int d = dst(c, o->rd);
    if (d != RAX && !sext) {
        int a = src(c, o->rs1, d);
        if (g == G_ADD && a != d) {
            RM(&c->j, F_W, O_LEA, d, a, (int32_t)o->imm);
        } else {
            x_mov_rr(&c->j, d, a);
            if (o->imm || g == G_AND)
                x_alu_ri(&c->j, fl, g, d, (int32_t)o->imm);
        }
        return;
    }
    ld_rax(c, o->rs1);
    x_alu_ri(&c->j, fl, g, RAX, (int32_t)o->imm);
    if (sext)
        RR(&c->j, F_W, O_MOVSXD, RAX, RAX);
    wr(c, o->rd, RAX);
}

static void shift_ri(jit_ctx *c, const op *o, int g, unsigned fl, int sext)
{
    if (o->rd == 32)
        return;
    int d = dst(c, o->rd);
    if (d != RAX && !sext) {
        int a = src(c, o->rs1, d);
        x_mov_rr(&c->j, d, a);
        x_shift_ri(&c->j, fl, g, d, (unsigned)o->imm);
        return;
    }
    ld_rax(c, o->rs1);
    x_shift_ri(&c->j, fl, g, RAX, (unsigned)o->imm);
    if (sext)
        RR(&c->j, F_W, O_MOVSXD, RAX, RAX);
    wr(c, o->rd, RAX);
}

static void shift_rr(jit_ctx *c, const op *o, int g, unsigned fl, int sext)
{
    int s2 = src(c, o->rs2, RCX);
    x_mov_rr(&c->j, RCX, s2);
    ld_rax(c, o->rs1);
    RR(&c->j, fl, 0xd3, g, RAX);
    if (sext)
        RR(&c->j, F_W, O_MOVSXD, RAX, RAX);
    wr(c, o->rd, RAX);
}

static void set_cc(jit_ctx *c, const op *o, int cc, int imm)
{
    ld_rax(c, o->rs1);
    if (imm) {
        x_alu_ri(&c->j, F_W, G_CMP, RAX, (int32_t)o->imm);
    } else {
        int bb = src(c, o->rs2, RCX);
        RR(&c->j, F_W, O_CMP, RAX, bb);
    }
    RR(&c->j, 0, 0x0f90u + (unsigned)cc, 0, RAX); /* setcc al */
    RR(&c->j, 0, O_MOVZX8, RAX, RAX);
    wr(c, o->rd, RAX);
}

/* rd = (zext32?(rs1) << sh) + rs2 */
static void shadd(jit_ctx *c, const op *o, unsigned sh, int uw)
{
    int a = src(c, o->rs1, RAX);
    if (uw)
        RR(&c->j, 0, O_MOV, RAX, a); /* mov eax, r32: zero-extends */
    else
        x_mov_rr(&c->j, RAX, a);
    if (sh)
        x_shift_ri(&c->j, F_W, S_SHL, RAX, sh);
    int bb = src(c, o->rs2, RCX);
    RR(&c->j, F_W, O_ADD, RAX, bb);
    wr(c, o->rd, RAX);
}

static void minmax(jit_ctx *c, const op *o, int cc_take_rs2)
{
    ld_rax(c, o->rs1);
    int bb = src(c, o->rs2, RCX);
    x_mov_rr(&c->j, RCX, bb);
    RR(&c->j, F_W, O_CMP, RAX, RCX);
    RR(&c->j, F_W, 0x0f40u + (unsigned)cc_take_rs2, RAX, RCX); /* cmovcc rax, rcx */
    wr(c, o->rd, RAX);
}

/* Jump to the out-of-line helper call unless FS is on (and, for `rnd`, the rounding mode is
 * nearest-even: a static rm of 0, or a dynamic one with frm = 0).  Returns the branches. */
static int fp_guard(jit_ctx *c, const op *o, int rnd, uint8_t **out)
{
    jbuf *j = &c->j;
    int n = 0;
    /* FS only changes in CSR writes, which end blocks: once checked (on the helper path
     * too, which traps when it is off), it stays on for the rest of the block */
    if (!c->fs_on) {
        RM(j, F_W, 0xf7, 0, RBX, OFF(mstatus)); /* test qword [mstatus], FS */
        e32(j, (uint32_t)MSTATUS_FS);
        out[n++] = x_jcc(j, CC_E);
        c->fs_on = 1;
    }
    if (rnd && o->rm == 7) {
        RM(j, 0, 0x83, G_CMP, RBX, OFF(frm));
        e8(j, 0);
        out[n++] = x_jcc(j, CC_NE);
    }
    return n;
}

static void fp_dirty(jit_ctx *c)
{
    if (c->fs_dirty) /* an earlier op of the block (or its helper) made it so */
        return;
    RM(&c->j, F_W, 0x81, G_OR, RBX, OFF(mstatus));
    e32(&c->j, (uint32_t)MSTATUS_FS);
    c->fs_dirty = 1;
}

static void add_helper_fixes(jit_ctx *c, uint8_t **jccs, int n, const op *o, uint32_t k)
{
    for (int i = 0; i < n; i++) {
        jit_fixup *f = &c->fix[c->nfix++];
        f->kind = FIX_HELPER;
        f->jcc = jccs[i];
        f->o = o;
        f->k = k;
        f->target = 0;
        f->cont = NULL; /* set by the caller once the op's code is complete */
    }
}

static void set_fix_cont(jit_ctx *c, int from)
{
    for (int i = from; i < c->nfix; i++)
        if (c->fix[i].kind == FIX_HELPER && !c->fix[i].cont)
            c->fix[i].cont = c->j.p;
}

/* fadd/fsub/fmul/fdiv.d, fcvt.d.w, fmv.d, feq/flt/fle.d inline (SSE2 computes them
 * exactly as the C code does, flags in MXCSR included); fld/fsd/flw/fsw with the inline TLB
 * check.  Anything unusual (FS off, another rounding mode, a NaN compare, a TLB miss) calls
 * jit_helper(). */
static int emit_fp(jit_ctx *c, const op *o, uint32_t k)
{
    jbuf *j = &c->j;
    uint8_t *br[4];
    int first = c->nfix;
    int n;
    switch (o->kind) {
    case OP_fadd_d: case OP_fsub_d: case OP_fmul_d: case OP_fdiv_d: {
        n = fp_guard(c, o, 1, br);
        f_get(c, 0, o->rs1);
        unsigned opc = o->kind == OP_fadd_d ? 0x0f58 : o->kind == OP_fsub_d ? 0x0f5c :
                       o->kind == OP_fmul_d ? 0x0f59 : 0x0f5e;
        f_op(c, F_F2, opc, 0, o->rs2);
        RR(j, F_66, 0x0f2e, 0, 0);                                 /* ucomisd xmm0, xmm0 */
        uint8_t *ok = x_jcc(j, 0xb);                              /* jnp */
        x_mov_ri(j, RAX, CANON_NAN64);
        RR(j, F_66 | F_W, 0x0f6e, 0, RAX);                         /* movq xmm0, rax */
        x_patch(ok, j->p);
        f_set(c, o->rd);
        fp_dirty(c);
        add_helper_fixes(c, br, n, o, k);
        break;
    }
    case OP_fadd_s: case OP_fsub_s: case OP_fmul_s: case OP_fdiv_s: {
        n = fp_guard(c, o, 1, br);
        /* both operands NaN-boxed (else the helper: a canonical NaN operand) */
        RM(j, 0, 0x83, G_CMP, RBX, FOFF(o->rs1) + 4);
        e8(j, 0xff);
        br[n++] = x_jcc(j, CC_NE);
        RM(j, 0, 0x83, G_CMP, RBX, FOFF(o->rs2) + 4);
        e8(j, 0xff);
        br[n++] = x_jcc(j, CC_NE);
        RM(j, F_F3, 0x0f10, 0, RBX, FOFF(o->rs1));                 /* movss xmm0, rs1 */
        unsigned opc = o->kind == OP_fadd_s ? 0x0f58 : o->kind == OP_fsub_s ? 0x0f5c :
                       o->kind == OP_fmul_s ? 0x0f59 : 0x0f5e;
        RM(j, F_F3, opc, 0, RBX, FOFF(o->rs2));
        RR(j, 0, 0x0f2e, 0, 0);                                    /* ucomiss xmm0, xmm0 */
        uint8_t *ok = x_jcc(j, 0xb);                              /* jnp */
        RM(j, 0, 0xc7, 0, RBX, FOFF(o->rd));
        e32(j, CANON_NAN32);
        uint8_t *done = x_jmp(j);
        x_patch(ok, j->p);
        RM(j, F_F3, 0x0f11, 0, RBX, FOFF(o->rd));                 /* movss rd, xmm0 */
        x_patch(done, j->p);
        RM(j, 0, 0xc7, 0, RBX, FOFF(o->rd) + 4);                  /* the NaN box */
        e32(j, 0xffffffffu);
        fp_dirty(c);
        add_helper_fixes(c, br, n, o, k);
        break;
    }
    case OP_fmadd_d: case OP_fmsub_d: case OP_fnmsub_d: case OP_fnmadd_d: {
        if (!c->js->fma)
            return 0;
        n = fp_guard(c, o, 1, br);
        f_get(c, 0, o->rs1);                                       /* xmm0 = a */
        f_get(c, 1, o->rs2);                                       /* xmm1 = b */
        /* vfm*213sd xmm0, xmm1, [c]: xmm0 = +-(xmm1 * xmm0) +- c */
        unsigned opc = o->kind == OP_fmadd_d ? 0xa9 : o->kind == OP_fmsub_d ? 0xab :
                       o->kind == OP_fnmsub_d ? 0xad : 0xaf;
        int cx = c->fx[o->rs3];
        e8(j, 0xc4);
        e8(j, cx >= 8 ? 0xc2 : 0xe2); /* ~R ~X ~B, map 0F38 */
        e8(j, 0xf1);             /* W1, vvvv = ~xmm1, L0, pp = 66 */
        e8(j, opc);
        if (cx >= 0) {
            e8(j, 0xc0 | (cx & 7)); /* c in an xmm register */
        } else {
            e8(j, 0x83);         /* mod 10, reg xmm0, rm rbx */
            e32(j, (uint32_t)FOFF(o->rs3));
        }
        RR(j, F_66, 0x0f2e, 0, 0);                                 /* ucomisd xmm0, xmm0 */
        br[n++] = x_jcc(j, 0xa);  /* a NaN (perhaps inf * 0): the helper decides */
        f_set(c, o->rd);
        fp_dirty(c);
        add_helper_fixes(c, br, n, o, k);
        break;
    }
    case OP_fcvt_d_w: {
        n = fp_guard(c, o, 1, br);
        int a = src(c, o->rs1, RAX);
        RR(j, F_F2, 0x0f2a, 0, a);                                 /* cvtsi2sd xmm0, r32 */
        f_set(c, o->rd);
        fp_dirty(c);
        add_helper_fixes(c, br, n, o, k);
        break;
    }
    case OP_fmv_d:
        n = fp_guard(c, o, 0, br);
        f_get(c, 0, o->rs1);
        f_set(c, o->rd);
        fp_dirty(c);
        add_helper_fixes(c, br, n, o, k);
        break;
    case OP_fle_d: case OP_flt_d: case OP_feq_d: {
        n = fp_guard(c, o, 0, br);
        f_get(c, 0, o->rs1);
        f_op(c, F_66, 0x0f2e, 0, o->rs2);                          /* ucomisd xmm0, rs2 */
        br[n++] = x_jcc(j, 0xa);                                   /* jp: a NaN */
        int cc = o->kind == OP_fle_d ? 6 : o->kind == OP_flt_d ? CC_B : CC_E; /* be, b, e */
        RR(j, 0, 0x0f90u + (unsigned)cc, 0, RAX);
        RR(j, 0, O_MOVZX8, RAX, RAX);
        wr(c, o->rd, RAX);
        fp_dirty(c);
        add_helper_fixes(c, br, n, o, k);
        break;
    }
    case OP_fld: case OP_flw: case OP_fsd: case OP_fsw: {
        int load = o->kind == OP_fld || o->kind == OP_flw;
        unsigned size = o->kind == OP_fld || o->kind == OP_fsd ? 8 : 4;
        n = fp_guard(c, o, 0, br);
        br[n++] = tlb_check(c, o, load ? R12 : R13, size);
        if (load) {
            if (size == 8 && c->fx[o->rd] >= 0) {
                RM(j, F_F3, 0x0f7e, c->fx[o->rd], RDX, 0);             /* movq xmm, [rdx] */
            } else if (size == 8) {
                RM(j, F_W, O_MOV, RAX, RDX, 0);
            } else {
                RM(j, 0, O_MOV, RAX, RDX, 0);
                x_mov_ri(j, RCX, 0xffffffff00000000ull);
                RR(j, F_W, O_OR, RAX, RCX);
            }
            if (!(size == 8 && c->fx[o->rd] >= 0))
                RM(j, F_W, O_MOV_ST, RAX, RBX, FOFF(o->rd));
            fp_dirty(c);
        } else if (size == 8 && c->fx[o->rs2] >= 0) {
            RM(j, F_66, 0x0fd6, c->fx[o->rs2], RDX, 0);                /* movq [rdx], xmm */
        } else {
            RM(j, F_W, O_MOV, RAX, RBX, FOFF(o->rs2));
            RM(j, size == 8 ? F_W : 0, O_MOV_ST, RAX, RDX, 0);
        }
        add_helper_fixes(c, br, n, o, k);
        break;
    }
    default:
        return 0;
    }
    set_fix_cont(c, first);
    return 1;
}

/* One op; returns 1 when it ended the block (nothing after it runs). */
static int emit_op(jit_ctx *c, const op *o, uint32_t k)
{
    jbuf *j = &c->j;
    switch (o->kind) {
    case OP_nop:
        return 0;
    case OP_fence:
        if (c->js->mt) { /* mfence: the store-to-load order x86 does not keep by itself */
            e8(j, 0x0f);
            e8(j, 0xae);
            e8(j, 0xf0);
        }
        return 0;
    case OP_li:
        if (o->rd != 32) {
            int d = c->hreg[o->rd] >= 0 ? c->hreg[o->rd] : RAX;
            x_mov_ri(j, d, (uint64_t)o->imm);
            if (d == RAX)
                wr(c, o->rd, RAX);
        }
        return 0;
    case OP_auipc:
        if (o->rd != 32) {
            int d = c->hreg[o->rd] >= 0 ? c->hreg[o->rd] : RAX;
            x_mov_ri(j, d, o->pc + (uint64_t)o->imm);
            if (d == RAX)
                wr(c, o->rd, RAX);
        }
        return 0;
    case OP_mv:
        if (o->rd != 32) {
            int d = dst(c, o->rd);
            int a = src(c, o->rs1, d);
            x_mov_rr(j, d, a);
            if (d == RAX)
                wr(c, o->rd, RAX);
        }
        return 0;
    case OP_jal:
        if (o->rd != 32) {
            x_mov_ri(j, RAX, o->pc + o->len);
            wr(c, o->rd, RAX);
        }
        if (o->pc + (uint64_t)o->imm == c->b->vpc) {
            self_loop(c, k + 1);
            return 1;
        }
        spill(c);
        chain_exit(c, o->pc + (uint64_t)o->imm, k + 1);
        return 1;
    case OP_jalr:
        ld_rax(c, o->rs1);
        x_alu_ri(j, F_W, G_ADD, RAX, (int32_t)o->imm);
        x_alu_ri(j, F_W, G_AND, RAX, -2);
        x_mov_rr(j, RDX, RAX);
        if (o->rd != 32) {
            x_mov_ri(j, RAX, o->pc + o->len);
            wr(c, o->rd, RAX);
        }
        spill(c);
        jump_cache_exit(c, k + 1);
        return 1;
    case OP_beq: case OP_bne: case OP_blt: case OP_bge: case OP_bltu: case OP_bgeu:
        emit_branch(c, o, k);
        return 0;
    case OP_lb: case OP_lh: case OP_lw: case OP_ld: case OP_lbu: case OP_lhu: case OP_lwu:
        emit_load(c, o, k);
        return 0;
    case OP_sb: case OP_sh: case OP_sw: case OP_sd:
        emit_store(c, o, k);
        return 0;
    case OP_addi: alu_ri(c, o, G_ADD, F_W, 0); return 0;
    case OP_xori: alu_ri(c, o, G_XOR, F_W, 0); return 0;
    case OP_ori: alu_ri(c, o, G_OR, F_W, 0); return 0;
    case OP_andi: alu_ri(c, o, G_AND, F_W, 0); return 0;
    case OP_addiw: alu_ri(c, o, G_ADD, 0, 1); return 0;
    case OP_slti: set_cc(c, o, CC_L, 1); return 0;
    case OP_sltiu: set_cc(c, o, CC_B, 1); return 0;
    case OP_slt: set_cc(c, o, CC_L, 0); return 0;
    case OP_sltu: set_cc(c, o, CC_B, 0); return 0;
    case OP_slli: shift_ri(c, o, S_SHL, F_W, 0); return 0;
    case OP_srli: shift_ri(c, o, S_SHR, F_W, 0); return 0;
    case OP_srai: shift_ri(c, o, S_SAR, F_W, 0); return 0;
    case OP_slliw: shift_ri(c, o, S_SHL, 0, 1); return 0;
    case OP_srliw: shift_ri(c, o, S_SHR, 0, 1); return 0;
    case OP_sraiw: shift_ri(c, o, S_SAR, 0, 1); return 0;
    case OP_sll: shift_rr(c, o, S_SHL, F_W, 0); return 0;
    case OP_srl: shift_rr(c, o, S_SHR, F_W, 0); return 0;
    case OP_sra: shift_rr(c, o, S_SAR, F_W, 0); return 0;
    case OP_sllw: shift_rr(c, o, S_SHL, 0, 1); return 0;
    case OP_srlw: shift_rr(c, o, S_SHR, 0, 1); return 0;
    case OP_sraw: shift_rr(c, o, S_SAR, 0, 1); return 0;
    case OP_add: alu_rr(c, o, O_ADD, F_W, 0); return 0;
    case OP_sub: alu_rr(c, o, O_SUB, F_W, 0); return 0;
    case OP_xor: alu_rr(c, o, O_XOR, F_W, 0); return 0;
    case OP_or: alu_rr(c, o, O_OR, F_W, 0); return 0;
    case OP_and: alu_rr(c, o, O_AND, F_W, 0); return 0;
    case OP_addw: alu_rr(c, o, O_ADD, 0, 1); return 0;
    case OP_subw: alu_rr(c, o, O_SUB, 0, 1); return 0;
    case OP_mul: alu_rr(c, o, O_IMUL, F_W, 0); return 0;
    case OP_mulw: alu_rr(c, o, O_IMUL, 0, 1); return 0;
    case OP_mulhu: case OP_mulh: {
        ld_rax(c, o->rs1);
        int bb = src(c, o->rs2, RCX);
        RR(j, F_W, 0xf7, o->kind == OP_mulhu ? 4 : 5, bb); /* mul / imul r/m64: rdx:rax */
        wr(c, o->rd, RDX);
        return 0;
    }
    case OP_sh1add: shadd(c, o, 1, 0); return 0;
    case OP_sh2add: shadd(c, o, 2, 0); return 0;
    case OP_sh3add: shadd(c, o, 3, 0); return 0;
    case OP_adduw: shadd(c, o, 0, 1); return 0;
    case OP_sh1adduw: shadd(c, o, 1, 1); return 0;
    case OP_sh2adduw: shadd(c, o, 2, 1); return 0;
    case OP_sh3adduw: shadd(c, o, 3, 1); return 0;
    case OP_slliuw: {
        int a = src(c, o->rs1, RAX);
        RR(j, 0, O_MOV, RAX, a);
        x_shift_ri(j, F_W, S_SHL, RAX, (unsigned)o->imm);
        wr(c, o->rd, RAX);
        return 0;
    }
    case OP_andn: case OP_orn: case OP_xnor: {
        int bb = src(c, o->rs2, RCX);
        x_mov_rr(j, RCX, bb);
        if (o->kind != OP_xnor)
            RR(j, F_W, 0xf7, 2, RCX); /* not rcx */
        ld_rax(c, o->rs1);
        RR(j, F_W, o->kind == OP_andn ? O_AND : o->kind == OP_orn ? O_OR : O_XOR, RAX, RCX);
        if (o->kind == OP_xnor)
            RR(j, F_W, 0xf7, 2, RAX);
        wr(c, o->rd, RAX);
        return 0;
    }
    case OP_sextb: ld_rax(c, o->rs1); RR(j, F_W, O_MOVSX8, RAX, RAX); wr(c, o->rd, RAX); return 0;
    case OP_sexth: ld_rax(c, o->rs1); RR(j, F_W, O_MOVSX16, RAX, RAX); wr(c, o->rd, RAX); return 0;
    case OP_zexth: ld_rax(c, o->rs1); RR(j, 0, O_MOVZX16, RAX, RAX); wr(c, o->rd, RAX); return 0;
    case OP_rev8:
        ld_rax(c, o->rs1);
        e8(j, 0x48);
        e8(j, 0x0f);
        e8(j, 0xc8); /* bswap rax */
        wr(c, o->rd, RAX);
        return 0;
    case OP_max: minmax(c, o, CC_L); return 0;
    case OP_maxu: minmax(c, o, CC_B); return 0;
    case OP_min: minmax(c, o, 0xf); return 0;   /* cmovg */
    case OP_minu: minmax(c, o, 7); return 0;    /* cmova */
    case OP_system:
        spill(c);
        x_mov_rr(j, RDI, RBX);
        x_movabs(j, RSI, (uint64_t)(uintptr_t)o);
        x_mov_ri(j, RDX, k);
        x_call(j, (const void *)jit_system);
        x_patch(x_jmp(j), c->js->epilogue32);
        return 1;
    case OP_end:
        spill(c);
        chain_exit(c, o->pc, k);
        return 1;
    case OP_illegal:
        spill(c);
        x_mov_rr(j, RDI, RBX);
        x_movabs(j, RSI, (uint64_t)(uintptr_t)o);
        x_mov_ri(j, RDX, k);
        x_call(j, (const void *)jit_trap_illegal);
        x_patch(x_jmp(j), c->js->epilogue32);
        return 1;
    default:
        if (!emit_fp(c, o, k))
            call_op_helper(c, (const void *)jit_helper, o, k);
        return 0;
    }
}

static void emit_fixups(jit_ctx *c)
{
    jbuf *j = &c->j;
    for (int i = 0; i < c->nfix; i++) {
        jit_fixup *f = &c->fix[i];
        x_patch(f->jcc, j->p);
        if (f->kind == FIX_BRANCH) {
            if (f->target == c->b->vpc) {
                self_loop(c, f->k);
                continue;
            }
            spill(c);
            chain_exit(c, f->target, f->k);
            continue;
        }
        spill(c);
        if (f->kind == FIX_HELPER) {
            x_mov_rr(j, RDI, RBX);
            x_movabs(j, RSI, (uint64_t)(uintptr_t)f->o);
            x_mov_ri(j, RDX, f->k);
            x_call(j, (const void *)jit_helper);
            RR(j, 0, O_TEST, RAX, RAX);
            x_patch(x_jcc(j, CC_NE), c->js->epilogue32);
            reload(c);
            x_patch(x_jmp(j), f->cont);
            continue;
        }
        x_mov_rr(j, RSI, RDX); /* va */
        x_mov_rr(j, RDI, RBX);
        x_movabs(j, RDX, (uint64_t)(uintptr_t)f->o);
        x_mov_ri(j, RCX, f->k);
        x_call(j, f->kind == FIX_LOAD ? (const void *)jit_load_slow : (const void *)jit_store_slow);
        RR(j, 0, O_TEST, RAX, RAX);
        x_patch(x_jcc(j, CC_NE), c->js->epilogue32);
        reload(c);
        x_patch(x_jmp(j), f->cont);
    }
}

static void choose_registers(jit_ctx *c)
{
    block *b = c->b;
    int count[33] = {0};
    memset(c->hreg, -1, sizeof(c->hreg));
    c->written = c->allocated = 0;
    for (uint32_t i = 0; i <= b->n; i++) {
        const op *o = &b->ops[i];
        if (!op_native(o->kind))
            continue;
        int r1, r2;
        op_uses(o, &r1, &r2);
        if (r1 && o->rs1 && o->rs1 < 32)
            count[o->rs1] += 2;
        if (r2 && o->rs2 && o->rs2 < 32)
            count[o->rs2] += 2;
        if (op_writes_rd(o) && o->rd < 32)
            count[o->rd] += 2;
    }
    for (int n = 0; n < JIT_NALLOC; n++) {
        int best = 0;
        for (int g = 1; g < 32; g++)
            if (count[g] > count[best] && c->hreg[g] < 0)
                best = g;
        if (count[best] < 3) /* used once: a memory access is as good */
            break;
        c->hreg[best] = (int8_t)alloc_regs[n];
        c->allocated |= 1ull << best;
    }
    for (uint32_t i = 0; i <= b->n; i++) {
        const op *o = &b->ops[i];
        if (op_writes_rd(o) && o->rd < 32 && c->hreg[o->rd] >= 0)
            c->written |= 1ull << o->rd;
    }

    /* FP registers in xmm2-xmm15: those that only double-precision ops with an inline
     * translation touch (the single-precision ones, flw and fsw use the memory copy);
     * helpers find them stored and reload them afterwards, as the integer ones. */
    int fcount[32] = {0};
    uint32_t fexclude = 0, fdest = 0;
    memset(c->fx, -1, sizeof(c->fx));
    c->fwritten = c->fallocated = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        const op *o = &b->ops[i];
        switch (o->kind) {
        case OP_fadd_d: case OP_fsub_d: case OP_fmul_d: case OP_fdiv_d:
        case OP_fmadd_d: case OP_fmsub_d: case OP_fnmsub_d: case OP_fnmadd_d:
            fcount[o->rs1] += 2;
            fcount[o->rs2] += 2;
            if (o->kind >= OP_fmadd_d && o->kind <= OP_fnmadd_d)
                fcount[o->rs3] += 2;
            fcount[o->rd] += 2;
            fdest |= 1u << o->rd;
            break;
        case OP_fmv_d:
            fcount[o->rs1] += 2;
            fcount[o->rd] += 2;
            fdest |= 1u << o->rd;
            break;
        case OP_fle_d: case OP_flt_d: case OP_feq_d:
            fcount[o->rs1] += 2;
            fcount[o->rs2] += 2;
            break;
        case OP_fcvt_d_w: case OP_fld:
            fcount[o->rd] += 2;
            fdest |= 1u << o->rd;
            break;
        case OP_fsd:
            fcount[o->rs2] += 2;
            break;
        case OP_fadd_s: case OP_fsub_s: case OP_fmul_s: case OP_fdiv_s:
            fexclude |= 1u << o->rs1 | 1u << o->rs2 | 1u << o->rd;
            break;
        case OP_flw:
            fexclude |= 1u << o->rd;
            break;
        case OP_fsw:
            fexclude |= 1u << o->rs2;
            break;
        default:
            break;
        }
    }
    for (int x = 2; x < 16; x++) {
        int best = -1;
        for (int g = 0; g < 32; g++)
            if (c->fx[g] < 0 && !((fexclude >> g) & 1) && fcount[g] >= 4 &&
                (best < 0 || fcount[g] > fcount[best]))
                best = g;
        if (best < 0)
            break;
        c->fx[best] = (int8_t)x;
        c->fallocated |= 1u << best;
    }
    c->fwritten = fdest & c->fallocated;
}

static int jit_prot(jit_state *js, size_t from, size_t to, int writable)
{
    if (js->mt)
        return 0;
    uintptr_t a = (uintptr_t)js->code + from, z = (uintptr_t)js->code + to;
    a &= ~(uintptr_t)4095;
    z = (z + 4095) & ~(uintptr_t)4095;
    return mprotect((void *)a, z - a, writable ? PROT_READ | PROT_WRITE : PROT_READ | PROT_EXEC);
}

/* Translate b into the code buffer.  0: done; -1: the buffer is full; -2: the translation
 * does not fit JIT_BLOCK_ROOM (b stays interpreted). */
static int jit_compile(tcg_engine *e, block *b)
{
    jit_state *js = e->jit;
    if (js->used + JIT_BLOCK_ROOM > JIT_CODE_SIZE)
        return -1;
    size_t start = (js->used + 15) & ~(size_t)15;
    if (jit_prot(js, start, start + JIT_BLOCK_ROOM, 1) != 0) {
        js->failed = 1;
        return -1;
    }
    jit_ctx *c = malloc(sizeof(jit_ctx));
    if (!c) {
        jit_prot(js, start, start + JIT_BLOCK_ROOM, 0);
        return -1;
    }
    c->js = js;
    c->b = b;
    c->nfix = 0;
    c->body = NULL;
    c->fs_on = c->fs_dirty = 0;
    c->j.p = js->code + start;
    c->j.end = js->code + start + JIT_BLOCK_ROOM;
    c->j.overflow = 0;
    jbuf *j = &c->j;
    uint8_t *entry = j->p;
    choose_registers(c);

    /* still valid and of this code epoch? */
    x_movabs(j, RAX, (uint64_t)(uintptr_t)b);
    RM(j, F_W, O_MOV, RCX, RBX, OFF(e));
    RM(j, 0, O_MOV, RCX, RCX, (int32_t)offsetof(tcg_engine, code_epoch));
    RM(j, 0, O_CMP, RCX, RAX, (int32_t)offsetof(block, epoch));
    c->bail_jcc[0] = x_jcc(j, CC_NE);
    RM(j, 0, 0x80, G_CMP, RAX, (int32_t)offsetof(block, valid));
    e8(j, 0);
    c->bail_jcc[1] = x_jcc(j, CC_E);
    reload(c);
    c->body = j->p;

    for (uint32_t i = 0; i <= b->n; i++)
        if (emit_op(c, &b->ops[i], i))
            break;
    emit_fixups(c);
    x_patch(c->bail_jcc[0], j->p);
    x_patch(c->bail_jcc[1], j->p);
    plain_exit(c, b->vpc, 0);
    int overflow = j->overflow;
    size_t end = (size_t)(j->p - js->code);
    free(c);
    jit_prot(js, start, start + JIT_BLOCK_ROOM, 0);
    if (overflow)
        return -2;
    js->used = end;
    js->translated++;
    __atomic_store_n(&b->jit, (void *)entry, __ATOMIC_RELEASE); /* after its code */
    return 0;
}

static void jit_link(jit_state *js, jit_exit_info *xi, block *b)
{
    int32_t d;
    memcpy(&d, xi->site, 4);
    uint64_t pp = ~(uint64_t)0;
    if (xi->ppage_imm)
        memcpy(&pp, xi->ppage_imm, 8);
    if (xi->site + 4 + d == (uint8_t *)b->jit && (!xi->ppage_imm || pp == (b->ppc & PAGE_MASK)))
        return; /* already */
    uint8_t *lo = xi->site, *hi = xi->site + 4;
    if (xi->ppage_imm && xi->ppage_imm < lo)
        lo = xi->ppage_imm;
    if (jit_prot(js, (size_t)(lo - js->code), (size_t)(hi - js->code), 1) != 0)
        return;
    /* other harts may be running this code (thread=multi): the page first, then the jump,
     * each an aligned store of its own, so a hart sees the old exit or the complete new one */
    if (xi->ppage_imm)
        __atomic_store_n((uint64_t *)(void *)xi->ppage_imm, b->ppc & PAGE_MASK, __ATOMIC_RELEASE);
    int32_t rel = (int32_t)((uint8_t *)b->jit - (xi->site + 4));
    __atomic_store_n((int32_t *)(void *)xi->site, rel, __ATOMIC_RELEASE);
    jit_prot(js, (size_t)(lo - js->code), (size_t)(hi - js->code), 0);
}

/* Forget every translation (with code_flush_all: no block keeps a pointer into the buffer). */
static void jit_reset(tcg_engine *e)
{
    jit_state *js = e->jit;
    if (!js)
        return;
    js->used = js->base_used;
    js->gen++;
    for (int i = 0; i < e->num_harts; i++)
        js->pending[i] = NULL;
}

static void jit_free(tcg_engine *e)
{
    jit_state *js = e->jit;
    if (!js)
        return;
    if (js->code)
        munmap(js->code, JIT_CODE_SIZE);
    free(js->pending);
    free(js->pending_gen);
    free(js);
    e->jit = NULL;
}

static void jit_init(tcg_engine *e)
{
    jit_state *js = calloc(1, sizeof(*js));
    if (!js)
        return;
    js->pending = calloc((size_t)e->num_harts, sizeof(*js->pending));
    js->pending_gen = calloc((size_t)e->num_harts, sizeof(*js->pending_gen));
    void *m = mmap(NULL, JIT_CODE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    e->jit = js;
    if (m == MAP_FAILED || !js->pending || !js->pending_gen) {
        js->code = NULL;
        jit_free(e);
        return;
    }
    js->code = m;
    js->threshold = JIT_HOT;
    js->fma = __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx");
    /* the trampoline: uintptr_t enter(hart *h, const void *code, const tlb_entry *tlb_x) */
    jbuf jb = {js->code, js->code + 4096, 0}, *j = &jb;
    static const int saved[] = {RBX, RBP, R12, R13, R14, R15};
    for (int i = 0; i < 6; i++) {
        if (saved[i] & 8)
            e8(j, 0x41);
        e8(j, 0x50 + (saved[i] & 7));
    }
    x_alu_ri(j, F_W, G_SUB, RSP, 8);
    x_mov_rr(j, RBX, RDI);
    x_mov_rr(j, R14, RDX);
    RM(j, F_W, O_MOV, R12, RBX, OFF(tlb_r_cur));
    RM(j, F_W, O_MOV, R13, RBX, OFF(tlb_w_cur));
    RR(j, 0, 0xff, 4, RSI); /* jmp rsi */
    while ((uintptr_t)j->p & 15)
        e8(j, 0xcc);
    js->epilogue32 = j->p;
    RR(j, 0, O_MOV_ST, RAX, RAX); /* mov eax, eax */
    js->epilogue = j->p;
    x_alu_ri(j, F_W, G_ADD, RSP, 8);
    for (int i = 5; i >= 0; i--) {
        if (saved[i] & 8)
            e8(j, 0x41);
        e8(j, 0x58 + (saved[i] & 7));
    }
    e8(j, 0xc3);
    js->base_used = (size_t)(j->p - js->code);
    js->used = js->base_used;
    js->enter = (uintptr_t (*)(hart *, const void *, const tlb_entry *))(void *)js->code;
    if (mprotect(js->code, JIT_CODE_SIZE, PROT_READ | PROT_EXEC) != 0)
        js->failed = 1;
}

/* May hart h run translated code now?  Not while anything that needs the interpreter's
 * per-instruction or per-block view is on.  (-icount needs nothing more: its timer checks are
 * the instruction limit, which translated code honours at the same block boundaries.) */
static inline int jit_usable(const hart *h)
{
    const tcg_engine *e = h->e;
    return e->jit_on && e->jit && !e->jit->failed && !h->single_step && !h->dbg_block &&
           !e->nbp && !e->nwp &&
           !(e->trace_flags & ((1u << TCG_TRACE_IN_ASM) | (1u << TCG_TRACE_EXEC)));
}

/* Run block b (looked up for h->pc) as translated code.  -1: not translated, interpret it;
 * 0: go to next_block; 1: leave run_loop. */
static int jit_run(hart *h, block *b)
{
    tcg_engine *e = h->e;
    jit_state *js = e->jit;
    if (!b->valid)
        return -1;
    if (!b->jit) {
        if (b->jit_hot >= 0x80000000u || ++b->jit_hot < js->threshold)
            return -1;
        code_lock(e);
        int r = b->jit ? 0 : jit_compile(e, b); /* another hart may have just done it */
        code_unlock(e);
        if (r == -2) {
            b->jit_hot = 0x80000000u; /* never again */
            return -1;
        }
        if (r != 0) {
            if (js->failed)
                return -1;
            /* the buffer is full: start again (the blocks go too, b with them) */
            if (e->mt) { /* once no hart runs any translation */
                code_flush_request(e);
                return -1;
            }
            code_flush_all(e);
            return 0;
        }
    }
    jit_exit_info *xi = js->pending[h->id];
    if (xi && js->pending_gen[h->id] == js->gen && xi->target == h->pc && b->vpc == h->pc) {
        const tlb_entry *t = &h->tlb_x[fetch_mode(h->priv)][(h->pc >> 12) & TLB_MASK];
        if (xi->ppage_imm && (t->tag != (h->pc & PAGE_MASK) || t->ppage != (b->ppc & PAGE_MASK))) {
            /* a jump-cache hit: look the block up the long way, which fills the entry */
            js->pending[h->id] = NULL;
            if (lookup_block(h) != b || js->pending_gen[h->id] != js->gen)
                return 0; /* a trap, or everything was forgotten: start over at next_block */
        }
        if (t->tag == (h->pc & PAGE_MASK) || !xi->ppage_imm) {
            code_lock(e);
            jit_link(js, xi, b);
            code_unlock(e);
        }
    }
    js->pending[h->id] = NULL;
    uintptr_t r = js->enter(h, b->jit, h->tlb_x[fetch_mode(h->priv)]);
    if (r == 1)
        return 0;
    if (r == 2)
        return 1;
    js->pending[h->id] = (jit_exit_info *)r;
    js->pending_gen[h->id] = js->gen;
    return 0;
}

static uint64_t jit_translated(const tcg_engine *e) { return e->jit ? e->jit->translated : 0; }

/* thread=multi: no mprotect switching, which would pull the pages from under other harts */
static void jit_set_multithread(tcg_engine *e)
{
    jit_state *js = e->jit;
    if (!js || !js->code || js->mt == e->mt)
        return;
    int prot = e->mt ? PROT_READ | PROT_WRITE | PROT_EXEC : PROT_READ | PROT_EXEC;
    if (mprotect(js->code, JIT_CODE_SIZE, prot) != 0)
        js->failed = 1;
    js->mt = e->mt;
}

static void jit_set_threshold(tcg_engine *e, uint32_t n)
{
    if (e->jit)
        e->jit->threshold = n ? n : 1;
}

#else /* no translator on this host */

#define JIT_BUILT 0
static inline void jit_init(tcg_engine *e) { (void)e; }
static inline void jit_free(tcg_engine *e) { (void)e; }
static inline void jit_reset(tcg_engine *e) { (void)e; }
static inline int jit_usable(const hart *h) { (void)h; return 0; }
static inline int jit_run(hart *h, block *b) { (void)h; (void)b; return -1; }
static inline uint64_t jit_translated(const tcg_engine *e) { (void)e; return 0; }
static inline void jit_set_multithread(tcg_engine *e) { (void)e; }
static inline void jit_set_threshold(tcg_engine *e, uint32_t n) { (void)e; (void)n; }

#endif
