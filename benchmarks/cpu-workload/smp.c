/* smp.elf for benchmarks/smp: every hart of -M spike runs the CPU workload (cpu.c, compiled
 * with its file-scope data thread-local, so the code is shared and each hart works on its own
 * data), hart 0 waits for them all and prints through HTIF:
 *
 *     harts: N
 *     hart K:            then hart K's own output (cpu.c's checksums, instret, mtime)
 *     span: T            CLINT ticks (10 MHz) from the first hart's start to the last one's end
 *     checksums: same    or "checksums: hart K differs"
 *
 * and exits with 0 when every hart's checksums equal hart 0's and every workload passed.
 * The number of harts is found from the CLINT: mtimecmp of a hart that does not exist reads
 * as 0 (QEMU 7.2 hw/intc/riscv_aclint.c). */
#include <stddef.h>
#include <stdint.h>

#define SMP_MAX_HARTS 8
#define OUT_BYTES 512
#define CLINT_MSIP ((volatile uint32_t *)0x2000000)
#define CLINT_MTIMECMP ((volatile uint64_t *)0x2004000)
#define CLINT_MTIME ((volatile uint64_t *)0x200bff8)
#define MIP_MSIP (1u << 3)

extern volatile uint64_t tohost, fromhost;
int workload_main(void);
volatile uint64_t *smp_tohost(void);
volatile uint64_t *smp_fromhost(void);
void hart_main(uint64_t hartid) __attribute__((noreturn));

struct hart {
    volatile uint64_t tohost, fromhost; /* the workload's console mailbox */
    uint64_t start, end;                /* mtime around the workload */
    uint32_t len;                       /* bytes in out */
    int32_t status;                     /* workload_main's return value */
    uint32_t done;                      /* set (release) when the record is complete */
    char out[OUT_BYTES];
} __attribute__((aligned(64)));

static struct hart harts[SMP_MAX_HARTS];
static uint32_t nharts;
/* In .data, not .bss: hart 0 clears .bss while the others already poll this. */
static uint32_t go __attribute__((section(".data")));

static inline uint64_t hartid(void)
{
    uint64_t v;
    __asm__ volatile("csrr %0, mhartid" : "=r"(v));
    return v;
}

volatile uint64_t *smp_tohost(void)
{
    struct hart *h = &harts[hartid()];
    uint64_t word = h->tohost;
    if (word != 0) {
        if (h->len < OUT_BYTES) {
            h->out[h->len++] = (char)(word & 0xff);
        }
        h->tohost = 0;
    }
    return &h->tohost;
}

volatile uint64_t *smp_fromhost(void)
{
    return &harts[hartid()].fromhost;
}

/* ---- the real HTIF console (hart 0 only) ------------------------------------------------ */

static void putch(char c)
{
    while (tohost != 0) {
    }
    tohost = (1ULL << 56) | (1ULL << 48) | (uint8_t)c;
    while (tohost != 0) {
    }
    fromhost = 0;
}

static void puts_(const char *s)
{
    while (*s) {
        putch(*s++);
    }
}

static void putdec(uint64_t v)
{
    char buf[24];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) {
        putch(buf[--n]);
    }
}

static __attribute__((noreturn)) void htif_exit(uint64_t code)
{
    tohost = (code << 1) | 1;
    for (;;) {
    }
}

/* ---- harts --------------------------------------------------------------------------------- */

static uint32_t count_harts(void)
{
    uint32_t n = 1;
    while (n < SMP_MAX_HARTS) {
        CLINT_MTIMECMP[n] = ~0ULL;
        if (CLINT_MTIMECMP[n] != ~0ULL) {
            break;
        }
        n++;
    }
    return n;
}

/* Length of the checksum lines: everything before "instret: ". */
static uint32_t checksum_len(const struct hart *h)
{
    static const char key[] = "\ninstret: ";
    for (uint32_t i = 0; i + sizeof key - 1 <= h->len; i++) {
        uint32_t k = 0;
        while (k < sizeof key - 1 && h->out[i + k] == key[k]) {
            k++;
        }
        if (k == sizeof key - 1) {
            return i + 1;
        }
    }
    return h->len;
}

static int same_checksums(const struct hart *a, const struct hart *b)
{
    uint32_t n = checksum_len(a);
    if (n != checksum_len(b)) {
        return 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (a->out[i] != b->out[i]) {
            return 0;
        }
    }
    return 1;
}

static void wait_for_harts(void)
{
    /* Sleep in WFI between checks (machine software interrupt enabled in mie, not in
     * mstatus: WFI wakes, no trap is taken); each hart raises MSIP of hart 0 when done. */
    __asm__ volatile("csrs mie, %0" : : "r"(MIP_MSIP));
    for (;;) {
        CLINT_MSIP[0] = 0;
        __asm__ volatile("fence iorw, iorw" ::: "memory");
        uint32_t done = 0;
        for (uint32_t k = 0; k < nharts; k++) {
            done += __atomic_load_n(&harts[k].done, __ATOMIC_ACQUIRE);
        }
        if (done == nharts) {
            return;
        }
        __asm__ volatile("wfi");
    }
}

void hart_main(uint64_t id)
{
    if (id == 0) {
        nharts = count_harts();
        __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
    } else {
        while (__atomic_load_n(&go, __ATOMIC_ACQUIRE) == 0) {
        }
    }
    struct hart *h = &harts[id];
    h->start = *CLINT_MTIME;
    h->status = workload_main();
    h->end = *CLINT_MTIME;
    __atomic_store_n(&h->done, 1, __ATOMIC_RELEASE);
    if (id != 0) {
        __asm__ volatile("fence iorw, iorw" ::: "memory");
        CLINT_MSIP[0] = 1;
        for (;;) {
            __asm__ volatile("wfi");
        }
    }

    wait_for_harts();
    uint64_t first = h->start, last = h->end;
    int differs = -1, failed = 0;
    puts_("harts: ");
    putdec(nharts);
    putch('\n');
    for (uint32_t k = 0; k < nharts; k++) {
        const struct hart *o = &harts[k];
        puts_("hart ");
        putdec(k);
        puts_(":\n");
        for (uint32_t i = 0; i < o->len; i++) {
            putch(o->out[i]);
        }
        first = o->start < first ? o->start : first;
        last = o->end > last ? o->end : last;
        failed |= o->status != 0;
        if (differs < 0 && !same_checksums(o, h)) {
            differs = (int)k;
        }
    }
    puts_("span: ");
    putdec(last - first);
    putch('\n');
    if (differs >= 0) {
        puts_("checksums: hart ");
        putdec((uint64_t)differs);
        puts_(" differs\n");
    } else {
        puts_("checksums: same\n");
    }
    htif_exit(differs >= 0 || failed ? 1 : 0);
}
