/* CPU workload for benchmarks/cpu: integer hashing (CRC-32, FNV-1a, Adler-32), sorting
 * (quicksort and heapsort), and double-precision floating point (matrix multiply,
 * Mandelbrot).  Freestanding; prints its checksums and the instructions it retired
 * (minstret) and the 10 MHz CLINT ticks it took (mtime) through the HTIF console of
 * -M spike. */
#include <stddef.h>
#include <stdint.h>

extern volatile uint64_t tohost, fromhost;

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

static void puthex(uint64_t v)
{
    for (int shift = 60; shift >= 0; shift -= 4) {
        putch("0123456789abcdef"[(v >> shift) & 15]);
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

static void report(const char *name, uint64_t value)
{
    puts_(name);
    puts_(": ");
    puthex(value);
    putch('\n');
}

/* CLINT mtime of -M spike: 10 MHz, real time on both QEMU (without -icount) and kvmpy. */
static inline uint64_t rdmtime(void)
{
    return *(volatile uint64_t *)0x200bff8;
}

static inline uint64_t rdinstret(void)
{
    uint64_t v;
    __asm__ volatile("csrr %0, minstret" : "=r"(v));
    return v;
}

/* ---- data ---------------------------------------------------------------------- */

#define BUF_BYTES (256 * 1024)
#define SORT_N (64 * 1024)
#define MAT_N 48

static uint8_t buf[BUF_BYTES];
static uint32_t keys[SORT_N];
static double ma[MAT_N][MAT_N], mb[MAT_N][MAT_N], mc[MAT_N][MAT_N];
static uint32_t crc_table[256];

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t xorshift64(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x;
}

/* ---- hashing ------------------------------------------------------------------- */

static void crc32_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[i] = c;
    }
}

static uint32_t crc32(const uint8_t *p, size_t n, uint32_t crc)
{
    crc = ~crc;
    while (n--) {
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    while (n--) {
        h ^= *p++;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint32_t adler32(const uint8_t *p, size_t n)
{
    uint32_t a = 1, b = 0;
    while (n) {
        size_t chunk = n < 5552 ? n : 5552;
        n -= chunk;
        while (chunk--) {
            a += *p++;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    return (b << 16) | a;
}

/* ---- sorting ------------------------------------------------------------------- */

static void quicksort(uint32_t *a, long lo, long hi)
{
    while (lo < hi) {
        uint32_t pivot = a[lo + (hi - lo) / 2];
        long i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) {
                i++;
            }
            while (a[j] > pivot) {
                j--;
            }
            if (i <= j) {
                uint32_t t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (j - lo < hi - i) {
            quicksort(a, lo, j);
            lo = i;
        } else {
            quicksort(a, i, hi);
            hi = j;
        }
    }
}

static void sift_down(uint32_t *a, size_t start, size_t end)
{
    size_t root = start;
    while (2 * root + 1 <= end) {
        size_t child = 2 * root + 1;
        if (child + 1 <= end && a[child] < a[child + 1]) {
            child++;
        }
        if (a[root] >= a[child]) {
            return;
        }
        uint32_t t = a[root];
        a[root] = a[child];
        a[child] = t;
        root = child;
    }
}

static void heapsort_(uint32_t *a, size_t n)
{
    for (size_t start = n / 2; start-- > 0;) {
        sift_down(a, start, n - 1);
    }
    for (size_t end = n - 1; end > 0; end--) {
        uint32_t t = a[0];
        a[0] = a[end];
        a[end] = t;
        sift_down(a, 0, end - 1);
    }
}

static uint64_t sorted_checksum(const uint32_t *a, size_t n)
{
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && a[i - 1] > a[i]) {
            return 0; /* not sorted */
        }
        h = h * 31 + a[i];
    }
    return h;
}

static void fill_keys(void)
{
    for (size_t i = 0; i < SORT_N; i++) {
        keys[i] = (uint32_t)xorshift64();
    }
}

/* ---- floating point ------------------------------------------------------------ */

static uint64_t matmul(void)
{
    for (int i = 0; i < MAT_N; i++) {
        for (int j = 0; j < MAT_N; j++) {
            ma[i][j] = (double)((i * 7 + j * 3) % 17) / 8.0 - 1.0;
            mb[i][j] = (double)((i * 5 + j * 11) % 13) / 4.0 + 0.25;
        }
    }
    for (int i = 0; i < MAT_N; i++) {
        for (int j = 0; j < MAT_N; j++) {
            double s = 0.0;
            for (int k = 0; k < MAT_N; k++) {
                s += ma[i][k] * mb[k][j];
            }
            mc[i][j] = s;
        }
    }
    double t = 0.0;
    for (int i = 0; i < MAT_N; i++) {
        t += mc[i][i] * (double)(i + 1);
    }
    union {
        double d;
        uint64_t u;
    } v = {t};
    return v.u;
}

static uint64_t mandelbrot(int width, int height, int max_iter)
{
    uint64_t total = 0;
    for (int py = 0; py < height; py++) {
        double ci = -1.25 + 2.5 * py / height;
        for (int px = 0; px < width; px++) {
            double cr = -2.0 + 2.75 * px / width;
            double zr = 0.0, zi = 0.0;
            int it = 0;
            while (it < max_iter && zr * zr + zi * zi <= 4.0) {
                double nzr = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = nzr;
                it++;
            }
            total += (uint64_t)it;
        }
    }
    return total;
}

static uint64_t newton_sqrt_sum(int n)
{
    float acc = 0.0f;
    for (int i = 1; i <= n; i++) {
        float x = (float)i;
        float r = x / 2.0f;
        for (int k = 0; k < 6; k++) {
            r = 0.5f * (r + x / r);
        }
        acc += r;
    }
    union {
        float f;
        uint32_t u;
    } v = {acc};
    return v.u;
}

/* ---- main ---------------------------------------------------------------------- */

int main(void)
{
    uint64_t start_time = rdmtime();
    uint64_t start = rdinstret();

    for (size_t i = 0; i < BUF_BYTES; i += 8) {
        uint64_t r = xorshift64();
        for (int k = 0; k < 8; k++) {
            buf[i + k] = (uint8_t)(r >> (8 * k));
        }
    }
    crc32_init();

    uint32_t crc = 0;
    uint64_t fnv = 0;
    uint32_t adler = 0;
    for (int round = 0; round < 100; round++) {
        buf[round] ^= (uint8_t)round;
        crc = crc32(buf, BUF_BYTES, crc);
        fnv ^= fnv1a(buf, BUF_BYTES);
        adler ^= adler32(buf, BUF_BYTES);
    }
    report("crc32", crc);
    report("fnv1a", fnv);
    report("adler32", adler);

    uint64_t qs = 0, hs = 0;
    for (int round = 0; round < 24; round++) {
        fill_keys();
        quicksort(keys, 0, SORT_N - 1);
        qs ^= sorted_checksum(keys, SORT_N);
        fill_keys();
        heapsort_(keys, SORT_N);
        hs ^= sorted_checksum(keys, SORT_N);
    }
    report("quicksort", qs);
    report("heapsort", hs);

    uint64_t mm = 0;
    for (int round = 0; round < 40; round++) {
        mm = mm * 31 + matmul() + (uint64_t)round;
    }
    report("matmul", mm);
    report("mandelbrot", mandelbrot(320, 240, 1024));
    report("sqrt", newton_sqrt_sum(1000000));

    uint64_t end = rdinstret();
    uint64_t end_time = rdmtime();
    puts_("instret: ");
    putdec(end - start);
    putch('\n');
    puts_("mtime: ");
    putdec(end_time - start_time);
    putch('\n');
    return (qs && hs) ? 0 : 1;
}
