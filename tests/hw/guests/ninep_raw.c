/*
 * ninep_raw: drive a virtio-9p device by hand, through the legacy virtio-mmio transport of
 * -M virt, and try to leave the exported directory.
 *
 *   kvmpy -M virt -m 128M -bios none -nographic -kernel ninep_raw.elf \
 *         -fsdev local,id=r,path=SHARE,security_model=none \
 *         -device virtio-9p-device,fsdev=r,mount_tag=raw
 *
 * The share is prepared by tests/hw/test_virtio_9p.py: a file "inside.txt", a directory
 * "sub", and symbolic links "link_dir" (to a directory outside the share, holding the canary
 * file "canary.txt"), "link_file" (to that canary file) and "link_rel" (to "../outside").
 *
 * An M-mode program (-bios none: the reset vector jumps here, at DRAM base), without
 * interrupts: it posts one request at a time and polls the used ring.  Every reply is reported
 * on the UART as one line
 *
 *   step NAME: R<type> tag=T [err=E] [more]
 *
 * where <type> is the 9P reply type number (7: Rlerror) and E its errno; the test reads these
 * lines and checks each.  The program ends with "ninep-raw: done" and PASS (0x5555) written to
 * the sifive_test finisher.  Build: tests/hw/guests/build.sh.
 */
#include <stdint.h>

#define UART        0x10000000UL
#define TEST        0x100000UL
#define MTIME       0x0200bff8UL        /* ACLINT mtime, 10 MHz */
#define MMIO_BASE   0x10001000UL
#define MMIO_SLOTS  8
#define RING        0x80100000UL       /* legacy rings: 16 entries, used ring one page on */
#define TX          0x80110000UL       /* requests */
#define RX          0x80200000UL       /* replies (up to 1 MiB) */
#define TX2         0x80310000UL
#define RX2         0x80400000UL
#define QSIZE       16

#define NOFID       0xFFFFFFFFU
#define MSIZE       8192

enum {
    TLERROR = 6, RLERROR, TSTATFS = 8, TLOPEN = 12, TLCREATE = 14, TSYMLINK = 16,
    TMKNOD = 18, TRENAME = 20, TREADLINK = 22, TGETATTR = 24, TSETATTR = 26,
    TXATTRWALK = 30, TXATTRCREATE = 32, TREADDIR = 40, TFSYNC = 50, TLOCK = 52,
    TGETLOCK = 54, TLINK = 70, TMKDIR = 72, TRENAMEAT = 74, TUNLINKAT = 76,
    TVERSION = 100, TAUTH = 102, TATTACH = 104, TFLUSH = 108, TWALK = 110,
    TREAD = 116, TWRITE = 118, TCLUNK = 120, TREMOVE = 122,
};

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };

static volatile uint32_t *mmio;
static uint16_t avail_idx, used_seen;

/* -- little helpers ------------------------------------------------------------------------- */

static void putc_(char c)
{
    volatile uint8_t *uart = (volatile uint8_t *)UART;
    while (!(uart[5] & 0x20))
        ;
    uart[0] = (uint8_t)c;
}

static void puts_(const char *s)
{
    while (*s)
        putc_(*s++);
}

static void putu(uint64_t v)
{
    char buf[24];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        putc_(buf[--i]);
}

static void puthex(uint64_t v)
{
    puts_("0x");
    for (int shift = 60; shift >= 0; shift -= 4)
        putc_("0123456789abcdef"[(v >> shift) & 0xF]);
}

static uint32_t slen(const char *s)
{
    uint32_t n = 0;
    while (s[n])
        n++;
    return n;
}

void *memset(void *dst, int c, unsigned long n);
void *memset(void *dst, int c, unsigned long n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

static uint32_t rd32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* -- building T-messages -------------------------------------------------------------------- */

static uint8_t *msg;
static uint32_t pos;

static void p8(uint32_t v) { msg[pos++] = (uint8_t)v; }
static void p16(uint32_t v) { p8(v); p8(v >> 8); }
static void p32(uint32_t v) { p16(v); p16(v >> 16); }
static void p64(uint64_t v) { p32((uint32_t)v); p32((uint32_t)(v >> 32)); }
static void pstr(const char *s)
{
    uint32_t n = slen(s);
    p16(n);
    for (uint32_t i = 0; i < n; i++)
        p8((uint8_t)s[i]);
}

static void begin(uint8_t *buf, uint32_t type, uint32_t tag)
{
    msg = buf;
    pos = 0;
    p32(0);
    p8(type);
    p16(tag);
}

static uint32_t finish(void)
{
    uint32_t n = pos;
    pos = 0;
    p32(n);
    return n;
}

/* -- the queue ------------------------------------------------------------------------------ */

static struct desc *descs(void) { return (struct desc *)RING; }
static volatile uint16_t *avail(void) { return (volatile uint16_t *)(RING + 16 * QSIZE); }
static volatile uint8_t *used(void) { return (volatile uint8_t *)(RING + 4096); }

/* Post a chain of (addr, len, writable) buffers starting at descriptor ``first``. */
static void post(uint16_t first, const uint64_t *addr, const uint32_t *len,
                 const int *writable, int n)
{
    struct desc *d = descs();
    for (int i = 0; i < n; i++) {
        uint16_t index = (uint16_t)(first + i);
        d[index].addr = addr[i];
        d[index].len = len[i];
        d[index].flags = (uint16_t)((i + 1 < n ? 1 : 0) | (writable[i] ? 2 : 0));
        d[index].next = (uint16_t)(index + 1);
    }
    volatile uint16_t *a = avail();
    a[2 + avail_idx % QSIZE] = first;
    __sync_synchronize();
    avail_idx++;
    a[1] = avail_idx;
    __sync_synchronize();
}

static void kick(void) { mmio[0x50 / 4] = 0; }

static uint64_t mtime(void) { return *(volatile uint64_t *)MTIME; }

/* Wait for ``count`` more used entries (at most 3 s of mtime); returns how many came. */
static int wait_used(int count)
{
    volatile uint8_t *u = used();
    for (uint64_t end = mtime() + 30000000ULL; mtime() < end;) {
        __sync_synchronize();
        uint16_t idx = (uint16_t)(u[2] | u[3] << 8);
        if ((uint16_t)(idx - used_seen) >= count)
            return count;
    }
    return (uint16_t)((u[2] | u[3] << 8) - used_seen);
}

static uint32_t used_len(uint16_t i)
{
    volatile uint8_t *e = used() + 4 + 8 * (i % QSIZE);
    return (uint32_t)(e[4] | e[5] << 8 | e[6] << 16 | (uint32_t)e[7] << 24);
}

static uint32_t used_id(uint16_t i)
{
    volatile uint8_t *e = used() + 4 + 8 * (i % QSIZE);
    return (uint32_t)(e[0] | e[1] << 8 | e[2] << 16 | (uint32_t)e[3] << 24);
}

/* -- one request, one reply ----------------------------------------------------------------- */

static uint8_t *reply;
static uint32_t reply_len;

static void report(const char *name, const uint8_t *r, uint32_t len)
{
    puts_("step ");
    puts_(name);
    puts_(": ");
    if (len < 7) {
        puts_("short ");
        putu(len);
        putc_('\n');
        return;
    }
    putc_('R');
    putu(r[4]);
    puts_(" tag=");
    putu(rd16(r + 5));
    if (r[4] == RLERROR && len >= 11) {
        puts_(" err=");
        putu(rd32(r + 7));
    }
    switch (r[4]) {
    case TVERSION + 1:
        puts_(" msize=");
        putu(rd32(r + 7));
        break;
    case TWALK + 1:
        puts_(" nwqid=");
        putu(rd16(r + 7));
        break;
    case TREAD + 1: case TREADDIR + 1:
        puts_(" count=");
        putu(rd32(r + 7));
        break;
    case TWRITE + 1:
        puts_(" count=");
        putu(rd32(r + 7));
        break;
    case TGETATTR + 1:  /* valid[8] qid[13] mode[4] uid gid nlink rdev size */
        puts_(" mode=");
        putu(rd32(r + 7 + 8 + 13));
        puts_(" qid=");
        puthex(rd64(r + 7 + 8 + 5));
        puts_(" size=");
        putu(rd64(r + 7 + 8 + 13 + 4 + 4 + 4 + 8 + 8));
        break;
    case TATTACH + 1:
        puts_(" qid=");
        puthex(rd64(r + 7 + 5));
        break;
    }
    puts_(" len=");
    putu(len);
    putc_('\n');
}

/* Send the message built in TX with a reply buffer of ``room`` bytes; report it. */
static int xfer_room(const char *name, uint32_t room)
{
    uint32_t n = finish();
    uint64_t addr[2] = {TX, RX};
    uint32_t len[2] = {n, room};
    int writable[2] = {0, 1};
    memset((void *)RX, 0xEE, 16);
    post(0, addr, len, writable, 2);
    kick();
    if (wait_used(1) < 1) {
        puts_("step ");
        puts_(name);
        puts_(": timeout\n");
        return -1;
    }
    reply_len = used_len(used_seen);
    used_seen++;
    reply = (uint8_t *)RX;
    report(name, reply, reply_len);
    return reply[4];
}

static int xfer(const char *name) { return xfer_room(name, MSIZE); }

/* -- requests ------------------------------------------------------------------------------- */

static uint16_t tag = 1;

static void tversion(const char *name, uint32_t msize, const char *version)
{
    begin((uint8_t *)TX, TVERSION, 0xFFFF);
    p32(msize);
    pstr(version);
    xfer(name);
}

static void tattach(const char *name, uint32_t fid)
{
    begin((uint8_t *)TX, TATTACH, tag++);
    p32(fid);
    p32(NOFID);
    pstr("");
    pstr("");
    p32(0);
    xfer(name);
}

static int twalk(const char *name, uint32_t fid, uint32_t newfid, int n, const char **names)
{
    begin((uint8_t *)TX, TWALK, tag++);
    p32(fid);
    p32(newfid);
    p16((uint32_t)n);
    for (int i = 0; i < n; i++)
        pstr(names[i]);
    return xfer(name);
}

static void walk1(const char *name, uint32_t fid, uint32_t newfid, const char *component)
{
    const char *names[1] = {component};
    twalk(name, fid, newfid, 1, names);
}

static void tclunk(const char *name, uint32_t fid)
{
    begin((uint8_t *)TX, TCLUNK, tag++);
    p32(fid);
    xfer(name);
}

static void tlopen(const char *name, uint32_t fid, uint32_t flags)
{
    begin((uint8_t *)TX, TLOPEN, tag++);
    p32(fid);
    p32(flags);
    xfer(name);
}

static void tgetattr(const char *name, uint32_t fid)
{
    begin((uint8_t *)TX, TGETATTR, tag++);
    p32(fid);
    p64(0x3FFF);
    xfer(name);
}

static void tread(const char *name, uint32_t fid, uint64_t offset, uint32_t count,
                  uint32_t room)
{
    begin((uint8_t *)TX, TREAD, tag++);
    p32(fid);
    p64(offset);
    p32(count);
    xfer_room(name, room);
}

static void tlcreate(const char *name, uint32_t fid, const char *file)
{
    begin((uint8_t *)TX, TLCREATE, tag++);
    p32(fid);
    pstr(file);
    p32(0x42);          /* O_RDWR | O_CREAT */
    p32(0644);
    p32(0);
    xfer(name);
}

static void tmkdir(const char *name, uint32_t dfid, const char *dir)
{
    begin((uint8_t *)TX, TMKDIR, tag++);
    p32(dfid);
    pstr(dir);
    p32(0755);
    p32(0);
    xfer(name);
}

static void tsymlink(const char *name, uint32_t dfid, const char *link, const char *target)
{
    begin((uint8_t *)TX, TSYMLINK, tag++);
    p32(dfid);
    pstr(link);
    pstr(target);
    p32(0);
    xfer(name);
}

static void trenameat(const char *name, uint32_t olddir, const char *oldname,
                      uint32_t newdir, const char *newname)
{
    begin((uint8_t *)TX, TRENAMEAT, tag++);
    p32(olddir);
    pstr(oldname);
    p32(newdir);
    pstr(newname);
    xfer(name);
}

static void tunlinkat(const char *name, uint32_t dfid, const char *file)
{
    begin((uint8_t *)TX, TUNLINKAT, tag++);
    p32(dfid);
    pstr(file);
    p32(0);
    xfer(name);
}

static void tlink(const char *name, uint32_t dfid, uint32_t fid, const char *file)
{
    begin((uint8_t *)TX, TLINK, tag++);
    p32(dfid);
    p32(fid);
    pstr(file);
    xfer(name);
}

static void tsetattr_size(const char *name, uint32_t fid, uint64_t size, uint32_t mode)
{
    begin((uint8_t *)TX, TSETATTR, tag++);
    p32(fid);
    p32(mode ? 0x1 : 0x8);  /* P9_ATTR_MODE or P9_ATTR_SIZE */
    p32(mode);
    p32(0);
    p32(0);
    p64(size);
    p64(0);
    p64(0);
    p64(0);
    p64(0);
    xfer(name);
}

/* -- the device ----------------------------------------------------------------------------- */

static int find_device(void)
{
    for (int i = MMIO_SLOTS - 1; i >= 0; i--) {
        volatile uint32_t *m = (volatile uint32_t *)(MMIO_BASE + 0x1000UL * (unsigned)i);
        if (m[0] == 0x74726976 && m[2] == 9) {
            mmio = m;
            return m[1] == 1;
        }
    }
    return -1;
}

static void device_init(void)
{
    memset((void *)RING, 0, 8192);
    avail_idx = used_seen = 0;
    mmio[0x70 / 4] = 0;
    mmio[0x70 / 4] = 1;
    mmio[0x70 / 4] = 3;
    mmio[0x14 / 4] = 0;
    uint32_t features = mmio[0x10 / 4];
    mmio[0x24 / 4] = 0;
    mmio[0x20 / 4] = features & 1;  /* VIRTIO_9P_MOUNT_TAG */
    mmio[0x28 / 4] = 4096;
    mmio[0x30 / 4] = 0;
    mmio[0x38 / 4] = QSIZE;
    mmio[0x3C / 4] = 4096;
    mmio[0x40 / 4] = (uint32_t)(RING >> 12);
    mmio[0x70 / 4] = 7;
}

/* -- the attempts --------------------------------------------------------------------------- */

static void flush_in_flight(void)
{
    /* A read and a flush of it posted together, one notify: the read is answered first. */
    uint16_t read_tag = tag++, flush_tag = tag++;
    begin((uint8_t *)TX, TREAD, read_tag);
    p32(1);
    p64(0);
    p32(4096);
    uint32_t n1 = finish();
    begin((uint8_t *)TX2, TFLUSH, flush_tag);
    p16(read_tag);
    uint32_t n2 = finish();
    uint64_t a1[2] = {TX, RX}, a2[2] = {TX2, RX2};
    uint32_t l1[2] = {n1, 8192}, l2[2] = {n2, 64};
    int w[2] = {0, 1};
    post(0, a1, l1, w, 2);
    post(2, a2, l2, w, 2);
    kick();
    if (wait_used(2) < 2) {
        puts_("step flush: timeout\n");
        return;
    }
    for (int i = 0; i < 2; i++) {
        uint16_t at = used_seen++;
        uint32_t id = used_id(at);
        puts_(id == 0 ? "flush-order read\n" : "flush-order flush\n");
        report(id == 0 ? "flush-read" : "flush-flush", (uint8_t *)(id == 0 ? RX : RX2),
               used_len(at));
    }
}

static void garbage(void)
{
    static const uint8_t kinds[] = {0, 1, 99, 101, 255, TLERROR, RLERROR};
    for (unsigned i = 0; i < sizeof kinds; i++) {
        begin((uint8_t *)TX, kinds[i], tag++);
        p32(0xDEADBEEF);
        xfer("garbage-type");
    }
    /* size field larger than what was sent, smaller than a header, zero */
    static const uint32_t sizes[] = {0xFFFFFFFFU, 3, 0, 100000};
    for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        begin((uint8_t *)TX, TGETATTR, tag++);
        p32(0);
        p64(0x3FFF);
        uint32_t n = finish();
        uint8_t *t = (uint8_t *)TX;
        t[0] = (uint8_t)sizes[i];
        t[1] = (uint8_t)(sizes[i] >> 8);
        t[2] = (uint8_t)(sizes[i] >> 16);
        t[3] = (uint8_t)(sizes[i] >> 24);
        uint64_t addr[2] = {TX, RX};
        uint32_t len[2] = {n, MSIZE};
        int w[2] = {0, 1};
        post(0, addr, len, w, 2);
        kick();
        if (wait_used(1) < 1) {
            puts_("step garbage-size: timeout\n");
            return;
        }
        report("garbage-size", (uint8_t *)RX, used_len(used_seen));
        used_seen++;
    }
    /* strings whose length runs past the message */
    begin((uint8_t *)TX, TWALK, tag++);
    p32(0);
    p32(40);
    p16(1);
    p16(60000);
    p8('x');
    xfer("garbage-string");
    /* a walk claiming 65535 names */
    begin((uint8_t *)TX, TWALK, tag++);
    p32(0);
    p32(41);
    p16(65535);
    pstr("sub");
    xfer("garbage-nwname");
}

void main(void);
void main(void)
{
    static const char *names[4];
    puts_("ninep-raw: start\n");
    int legacy = find_device();
    if (legacy < 0) {
        puts_("ninep-raw: no virtio-9p device\n");
        goto out;
    }
    if (!legacy) {
        puts_("ninep-raw: modern virtio-mmio is not driven by this program\n");
        goto out;
    }
    device_init();
    puts_("tag ");
    uint16_t tag_len = (uint16_t)(mmio[0x100 / 4] & 0xFFFF);
    volatile uint8_t *config = (volatile uint8_t *)mmio + 0x102;
    for (uint16_t i = 0; i < tag_len && i < 64; i++)
        putc_((char)config[i]);
    putc_('\n');

    tversion("version-huge", 0xFFFFFFFFU, "9P2000.L");
    tversion("version", MSIZE, "9P2000.L");
    tattach("attach", 0);
    walk1("walk-inside", 0, 1, "inside.txt");
    tlopen("open-inside", 1, 0);

    /* symbolic links that point outside */
    names[0] = "link_dir";
    names[1] = "canary.txt";
    twalk("walk-through-symlink", 0, 2, 2, names);
    walk1("walk-symlink-file", 0, 3, "link_file");
    tlopen("open-symlink-file-write", 3, 1);
    tlopen("open-symlink-file-read", 3, 0);
    tsetattr_size("truncate-via-symlink", 3, 0, 0);
    tsetattr_size("chmod-via-symlink", 3, 0, 0777);
    tgetattr("getattr-symlink", 3);
    walk1("walk-symlink-dir", 0, 4, "link_dir");
    tlcreate("create-in-symlink-dir", 4, "planted.txt");
    walk1("walk-symlink-rel", 0, 5, "link_rel");
    tlcreate("create-in-symlink-rel", 5, "planted.txt");

    /* dot-dot and names that are paths */
    walk1("walk-dotdot", 0, 6, "..");
    tgetattr("getattr-root", 0);
    tgetattr("getattr-dotdot", 6);
    names[0] = "..";
    names[1] = "..";
    names[2] = "outside";
    names[3] = "canary.txt";
    twalk("walk-dotdot-outside", 0, 7, 4, names);
    walk1("walk-slash-name", 0, 8, "../outside");
    walk1("walk-absolute", 0, 9, "/etc");
    walk1("walk-sub-slash", 0, 10, "sub/../..");
    walk1("walk-dot", 0, 11, ".");
    walk1("walk-empty", 0, 12, "");
    walk1("walk-sub", 0, 13, "sub");
    tlcreate("create-dotdot", 13, "..");
    tlcreate("create-slash", 13, "../../outside/planted.txt");
    tmkdir("mkdir-slash", 13, "a/b");
    tmkdir("mkdir-dotdot", 13, "..");
    tsymlink("symlink-slash", 13, "x/y", "/etc/passwd");
    trenameat("rename-out", 0, "inside.txt", 13, "../../outside/stolen.txt");
    trenameat("rename-dotdot", 13, "..", 0, "moved");
    tunlinkat("unlink-dotdot", 13, "..");
    tunlinkat("unlink-slash", 0, "link_dir/canary.txt");
    tlink("link-slash", 13, 1, "../../outside/hard");

    /* fids */
    walk1("walk-fid-reuse", 0, 1, "sub");
    walk1("walk-unknown-fid", 999, 14, "sub");
    tclunk("clunk-unknown", 999);
    tclunk("clunk-twice-1", 13);
    tclunk("clunk-twice-2", 13);
    walk1("walk-clunked", 13, 15, "x");
    walk1("walk-self", 0, 0, "sub");

    flush_in_flight();
    garbage();

    /* msize: a message larger than the negotiated msize */
    begin((uint8_t *)TX, TWALK, tag++);
    p32(0);
    p32(42);
    p16(1);
    p16(MSIZE + 100 - 19);
    while (pos < MSIZE + 100)
        p8('a');
    xfer("over-msize");

    tversion("version-small", 128, "9P2000.L");
    tversion("version-unknown", MSIZE, "9P2000.x");
    tversion("version-again", MSIZE, "9P2000.L");
    tgetattr("getattr-after-version", 0);
    tattach("attach-again", 0);
    walk1("walk-again", 0, 1, "inside.txt");
    tlopen("open-again", 1, 0);

    /* a count far beyond msize and one for more than the reply buffers hold (QEMU 7.2 answers
     * both with more than the guest posted and stops the device) */
    tread("read-huge-count", 1, 0, 0xFFFFFFFFU, 1 << 20);
    tread("read-small-room", 1, 0, 4096, 64);

    /* device-level: no reply room, then a header cut short: the device stops until reset */
    {
        uint64_t addr[2] = {TX, RX};
        uint32_t len[2] = {11, 4};
        int w[2] = {0, 1};
        begin((uint8_t *)TX, TGETATTR, tag++);
        p32(0);
        finish();
        post(0, addr, len, w, 2);
        kick();
        puts_(wait_used(1) ? "step no-room: used\n" : "step no-room: stopped\n");
        puts_((mmio[0x70 / 4] & 0x40) ? "status needs-reset\n" : "status ok\n");
    }
    device_init();
    puts_("reset\n");
    tversion("version-after-reset", MSIZE, "9P2000.L");
    tattach("attach-after-reset", 0);
    {
        uint64_t addr[2] = {TX, RX};
        uint32_t len[2] = {3, 64};
        int w[2] = {0, 1};
        post(0, addr, len, w, 2);
        kick();
        puts_(wait_used(1) ? "step short-header: used\n" : "step short-header: stopped\n");
    }
    device_init();
    tversion("version-after-reset-2", MSIZE, "9P2000.L");

out:
    puts_("ninep-raw: done\n");
    *(volatile uint32_t *)TEST = 0x5555;
    for (;;)
        ;
}

__attribute__((naked, section(".text.start"))) void _start(void);
__attribute__((naked, section(".text.start"))) void _start(void)
{
    __asm__ volatile(
        "csrr t0, mhartid\n"
        "1: bnez t0, 1b\n"
        "li sp, 0x80100000\n"
        "j main\n");
}
